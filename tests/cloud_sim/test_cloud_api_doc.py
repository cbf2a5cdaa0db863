"""docs/cloud-api.yaml describes exactly the routes the app serves."""

from __future__ import annotations

import re
from pathlib import Path

from cloud_sim.app import CloudState, make_app
from cloud_sim.db import CloudDB
from cloud_sim.faults import FaultKind

_DOC = Path(__file__).resolve().parents[2] / "docs" / "cloud-api.yaml"


def test_every_route_is_documented(tmp_path: Path) -> None:
    text = _DOC.read_text()
    assert text.startswith("openapi: 3.1")
    documented: set[tuple[str, str]] = set()
    path = None
    for line in text.splitlines():
        if match := re.fullmatch(r"  (/v1/\S+):", line):
            path = match.group(1)
        elif path and (match := re.fullmatch(r"    (get|post|put|delete|patch):", line)):
            documented.add((match.group(1).upper(), path))
    db = CloudDB(tmp_path / "doc.db")
    try:
        app = make_app(CloudState(db, db.issuer_key()))
        served = {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None
        }
    finally:
        db.close()
    assert documented == served
    for kind in FaultKind:
        assert f"`{kind.value}" in text, kind
