"""`phonekey phone share / import-share / shares` and the management commands'
argument checks, through the real dispatcher (no radio needed)."""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from phone_client import CommandOutcome, KeyStore, Latency
from phone_client.cli_output import print_result
from phone_client.cli_share import days_arg, hours_arg, offset_arg, to_unix
from phone_client.errors import ShareTextError
from phone_client.share_book import parse_share_text, share_text
from phonekey.cli import main
from protocol import Command, LockState, ResultCode, Role, crypto
from protocol.card import VehicleCard
from protocol.shares import issue_share

VIN = "SHARECAR1"
NEXT_YEAR = datetime.now(UTC).year + 1


@pytest.fixture
def card() -> VehicleCard:
    return VehicleCard(VIN, crypto.generate_private_key().public_key())


@pytest.fixture
def owner(tmp_path: Path, card: VehicleCard) -> list[str]:
    home = ["phone", "--home", str(tmp_path / "owner")]
    assert main([*home, "keygen"]) == 0
    assert main([*home, "add-vehicle", card.to_text()]) == 0
    return home


@pytest.fixture
def friend(tmp_path: Path) -> list[str]:
    home = ["phone", "--home", str(tmp_path / "friend")]
    assert main([*home, "keygen"]) == 0
    return home


def cli(args: list[str]) -> int:
    """``main``'s exit code, argparse's usage errors (SystemExit) included."""
    try:
        return main(args)
    except SystemExit as exc:
        assert isinstance(exc.code, int)
        return exc.code


def pubkey(home: list[str]) -> str:
    return KeyStore(Path(home[2])).public_key_text()


def share_cmd(owner: list[str], to: str, *extra: str) -> list[str]:
    until = f"{NEXT_YEAR}-06-30"
    return [*owner, "share", "--vin", VIN, "--to", to, "--role", "guest", "--until", until, *extra]


