#!/usr/bin/env python3
"""Set up and run phonekey with nothing but Python 3.11+ and pip.

    python3 tasks.py demo     # create .venv, install, run `phonekey demo`
    python3 tasks.py test     # create .venv, install with dev tools, run the tests
    python3 tasks.py lint     # ruff and mypy

Works the same on Linux, macOS and Windows (`py tasks.py demo`). Standard
library only, because it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def _run(*args: str | Path) -> None:
    # Set-up chatter goes to stderr so `tasks.py demo --json` prints only JSON on stdout.
    print("+", " ".join(str(a) for a in args), file=sys.stderr, flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT, stdout=sys.stderr)


def ensure_venv(extras: str = "") -> None:
    """Create .venv and install the project, re-installing when pyproject changes."""
    if sys.version_info < (3, 11):  # noqa: UP036 - runs before the venv, on any Python
        sys.exit(f"phonekey needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating virtual environment in {VENV}", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed{extras}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    spec = f".[{extras}]" if extras else "."
    _run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(PYTHON, "-m", "pip", "install", "--quiet", "-e", spec)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    task = argv[0] if argv else "help"
    rest = argv[1:]
    if task == "demo":
        ensure_venv()
        return subprocess.call([str(BIN / "phonekey"), "demo", *rest], cwd=ROOT)
    if task == "test":
        ensure_venv("dev")
        return subprocess.call([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT)
    if task == "lint":
        ensure_venv("dev")
        checks = [
            [str(PYTHON), "-m", "ruff", "check", "."],
            [str(PYTHON), "-m", "ruff", "format", "--check", "."],
            [str(PYTHON), "-m", "mypy"],
        ]
        failures = [subprocess.call(cmd, cwd=ROOT) for cmd in checks]
        return max(failures)
    print(__doc__)
    return 0 if task == "help" else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
