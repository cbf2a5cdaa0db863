"""Put the repository root first on sys.path, so the in-tree packages (protocol, ...)
are imported even when the editable install is stale or pytest runs from its script."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