def test_share_prints_one_line_the_friend_imports(
    owner: list[str],
    friend: list[str],
    card: VehicleCard,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    args = share_cmd(
        owner,
        pubkey(friend),
        "--days",
        "mon-fri",
        "--hours",
        "08:00-18:00",
        "--utc-offset",
        "+01:00",
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and out.startswith("phonekey-share:1:")
    held_card, share = parse_share_text(out)
    assert held_card == card and share.role is Role.GUEST
    assert (share.weekdays, share.start_minute, share.end_minute) == (0x1F, 480, 1080)
    assert share.utc_offset_minutes == 60
    end = datetime(NEXT_YEAR, 6, 30, 23, 59, 59, tzinfo=UTC).timestamp() - 3600
    assert share.not_after == int(end)

    path = tmp_path / "share.txt"
    path.write_text(out)
    assert main([*friend, "import-share", str(path)]) == 0
    said = capsys.readouterr().out
    assert share.share_id.hex() in said and "guest" in said and VIN in said
    assert KeyStore(Path(friend[2])).vehicle(VIN) == card  # the card came with the share

    assert main([*owner, "shares", "--vin", VIN, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["share_id"] for s in listed["issued"]] == [share.share_id.hex()]
    assert listed["issued"][0]["state"] == "valid" and listed["imported"] == []
    assert main([*friend, "shares", "--vin", VIN]) == 0
    assert "imported " + share.share_id.hex() in capsys.readouterr().out


def test_import_share_reads_stdin(
    owner: list[str],
    friend: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    assert main(share_cmd(owner, pubkey(friend))) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(capsys.readouterr().out))
    assert main([*friend, "import-share", "-"]) == 0


def test_import_share_for_another_key_is_refused(
    owner: list[str], friend: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    stranger = crypto.public_key_to_text(crypto.generate_private_key().public_key())
    capsys.readouterr()
    assert main(share_cmd(owner, stranger)) == 0
    path = tmp_path / "share.txt"
    path.write_text(capsys.readouterr().out)
    assert main([*friend, "import-share", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not this phone's key" in err and len(err.strip().splitlines()) == 1


def test_import_share_conflicting_with_a_held_card_is_refused(
    owner: list[str], friend: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    other = VehicleCard(VIN, crypto.generate_private_key().public_key())
    assert main([*friend, "add-vehicle", other.to_text()]) == 0
    capsys.readouterr()
    assert main(share_cmd(owner, pubkey(friend))) == 0
    path = tmp_path / "share.txt"
    path.write_text(capsys.readouterr().out)
    assert main([*friend, "import-share", str(path)]) == 2
    assert "another card" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--role", "owner"], "owner role"),
        (["--role", "boss"], "not a share role"),
        (["--until", "2001-01-01"], "in the past"),
        (["--until", "31/12/2030"], "not a date"),
        (["--from", f"{NEXT_YEAR}-07-01"], "after --until"),
        (["--days", "mon-funday"], "not a day"),
        (["--hours", "8-18"], "daily window"),
        (["--hours", "08:00-08:00"], "empty window"),
        (["--hours", "08:00-25:00"], "00:00 to 24:00"),
        (["--utc-offset", "+15:00"], "outside"),
        (["--utc-offset", "CET"], "not a UTC offset"),
    ],
)
def test_share_refuses_bad_input_with_one_line(
    owner: list[str],
    friend: list[str],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    capsys.readouterr()
    assert cli([*share_cmd(owner, pubkey(friend)), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert KeyStore(Path(owner[2])).entry(VIN).get("shares") is None  # nothing recorded


def test_share_needs_the_vehicle_and_a_key(
    friend: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = crypto.public_key_to_text(crypto.generate_private_key().public_key())
    assert main(share_cmd(friend, stranger)) == 4
    assert "add-vehicle" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "phonekey-share:1:",
        "phonekey-share:1:phonekey-card:1:X:p256:00:AAAA",
        "phonekey-share:1:{card}:not*base64",
        "phonekey-share:1:{card}:AAAA",
        "phonekey-share:1:{other}:{share}",
    ],
)
def test_share_text_refusals(card: VehicleCard, text: str) -> None:
    owner = crypto.generate_private_key()
    share = issue_share(
        owner,
        vehicle_id=card.vehicle_id,
        holder_key=owner.public_key(),
        role=Role.GUEST,
        not_before=0,
        not_after=2**33,
    )
    good = share_text(card, share)
    other = VehicleCard(VIN, crypto.generate_private_key().public_key())
    assert parse_share_text(good) == (card, share)
    with pytest.raises(ShareTextError):
        parse_share_text(
            text.format(card=card.to_text(), other=other.to_text(), share=good.rsplit(":", 1)[1])
        )


def test_a_share_text_with_the_owner_key_is_verified_at_import(card: VehicleCard) -> None:
    """The owner's key rides in the text, so a damaged signature or a key that
    did not sign the share is refused when imported, not first at the car."""
    owner = crypto.generate_private_key()
    share = issue_share(
        owner,
        vehicle_id=card.vehicle_id,
        holder_key=owner.public_key(),
        role=Role.GUEST,
        not_before=0,
        not_after=2**33,
    )
    assert parse_share_text(share_text(card, share, owner.public_key())) == (card, share)
    damaged = replace(share, signature=bytes([share.signature[0] ^ 1]) + share.signature[1:])
    with pytest.raises(ShareTextError, match="does not verify"):
        parse_share_text(share_text(card, damaged, owner.public_key()))
    stranger = crypto.generate_private_key().public_key()
    with pytest.raises(ShareTextError, match="does not verify"):
        parse_share_text(share_text(card, share, stranger))


def test_argument_parsers() -> None:
    assert days_arg("mon,wed,sat") == 0b0100101
    assert days_arg("fri-mon") == 0b1110001
    assert days_arg("all") == 0x7F
    assert hours_arg("22:00-02:00") == (1320, 120)
    assert hours_arg("00:00-24:00") == (0, 1440)
    assert hours_arg("18:00-00:00") == (1080, 1440)
    assert offset_arg("-05:30") == -330 and offset_arg("Z") == 0 and offset_arg("+2") == 120
    with pytest.raises(argparse.ArgumentTypeError):
        offset_arg("+01:75")
    moment = datetime(2030, 1, 2, 3, 4)
    assert to_unix(moment, 60, end_of_day=True) == int(
        datetime(2030, 1, 2, 2, 4, tzinfo=UTC).timestamp()
    )


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("add-key", ["--pubkey", "p256:00", "--role", "driver"], "public key"),
        ("add-key", ["--pubkey", "{key}", "--role", "king"], "not a role"),
        ("remove-key", ["--key-id", "abcd"], "32 hex digits"),
        ("transfer", ["--to", "nope"], "public key"),
        ("revoke-share", ["--share-id", "1234abcd"], "issued no share"),
    ],
)
def test_management_commands_check_arguments_before_any_radio(
    owner: list[str],
    capsys: pytest.CaptureFixture[str],
    command: str,
    args: list[str],
    message: str,
) -> None:
    key = crypto.public_key_to_text(crypto.generate_private_key().public_key())
    args = [a.format(key=key) for a in args]
    code = cli([*owner, command, "--vin", VIN, *args, "--transport", "tcp-client:127.0.0.1:1"])
    assert code in (2, 4)
    assert message in capsys.readouterr().err


def test_enroll_needs_the_vehicle_card_first(
    friend: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*friend, "enroll", "--vin", VIN, "--transport", "tcp-client:127.0.0.1:1"]) == 4
    assert "add-vehicle" in capsys.readouterr().err


def outcome(**changes: object) -> CommandOutcome:
    fields: dict[str, object] = {
        "vin": VIN,
        "command": Command.UNLOCK,
        "result": ResultCode.OK,
        "lock_state": LockState.UNLOCKED,
        "counter": 1,
        "key_id": bytes(16),
        "att_mtu": 247,
        "frames_written": 1,
        "latency": Latency(None, 0.01, 0.01, 0.01, 0.03),
    }
    fields.update(changes)
    return CommandOutcome(**fields)  # type: ignore[arg-type]


def test_unlock_output_says_when_the_fast_path_was_used(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_result(outcome(fast_path=True))
    assert "fast path" in capsys.readouterr().out
    print_result(outcome(fast_path_refused="fast key unknown"))
    assert "fast path refused (fast key unknown), full handshake" in capsys.readouterr().out
    print_result(outcome())
    assert "fast path" not in capsys.readouterr().out


def test_share_until_is_recorded_before_it_is_printed(
    owner: list[str], friend: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(share_cmd(owner, pubkey(friend), "--from", "2020-01-01T00:00:00+00:00")) == 0
    share = parse_share_text(capsys.readouterr().out)[1]
    issued = KeyStore(Path(owner[2])).entry(VIN)["shares"]["issued"]
    assert len(issued) == 1 and share.not_before == 1577836800 < int(time.time())
