"""The phone's key store: key file safety, atomic state, counters that never repeat."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from phone_client import KeyStore, KeyStoreError, UnknownVehicle
from phone_client.keystore import wall_clock_counter
from protocol import crypto
from protocol.card import VehicleCard

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def make_card(vin: str = "TESTCAR1") -> VehicleCard:
    return VehicleCard(vin, crypto.generate_private_key().public_key())


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    ks = KeyStore(tmp_path / "phone")
    ks.keygen()
    return ks


@posix_only
def test_keygen_creates_owner_only_key_and_directory(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "phone")
    public = ks.keygen()
    assert stat.S_IMODE(ks.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ks.home.stat().st_mode) == 0o700
    assert ks.public_key_text() == crypto.public_key_to_text(public)
    # A fresh instance loads the same key from disk.
    assert KeyStore(ks.home).public_key_text() == crypto.public_key_to_text(public)


def test_keygen_refuses_to_overwrite_unless_forced(store: KeyStore) -> None:
    before = store.public_key_text()
    with pytest.raises(KeyStoreError, match="--force"):
        store.keygen()
    assert KeyStore(store.home).public_key_text() == before
    store.keygen(force=True)
    after = KeyStore(store.home).public_key_text()
    assert after != before
    assert [p.name for p in store.home.iterdir()] == ["key.pem"]  # no temp file left


@posix_only
def test_forced_keygen_keeps_mode_0600(store: KeyStore) -> None:
    store.keygen(force=True)
    assert stat.S_IMODE(store.key_path.stat().st_mode) == 0o600


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_refuses_key_readable_by_group_or_others(store: KeyStore, mode: int) -> None:
    os.chmod(store.key_path, mode)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        _ = KeyStore(store.home).private_key


def test_missing_key_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="phonekey phone keygen"):
        _ = KeyStore(tmp_path).private_key


def test_garbage_key_file_is_a_keystore_error(store: KeyStore) -> None:
    store.key_path.write_bytes(b"not a pem")
    with pytest.raises(KeyStoreError, match="usable P-256 key"):
        _ = KeyStore(store.home).private_key


def test_vehicles_round_trip_and_several_are_held(store: KeyStore) -> None:
    a, b = make_card("CARA1"), make_card("CARB2")
    store.add_vehicle(a)
    store.add_vehicle(b)
    reopened = KeyStore(store.home)
    assert reopened.vehicle("cara1") == a  # VINs are normalised
    assert reopened.vehicle("CARB2") == b
    assert [c.vin for c in reopened.vehicles()] == ["CARA1", "CARB2"]


def test_unknown_vehicle_names_the_fix(store: KeyStore) -> None:
    with pytest.raises(UnknownVehicle, match="phonekey phone add-vehicle") as info:
        store.vehicle("NXCAR9")
    assert info.value.vin == "NXCAR9"
    with pytest.raises(UnknownVehicle):
        store.next_counter("NXCAR9")


def test_counter_is_persisted_before_it_is_returned(store: KeyStore) -> None:
    store.add_vehicle(make_card())
    counter = store.next_counter("TESTCAR1")
    # Another process (or the same phone after a crash) sees it already spent.
    on_disk = json.loads(store.state_path.read_text())
    assert on_disk["vehicles"]["TESTCAR1"]["counter"] == counter
    assert KeyStore(store.home).next_counter("TESTCAR1") > counter


def test_counters_strictly_increase_across_reopen(store: KeyStore) -> None:
    store.add_vehicle(make_card())
    seen = []
    for _ in range(20):
        seen.append(KeyStore(store.home).next_counter("TESTCAR1"))
    assert seen == sorted(set(seen))
    assert len(set(seen)) == len(seen)


def test_first_counter_is_seeded_from_the_wall_clock(store: KeyStore) -> None:
    store.add_vehicle(make_card())
    before = wall_clock_counter()
    assert store.next_counter("TESTCAR1") >= before
    assert store.next_counter("TESTCAR1") < 2**64


def test_restored_backup_still_moves_forward(store: KeyStore) -> None:
    store.add_vehicle(make_card())
    backup = store.state_path.read_bytes()  # taken before any command
    used = [store.next_counter("TESTCAR1") for _ in range(5)]
    store.state_path.write_bytes(backup)  # "restore" the old key store
    assert KeyStore(store.home).next_counter("TESTCAR1") > max(used)


def test_observed_counter_keeps_the_maximum(store: KeyStore) -> None:
    store.add_vehicle(make_card())
    counter = store.next_counter("TESTCAR1")
    store.observe_counter("TESTCAR1", counter - 10)
    assert store.counter("TESTCAR1") == counter
    store.observe_counter("TESTCAR1", counter + 1000)
    assert store.counter("TESTCAR1") == counter + 1000
    assert store.next_counter("TESTCAR1") > counter + 1000


def test_replacing_a_card_keeps_its_counter(store: KeyStore) -> None:
    store.add_vehicle(make_card())
    counter = store.next_counter("TESTCAR1")
    new_card = make_card()
    store.add_vehicle(new_card)
    assert store.vehicle("TESTCAR1") == new_card
    assert store.counter("TESTCAR1") == counter


def test_whitelist_verdict_is_remembered_per_vehicle(store: KeyStore) -> None:
    store.add_vehicle(make_card())
    store.add_vehicle(make_card("TESTCAR2"))
    assert not store.whitelist_accepted("TESTCAR1")
    store.set_whitelist_accepted("TESTCAR1", True)
    reopened = KeyStore(store.home)
    assert reopened.whitelist_accepted("TESTCAR1")
    assert not reopened.whitelist_accepted("TESTCAR2")
    reopened.set_whitelist_accepted("TESTCAR1", False)
    assert not store.whitelist_accepted("TESTCAR1")
    assert "whitelisted" not in json.loads(store.state_path.read_text())["vehicles"]["TESTCAR1"]
    with pytest.raises(UnknownVehicle):
        store.set_whitelist_accepted("TESTCAR3", True)


def test_an_unchanged_whitelist_verdict_is_not_rewritten(store: KeyStore) -> None:
    store.add_vehicle(make_card())
    store.set_whitelist_accepted("TESTCAR1", True)
    before = store.state_path.stat().st_ino
    store.set_whitelist_accepted("TESTCAR1", True)
    assert store.state_path.stat().st_ino == before


def test_a_new_card_forgets_the_whitelist_verdict(store: KeyStore) -> None:
    card = make_card()
    store.add_vehicle(card)
    store.set_whitelist_accepted("TESTCAR1", True)
    store.add_vehicle(card, cloud_url="http://cloud.example")  # same vehicle key: kept
    assert store.whitelist_accepted("TESTCAR1")
    store.add_vehicle(make_card())  # another vehicle key: nothing known about it
    assert not store.whitelist_accepted("TESTCAR1")


def test_state_is_replaced_atomically(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_vehicle(make_card())
    good = store.state_path.read_bytes()

    def crash(*_args: object) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.next_counter("TESTCAR1")
    monkeypatch.undo()
    # The old file is intact and no temp file is left behind.
    assert store.state_path.read_bytes() == good
    assert sorted(p.name for p in store.home.iterdir()) == ["key.pem", "phone.json"]


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"format": 99, "vehicles": {}}',
        '{"format": 1, "vehicles": {"CAR1": {"counter": 1}}}',
        '{"format": 1, "vehicles": {"CAR1": {"card": "x", "counter": -1}}}',
        '{"format": 1}',
        '{"format": 1, "vehicles": {"CAR1": {"card": "x", "counter": 0, "whitelisted": 1}}}',
    ],
)
def test_corrupt_state_is_a_keystore_error(store: KeyStore, content: str) -> None:
    store.state_path.write_text(content)
    with pytest.raises(KeyStoreError, match="corrupt"):
        store.vehicles()


def test_bad_card_text_in_state_is_a_keystore_error(store: KeyStore) -> None:
    store.state_path.write_text('{"format": 1, "vehicles": {"CAR1": {"card": "x", "counter": 0}}}')
    with pytest.raises(KeyStoreError, match="bad card"):
        store.vehicle("CAR1")


def test_default_home_is_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
        assert KeyStore().home == tmp_path / "phonekey" / "phone"
    else:
        assert KeyStore().home.name == "phone"


def test_a_rotated_issuer_is_pinned_and_the_previous_one_kept(store: KeyStore) -> None:
    card = make_card()
    keys = [crypto.generate_private_key().public_key() for _ in range(3)]
    store.add_vehicle(card, issuer=keys[0])
    store.pin_rotated_issuer(card.vin, keys[1])
    store.pin_rotated_issuer(card.vin, keys[1])  # already pinned: nothing changes
    trust = KeyStore(store.home).vehicle_trust(card.vin)
    assert trust.issuer == keys[1] and trust.previous_issuer == keys[0]
    assert set(trust.issuers) == {crypto.key_id(k) for k in keys[:2]}
    store.pin_rotated_issuer(card.vin, keys[2])  # the oldest goes, as on the vehicle
    trust = store.vehicle_trust(card.vin)
    assert trust.issuer == keys[2] and trust.previous_issuer == keys[1]
    with pytest.raises(UnknownVehicle):
        store.pin_rotated_issuer("ANTHERCAR2", keys[0])
