"""A command line that does not parse still answers a script that asked for
JSON: one object on stdout, the usage on stderr, exit 2 (README, "Seeing what
happened")."""

from __future__ import annotations

import json

import pytest

from phonekey.cli import main


@pytest.mark.parametrize(
    ("argv", "command", "reason"),
    [
        (["vehicle", "add-key", "--json"], "add-key", "required: --key, --role"),
        (["phone", "unlock", "--json", "--timeout", "nan"], "unlock", "not a finite number"),
        (["vehicle", "show", "--json", "--bogus"], "show", "unrecognized arguments: --bogus"),
    ],
)
def test_a_usage_error_with_json_prints_one_object(
    argv: list[str], command: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    failure = json.loads(out)
    assert failure["ok"] is False and failure["command"] == command
    assert failure["error"]["code"] == 2 and reason in failure["error"]["reason"]
    assert "usage:" in err and reason in err


def test_without_json_a_usage_error_prints_nothing_on_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["vehicle", "add-key"])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage:" in err
