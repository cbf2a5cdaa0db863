"""`phonekey vehicle init|add-key|show` through phonekey.cli.main, and `run`'s
failure paths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from vehicle_testkit import VIN

from protocol import Role, crypto, privacy
from protocol.card import VehicleCard
from protocol.credentials import revocation_id
from vehicle_sim.state_store import open_store

Cli = Callable[[list[str]], int]


def _pubkey_text() -> str:
    return crypto.public_key_to_text(crypto.generate_private_key().public_key())


def test_init_prints_the_card_last(
    vehicle_cli: Cli, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vehicle_cli(["vehicle", "init", "--vin", VIN.lower(), "--state", str(state_dir)]) == 0
    out = capsys.readouterr().out
    card = VehicleCard.from_text(out.strip().splitlines()[-1])
    assert card.vin == VIN
    with open_store(state_dir, read_only=True) as store:
        # The card for phones carries the advertising secret (protocol/privacy.py).
        assert store.card == card
        assert card.adv_secret == privacy.derive_adv_secret(store.identity.private_key)


def test_init_errors(vehicle_cli: Cli, state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vehicle_cli(["vehicle", "init", "--vin", "BAD-VIN", "--state", str(state_dir)]) == 2
    assert vehicle_cli(["vehicle", "init", "--vin", VIN, "--state", str(state_dir)]) == 0
    capsys.readouterr()
    assert vehicle_cli(["vehicle", "init", "--vin", VIN, "--state", str(state_dir)]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a vehicle" in err


def test_add_key_then_show(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner, guest = _pubkey_text(), _pubkey_text()
    state = ["--state", str(state_dir)]
    assert vehicle_cli(["vehicle", "add-key", *state, "--key", owner, "--role", "owner"]) == 0
    assert vehicle_cli(["vehicle", "add-key", *state, "--key", guest, "--role", "guest"]) == 0
    assert vehicle_cli(["vehicle", "add-key", *state, "--key", guest, "--role", "guest"]) == 0
    capsys.readouterr()

    assert vehicle_cli(["vehicle", "show", *state]) == 0
    out = capsys.readouterr().out
    owner_id = crypto.key_id(crypto.public_key_from_text(owner))[:4].hex()
    guest_id = crypto.key_id(crypto.public_key_from_text(guest))[:4].hex()
    assert VIN in out and card.vehicle_id.hex() in out and "locked" in out
    assert f"{owner_id}  owner" in out and f"{guest_id}  guest" in out
    assert card.to_text() in out


@pytest.mark.parametrize("bad_key", ["p256:zz", "p256:02abcd", "p256:05" + "11" * 32])
def test_add_key_rejects_a_bad_key(
    vehicle_cli: Cli,
    card: VehicleCard,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
    bad_key: str,
) -> None:
    code = vehicle_cli(
        ["vehicle", "add-key", "--state", str(state_dir), "--key", bad_key, "--role", "owner"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("phonekey vehicle add-key: error: invalid --key")
    assert err.count("\n") == 1


def test_add_key_is_refused_while_the_vehicle_runs(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _pubkey_text()
    with open_store(state_dir):  # what `vehicle run` holds
        code = vehicle_cli(
            ["vehicle", "add-key", "--state", str(state_dir), "--key", key, "--role", "owner"]
        )
        err = capsys.readouterr().err
        assert code == 4 and "in use by a running vehicle" in err and "stop it first" in err
        # show still works while it runs
        assert vehicle_cli(["vehicle", "show", "--state", str(state_dir)]) == 0
    with open_store(state_dir, read_only=True) as store:
        assert store.keys() == []


def test_show_and_add_key_without_a_vehicle(
    vehicle_cli: Cli, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vehicle_cli(["vehicle", "show", "--state", str(state_dir)]) == 4
    key = _pubkey_text()
    argv = ["vehicle", "add-key", "--state", str(state_dir), "--key", key, "--role", "driver"]
    assert vehicle_cli(argv) == 4
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("no vehicle in" in line for line in err)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("tcp-client:127.0.0.1:1", "connection refused"),
        ("nonsense:1", "unknown transport"),
    ],
)
def test_run_reports_a_transport_failure_and_releases_the_state(
    vehicle_cli: Cli,
    card: VehicleCard,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
    spec: str,
    reason: str,
) -> None:
    code = vehicle_cli(["vehicle", "run", "--state", str(state_dir), "--transport", spec])
    err = capsys.readouterr().err
    assert code == 4
    assert err.count("\n") == 1 and reason in err and "Traceback" not in err
    with open_store(state_dir):  # the lock went with the failed run
        pass


def test_run_refuses_a_state_in_use(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_store(state_dir):
        code = vehicle_cli(["vehicle", "run", "--state", str(state_dir), "--transport", "virtual"])
    assert code == 4 and "in use by a running vehicle" in capsys.readouterr().err


# --- issuers: init --issuer, provision, show ------------------------------------------------
def _issuer() -> tuple[str, str]:
    """An issuer key as the CLI takes it, and its key id in hex."""
    key = crypto.generate_private_key().public_key()
    return crypto.public_key_to_text(key), crypto.key_id(key).hex()


def test_init_with_an_issuer(
    vehicle_cli: Cli, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issuer, issuer_id = _issuer()
    argv = ["vehicle", "init", "--vin", VIN, "--state", str(state_dir), "--issuer", issuer]
    assert vehicle_cli(argv) == 0
    out = capsys.readouterr().out
    assert f"trusting cloud credentials from issuer {issuer_id}" in out
    VehicleCard.from_text(out.strip().splitlines()[-1])  # the card stays last
    with open_store(state_dir, read_only=True) as store:
        assert [key_id.hex() for key_id in store.issuer_keys()] == [issuer_id]


def test_init_rejects_a_bad_issuer_key(
    vehicle_cli: Cli, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["vehicle", "init", "--vin", VIN, "--state", str(state_dir), "--issuer", "p256:02ab"]
    assert vehicle_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("phonekey vehicle init: error: invalid --issuer") and err.count("\n") == 1
    assert not state_dir.exists()  # nothing created


def test_provision_then_show(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = ["--state", str(state_dir)]
    first, first_id = _issuer()
    second, second_id = _issuer()
    assert vehicle_cli(["vehicle", "provision", *state, "--issuer", first]) == 0
    out = capsys.readouterr().out
    assert f"vehicle {VIN} now trusts cloud credentials from issuer {first_id}" in out
    assert vehicle_cli(["vehicle", "provision", *state, "--issuer", first]) == 0
    assert f"issuer {first_id} is already trusted" in capsys.readouterr().out
    assert vehicle_cli(["vehicle", "provision", *state, "--issuer", second]) == 0
    assert "(2 issuer keys)" in capsys.readouterr().out

    # A third is refused: one key, or two while the issuer rotates.
    third, _ = _issuer()
    assert vehicle_cli(["vehicle", "provision", *state, "--issuer", third]) == 4
    err = capsys.readouterr().err
    assert "already trusts 2 issuer keys" in err and err.count("\n") == 1

    # Revocations and a clock correction, as a running vehicle would get them.
    owner = crypto.generate_private_key().public_key()
    with open_store(state_dir) as store:
        owner_id = store.add_key(owner, Role.OWNER).key_id
        store.apply_revocations(3, (revocation_id(card.vehicle_id, owner_id), b"\x01" * 16))
        store.correct_clock(1_767_225_600)  # 2026-01-01T00:00:00Z

    assert vehicle_cli(["vehicle", "show", *state]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "issuers     2" in lines
    assert f"  {first_id}" in lines and f"  {second_id}" in lines
    assert "revocations version 3, 2 entries" in lines
    assert any(line.startswith("time floor  20") and line.endswith("Z") for line in lines)
    assert f"{owner_id[:4].hex()}  owner   counter 0  revoked" in out
    # The card names the first issuer, so phones pin it from the vehicle itself.
    with_issuer = VehicleCard(card.vin, card.public_key, crypto.public_key_from_text(first))
    assert lines[-1].startswith(f"card        {with_issuer.to_text()}:adv:")  # + adv secret


def test_show_a_vehicle_without_issuers(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vehicle_cli(["vehicle", "show", "--state", str(state_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "issuers     0" in lines and "revocations version 0, 0 entries" in lines


def test_show_prints_the_time_floor_in_utc(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_store(state_dir) as store:
        store.correct_clock(1_767_225_600)  # issuer-signed time sets the floor
    assert vehicle_cli(["vehicle", "show", "--state", str(state_dir)]) == 0
    assert "time floor  2026-01-01T00:00:00Z" in capsys.readouterr().out.splitlines()


def test_provision_is_refused_while_the_vehicle_runs(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issuer, _ = _issuer()
    with open_store(state_dir):  # what `vehicle run` holds
        code = vehicle_cli(["vehicle", "provision", "--state", str(state_dir), "--issuer", issuer])
    err = capsys.readouterr().err
    assert code == 4 and "in use by a running vehicle" in err and "stop it first" in err
    with open_store(state_dir, read_only=True) as store:
        assert dict(store.issuer_keys()) == {}


def test_provision_usage_errors(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["vehicle", "provision", "--state", str(state_dir)]
    assert vehicle_cli([*argv, "--issuer", "p256:zz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phonekey vehicle provision: error: invalid --issuer")
    with pytest.raises(SystemExit) as info:  # argparse: --issuer is required
        vehicle_cli(argv)
    assert info.value.code == 2 and "--issuer" in capsys.readouterr().err


def test_add_key_refuses_a_revoked_key(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _pubkey_text()
    key_id = crypto.key_id(crypto.public_key_from_text(key))
    with open_store(state_dir) as store:
        store.apply_revocations(1, (revocation_id(card.vehicle_id, key_id),))
    argv = ["vehicle", "add-key", "--state", str(state_dir), "--key", key, "--role", "owner"]
    assert vehicle_cli(argv) == 1
    err = capsys.readouterr().err
    assert "on the issuer's revocation list" in err and err.count("\n") == 1
    with open_store(state_dir, read_only=True) as store:
        assert store.keys() == []


def test_add_key_accepts_a_key_revoked_only_on_another_vehicle(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _pubkey_text()
    key_id = crypto.key_id(crypto.public_key_from_text(key))
    other_vehicle = crypto.key_id(crypto.generate_private_key().public_key())
    with open_store(state_dir) as store:
        # Another owner revoked this phone on their car; the raw key id is no entry at all.
        store.apply_revocations(1, (revocation_id(other_vehicle, key_id), key_id))
    argv = ["vehicle", "add-key", "--state", str(state_dir), "--key", key, "--role", "owner"]
    assert vehicle_cli(argv) == 0
    capsys.readouterr()
    assert vehicle_cli(["vehicle", "show", "--state", str(state_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{key_id[:4].hex()}  owner   counter 0" in out and "  revoked" not in out
    with open_store(state_dir, read_only=True) as store:
        assert store.whitelist_entry(key_id) is not None
