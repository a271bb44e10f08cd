"""environment.yml (Binder) is kept consistent with pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _env():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _pip_section(env):
    for dep in env["dependencies"]:
        if isinstance(dep, dict) and "pip" in dep:
            return dep["pip"]
    raise AssertionError("environment.yml has no pip section")


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_pip_section_matches_pyproject_dependencies():
    deps = {_norm(d) for d in _pyproject()["project"]["dependencies"]}
    pip = {_norm(d) for d in _pip_section(_env())}
    assert pip == deps, f"only in environment.yml: {sorted(pip - deps)}; only in pyproject: {sorted(deps - pip)}"


def test_python_pinned_and_allowed_by_pyproject():
    from packaging.specifiers import SpecifierSet

    pins = [d for d in _env()["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert len(pins) == 1 and "=" in pins[0], "environment.yml must pin python"
    version = pins[0].split("=")[-1]
    assert SpecifierSet(_pyproject()["project"]["requires-python"]).contains(version + ".0")


def test_every_dependency_has_an_upper_bound():
    for dep in _pyproject()["project"]["dependencies"] + _pyproject()["project"]["optional-dependencies"]["test"]:
        assert "<" in dep and ">=" in dep, f"{dep}: pin a range (>=low,<high)"


def test_postbuild_installs_the_package():
    text = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install" in text and "--no-deps -e ." in text


# ---------------------------------------------------------------- Binder lock
def _lock():
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "binder" / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert "==" in line and ";" not in line, f"binder/requirements.txt: not an exact pin: {line}"
        name, version = line.split("==")
        assert canonicalize_name(name) not in pins, f"binder/requirements.txt: {name} twice"
        pins[canonicalize_name(name)] = version
    return pins


def test_binder_lock_pins_every_dependency_within_the_pyproject_range():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _lock()
    for dep in _pyproject()["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not in binder/requirements.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"binder/requirements.txt pins {req.name}=={pins[name]} outside pyproject's {req.specifier}")


def test_binder_lock_is_the_tested_environment():
    """The lock is exactly what tools/lock_binder.py generates from the environment running the tests."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lock_binder", ROOT / "tools" / "lock_binder.py")
    lock_binder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock_binder)
    expected = lock_binder.lock_text()
    actual = (ROOT / "binder" / "requirements.txt").read_text()
    if actual != expected:
        old = set(actual.splitlines())
        new = set(expected.splitlines())
        raise AssertionError(
            "binder/requirements.txt differs from the installed environment; run "
            "`.venv/bin/python tools/lock_binder.py` (only in lock: "
            f"{sorted(old - new)[:10]}; only installed: {sorted(new - old)[:10]})")


def test_binder_runtime_matches_environment_python():
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    pins = [d for d in _env()["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert runtime == "python-" + pins[0].split("=")[-1]
