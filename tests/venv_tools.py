"""Console scripts of the test environment (ruff, check-jsonschema, bids-validator-deno)."""

import shutil
import sys
from pathlib import Path


def venv_tool(name: str) -> str | None:
    """Path of the console script *name*: beside the running Python (the venv's ``bin``, also
    when the venv is not activated), else on ``PATH``; ``None`` when neither has it."""
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.is_file() else shutil.which(name)
