"""The import direction is a contract: server and client never import each other, shared/ imports
neither, and the layers inside each (contracts in pyproject.toml) are kept. A broken contract
fails here with the offending import named (``module -> module (l.N)``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    report = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode == 0, report
    assert re.search(r"Contracts: (\d+) kept, 0 broken", report), report
