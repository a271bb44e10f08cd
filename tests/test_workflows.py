"""The public forge's CI workflow (.github/workflows/book.yml) is valid and builds what we test.

Validated against the GitHub Actions workflow JSON schema (SchemaStore) that
``check-jsonschema`` ships (``--builtin-schema vendor.github-workflows``: no network),
then checked for what the book needs: the exact tested environment, the book build,
and the Pages upload of the folder the build writes.
"""

import subprocess
from pathlib import Path

import pytest
import yaml
from venv_tools import venv_tool

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def _linter():
    exe = venv_tool("check-jsonschema")
    if exe is None:
        pytest.skip("check-jsonschema not installed (pip install -e '.[test]')")
    return exe


def _lint(path):
    return subprocess.run([_linter(), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True)


def _workflow():
    return yaml.safe_load(WORKFLOW.read_text())


def test_workflow_passes_the_schema_linter():
    result = _lint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_linter_rejects_a_broken_workflow(tmp_path):
    wf = _workflow()
    wf["jobs"]["build"]["step"] = wf["jobs"]["build"].pop("steps")  # typo a human could make
    bad = tmp_path / "book.yml"
    bad.write_text(yaml.safe_dump(wf))
    assert _lint(bad).returncode != 0


def test_workflow_builds_the_book_with_the_locked_environment_and_publishes_it():
    wf = _workflow()
    steps = wf["jobs"]["build"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "-c binder/requirements.txt" in runs, "install the exact tested versions"
    assert "spineprint build" in runs
    python = next(s["with"]["python-version"] for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    assert runtime == f"python-{python}", "CI and Binder use the same Python"
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html", "spineprint build writes the HTML to _build/html"
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in deploy["steps"])
    assert "refs/heads/main" in deploy["if"], "only main is published"
    # trigger key: PyYAML reads the bare key `on` as True
    triggers = wf.get("on", wf.get(True))
    assert "pull_request" in triggers and "push" in triggers


def test_build_default_output_is_what_the_workflow_uploads():
    from spineprint_utils import build

    src = Path(build.__file__).read_text()
    # default output folder <root>/_build, HTML in its html/ subfolder (as README documents)
    assert 'root / "_build"' in src and '"html"' in src
