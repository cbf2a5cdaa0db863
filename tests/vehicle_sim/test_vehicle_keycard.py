"""The keycard: a P-256 key file whose taps (challenge-response through the
running vehicle's console) unlock and lock as the backup key, open the
pairing window in which a new phone enrolls itself as owner over BLE, remove
a lost phone and, with the console, factory-reset the vehicle. A card the
vehicle does not know is refused and logged."""

from __future__ import annotations

import asyncio
import io
import json
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from vehicle_testkit import STEP_TIMEOUT, VIN, BlePhone, PhoneFactory

from ble_stack.transports import default_radio
from ble_stack.virtual_link import VirtualRadio
from protocol import ChallengeReceived, crypto
from protocol.card import VehicleCard
from protocol.types import ManageOp, ResultCode
from vehicle_sim.cli_run import run_vehicle
from vehicle_sim.keycard import (
    KeycardError,
    PairingWindow,
    TapAction,
    card_id,
    sign_tap,
    tap_message,
    verify_tap,
)
from vehicle_sim.state_store import FileVehicleStore

Cli = Callable[[list[str]], int]


@pytest.fixture
async def radio() -> VirtualRadio:
    return default_radio()  # the radio `--transport virtual` uses


@pytest.fixture
def cards(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "card.pem", tmp_path / "stranger-card.pem"


@pytest.fixture
async def vehicle_with_card(
    card: VehicleCard, state_dir: Path, cards: tuple[Path, Path], vehicle_cli: Cli
) -> AsyncIterator[Path]:
    async with _running_with_card(state_dir, cards, vehicle_cli):
        yield state_dir


@asynccontextmanager
async def _running_with_card(
    state_dir: Path, cards: tuple[Path, Path], vehicle_cli: Cli
) -> AsyncIterator[Path]:
    good, stranger = cards
    # Registered on the stopped vehicle; the stranger's card is made elsewhere.
    assert vehicle_cli(["vehicle", "add-card", "--state", str(state_dir), "--card", str(good)]) == 0
    other = state_dir.parent / "other-vehicle"
    from vehicle_sim.state_store import init_vehicle

    init_vehicle(other, "1FTFW1ET5DFC10312")
    assert vehicle_cli(["vehicle", "add-card", "--state", str(other), "--card", str(stranger)]) == 0
    out, stop = io.StringIO(), asyncio.Event()
    task = asyncio.create_task(run_vehicle(state_dir, "virtual", stop=stop, out=out))
    async with asyncio.timeout(STEP_TIMEOUT):
        while "advertising" not in out.getvalue():
            await asyncio.sleep(0.01)
    try:
        yield state_dir
    finally:
        stop.set()
        assert await asyncio.wait_for(task, STEP_TIMEOUT) == 0


async def cli(vehicle_cli: Cli, *argv: str) -> int:
    return await asyncio.to_thread(vehicle_cli, list(argv))


async def test_card_unlocks_and_locks_and_a_strange_card_is_refused(
    vehicle_with_card: Path,
    cards: tuple[Path, Path],
    vehicle_cli: Cli,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good, stranger = cards
    assert stat.S_IMODE(good.stat().st_mode) == 0o600
    state = ["--state", str(vehicle_with_card)]
    assert (
        await cli(vehicle_cli, "vehicle", "tap-card", *state, "--card", str(good), "--unlock") == 0
    )
    assert "doors unlocked (were locked)" in capsys.readouterr().out
    code = await cli(vehicle_cli, "vehicle", "tap-card", *state, "--card", str(stranger), "--lock")
    captured = capsys.readouterr()
    assert code == 1 and "not registered" in captured.err
    assert await cli(vehicle_cli, "vehicle", "show", *state, "--json") == 0
    assert json.loads(capsys.readouterr().out)["lock_state"] == "unlocked"
    assert await cli(vehicle_cli, "vehicle", "tap-card", *state, "--card", str(good), "--lock") == 0
    capsys.readouterr()

    assert await cli(vehicle_cli, "vehicle", "log", *state, "--json") == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    good_id = card_id(_load(good)).hex()
    kinds = [(e["kind"], e["key_id"]) for e in entries]
    assert ("unlock", good_id) in kinds and ("lock", good_id) in kinds
    assert any(k == "denied" for k, _ in kinds)


async def test_tap_opens_the_pairing_window_and_a_new_phone_enrolls_as_owner(
    state_dir: Path,
    store: FileVehicleStore,
    cards: tuple[Path, Path],
    vehicle_cli: Cli,
    make_phone: PhoneFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    phone = await make_phone("new-owner", role=None)
    store.close()  # the running vehicle takes the state over
    async with _running_with_card(state_dir, cards, vehicle_cli):
        await _enroll_in_the_window(state_dir, cards[0], phone, vehicle_cli, capsys)


async def _enroll_in_the_window(
    state_dir: Path,
    good: Path,
    phone: BlePhone,
    vehicle_cli: Cli,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = ["--state", str(state_dir)]
    capsys.readouterr()
    address = await phone.scan_for(VIN)

    assert await cli(vehicle_cli, "vehicle", "tap-card", *state, "--card", str(good), "--pair") == 0
    assert "pairing window open for 30 s" in capsys.readouterr().out
    await phone.connect(address)
    assert isinstance(await phone.next_event(), ChallengeReceived)
    assert phone.protocol is not None
    phone.protocol.send_manage(ManageOp.ENROLL, crypto.public_bytes(phone.key.public_key()), 1)
    await phone.write_frames()
    done = await phone.next_event()
    assert getattr(done, "result", None) is ResultCode.OK, done

    assert await cli(vehicle_cli, "vehicle", "show", *state, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [(k["key_id"], k["role"]) for k in report["keys"]] == [(phone.key_id.hex(), "owner")]
    assert report["pairing_window_s"] == 0  # the enrollment closed it


async def test_remove_key_and_factory_reset_need_a_registered_card(
    vehicle_with_card: Path,
    cards: tuple[Path, Path],
    vehicle_cli: Cli,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good, stranger = cards
    state = ["--state", str(vehicle_with_card)]
    lost = crypto.generate_private_key().public_key()
    kept = crypto.generate_private_key().public_key()
    for key in (lost, kept):
        text = crypto.public_key_to_text(key)
        assert (
            await cli(vehicle_cli, "vehicle", "add-key", *state, "--key", text, "--role", "owner")
            == 0
        )
    lost_id = crypto.key_id(lost).hex()

    remove = ["vehicle", "remove-key", *state, "--key-id", lost_id]
    assert await cli(vehicle_cli, *remove, "--card", str(stranger)) == 1
    assert await cli(vehicle_cli, *remove, "--card", str(good)) == 0
    assert await cli(vehicle_cli, *remove, "--card", str(good)) == 1  # already gone
    capsys.readouterr()
    assert await cli(vehicle_cli, "vehicle", "show", *state, "--json") == 0
    assert [k["key_id"] for k in json.loads(capsys.readouterr().out)["keys"]] == [
        crypto.key_id(kept).hex()
    ]

    assert await cli(vehicle_cli, "vehicle", "factory-reset", *state, "--card", str(stranger)) == 1
    assert await cli(vehicle_cli, "vehicle", "factory-reset", *state, "--card", str(good)) == 0
    capsys.readouterr()
    assert await cli(vehicle_cli, "vehicle", "show", *state, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["keys"] == [] and report["keycards"] == [card_id(_load(good)).hex()]
    assert await cli(vehicle_cli, "vehicle", "log", *state) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "factory_reset" in out


async def test_add_card_on_a_running_vehicle_needs_an_existing_card(
    vehicle_with_card: Path,
    cards: tuple[Path, Path],
    tmp_path: Path,
    vehicle_cli: Cli,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good, stranger = cards
    spare = tmp_path / "spare.pem"
    add = ["vehicle", "add-card", "--state", str(vehicle_with_card), "--card", str(spare)]
    assert await cli(vehicle_cli, *add) == 1
    assert "tap it to add another" in capsys.readouterr().err
    assert await cli(vehicle_cli, *add, "--with-card", str(stranger)) == 1
    assert await cli(vehicle_cli, *add, "--with-card", str(good)) == 0
    assert "registered keycard" in capsys.readouterr().out


def test_tap_signature_binds_vehicle_nonce_action_and_argument() -> None:
    card = crypto.generate_private_key()
    vehicle, nonce, key_id = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
    signature = sign_tap(card, vehicle, nonce, TapAction.REMOVE_KEY, key_id)
    cards = [card.public_key()]
    verify_tap(cards, card_id(card), signature, vehicle, nonce, TapAction.REMOVE_KEY, key_id)
    for other in (
        (b"\x09" * 16, nonce, TapAction.REMOVE_KEY, key_id),  # another vehicle
        (vehicle, b"\x09" * 16, TapAction.REMOVE_KEY, key_id),  # a replayed answer
        (vehicle, nonce, TapAction.REMOVE_KEY, b"\x09" * 16),  # another key
    ):
        with pytest.raises(KeycardError):
            verify_tap(cards, card_id(card), signature, *other)
    with pytest.raises(KeycardError, match="not registered"):
        verify_tap([], card_id(card), signature, vehicle, nonce, TapAction.REMOVE_KEY, key_id)
    with pytest.raises(ValueError):
        tap_message(vehicle, nonce, TapAction.UNLOCK, b"extra")


def test_pairing_window_opens_times_out_and_is_consumed_once() -> None:
    now = [0.0]
    window = PairingWindow(lambda: now[0])
    assert not window.is_open()
    window.open(30, b"\x01" * 16)
    now[0] = 29.9
    assert window.is_open()
    window.consume()
    assert not window.is_open()
    window.open(30, b"\x01" * 16)
    now[0] += 30
    assert not window.is_open()
    with pytest.raises(ValueError):
        window.open(0, b"\x01" * 16)


def _load(path: Path) -> crypto.PrivateKey:
    return crypto.private_key_from_pem(path.read_bytes())


def test_keycard_vectors_verify() -> None:
    vectors = json.loads((Path(__file__).parents[1] / "vectors" / "keycard_v1.json").read_text())
    public = crypto.public_key_from_bytes(bytes.fromhex(vectors["card_public_key"]))
    assert card_id(public).hex() == vectors["card_id"]
    vehicle, nonce = bytes.fromhex(vectors["vehicle_id"]), bytes.fromhex(vectors["nonce"])
    for tap in vectors["taps"]:
        action, argument = TapAction.from_name(tap["action"]), bytes.fromhex(tap["argument"])
        assert tap_message(vehicle, nonce, action, argument).hex() == tap["signed_message"]
        verify_tap(
            [public],
            card_id(public),
            bytes.fromhex(tap["signature"]),
            vehicle,
            nonce,
            action,
            argument,
        )
