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
    text = (ROOT / "postBuild").read_text()
    assert "pip install" in text and "-e ." in text
