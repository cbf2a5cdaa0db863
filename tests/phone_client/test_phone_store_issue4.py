"""The key store's issue-4 additions: fast-path secrets (fast-keys.json) and
share records in phone.json (format 2, format 1 still loads)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from phone_client import KeyStore, KeyStoreError
from phone_client.fast_keys import RETRY_UNAVAILABLE_AFTER, FastKeys
from phone_client.share_book import ShareBook
from protocol import Role, crypto
from protocol.card import VehicleCard
from protocol.shares import issue_share

VIN = "TESTCAR1"
SECRET = bytes(range(32))


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    keystore = KeyStore(tmp_path / "phone")
    keystore.keygen()
    return keystore


@pytest.fixture
def card() -> VehicleCard:
    return VehicleCard(VIN, crypto.generate_private_key().public_key())


def test_fast_key_persists_owner_only_and_bound_to_both_keys(
    store: KeyStore, card: VehicleCard
) -> None:
    store.add_vehicle(card)
    store.fast_keys.store(VIN, store.key_id(), card.public_key, SECRET)
    path = store.home / "fast-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = KeyStore(store.home)  # a new process reads what the last one wrote
    assert again.fast_keys.get(VIN, store.key_id(), card.public_key) == SECRET
    other_vehicle = crypto.generate_private_key().public_key()
    assert again.fast_keys.get(VIN, store.key_id(), other_vehicle) is None
    assert again.fast_keys.get(VIN, bytes(16), card.public_key) is None
    assert SECRET.hex() not in store.state_path.read_text()


def test_fast_key_file_readable_by_others_is_refused(store: KeyStore, card: VehicleCard) -> None:
    store.fast_keys.store(VIN, store.key_id(), card.public_key, SECRET)
    os.chmod(store.fast_keys.path, 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        store.fast_keys.get(VIN, store.key_id(), card.public_key)


def test_fast_key_write_is_atomic(
    store: KeyStore, card: VehicleCard, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.fast_keys.store(VIN, store.key_id(), card.public_key, SECRET)
    good = store.fast_keys.path.read_bytes()

    def crash(*_args: object) -> None:
        raise OSError(5, "simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyStoreError, match="cannot write"):
        store.fast_keys.store(VIN, store.key_id(), card.public_key, bytes(32))
    monkeypatch.undo()
    assert store.fast_keys.path.read_bytes() == good
    assert not [p for p in store.home.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "content",
    [
        "{broken",
        '{"format": 2, "vehicles": {}}',
        '{"format": 1, "vehicles": {"A": {"key": "zz", "phone_key_id": "", "vehicle_key": ""}}}',
        '{"format": 1, "vehicles": {"A": {"key": "00", "phone_key_id": "", "vehicle_key": ""}}}',
        '{"format": 1, "vehicles": {"A": {"unavailable_since": "yesterday"}}}',
    ],
)
def test_corrupt_fast_key_file_is_one_clear_error(store: KeyStore, content: str) -> None:
    store.fast_keys.path.write_text(content)
    os.chmod(store.fast_keys.path, 0o600)
    with pytest.raises(KeyStoreError, match="corrupt") as caught:
        store.fast_keys.held("A")
    assert "\n" not in str(caught.value)


def test_unavailable_vehicle_is_retried_after_a_while(tmp_path: Path, card: VehicleCard) -> None:
    now = [1_000_000.0]
    keys = FastKeys(tmp_path, clock=lambda: now[0])
    keys.store(VIN, bytes(16), card.public_key, SECRET)
    keys.drop(VIN, unavailable=True)
    assert keys.unavailable(VIN) and not keys.held(VIN)
    now[0] += RETRY_UNAVAILABLE_AFTER
    assert not keys.unavailable(VIN)


def test_removing_a_vehicle_drops_its_fast_key(store: KeyStore, card: VehicleCard) -> None:
    store.add_vehicle(card)
    store.fast_keys.store(VIN, store.key_id(), card.public_key, SECRET)
    store.remove_vehicle(VIN)
    assert not store.fast_keys.held(VIN)


def test_format_1_state_loads_and_is_written_back_as_format_2(
    store: KeyStore, card: VehicleCard
) -> None:
    old = {
        "format": 1,
        "vehicles": {VIN: {"card": card.to_text(), "counter": 7, "whitelisted": True}},
    }
    store.state_path.write_text(json.dumps(old))
    assert store.vehicle(VIN) == card and store.counter(VIN) == 7
    assert store.whitelist_accepted(VIN)
    store.next_counter(VIN)
    saved = json.loads(store.state_path.read_text())
    assert saved["format"] == 2 and saved["vehicles"][VIN]["whitelisted"] is True
    assert stat.S_IMODE(store.state_path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "shares", ['"x"', '{"issued": "x"}', '{"imported": [{"share": 1}]}', '{"issued": [3]}']
)
def test_bad_share_records_are_reported_as_corruption(
    store: KeyStore, card: VehicleCard, shares: str
) -> None:
    entry = f'{{"card": "{card.to_text()}", "counter": 0, "shares": {shares}}}'
    store.state_path.write_text(f'{{"format": 2, "vehicles": {{"{VIN}": {entry}}}}}')
    with pytest.raises(KeyStoreError, match="corrupt"):
        store.vehicle(VIN)


def test_issued_and_imported_shares_persist(store: KeyStore, card: VehicleCard) -> None:
    store.add_vehicle(card)
    friend = crypto.generate_private_key()
    share = issue_share(
        store.private_key,
        vehicle_id=card.vehicle_id,
        holder_key=friend.public_key(),
        role=Role.DRIVER,
        not_before=1_000,
        not_after=2**40,
    )
    book = ShareBook(KeyStore(store.home))
    book.record_issued(VIN, share)
    held = ShareBook(KeyStore(store.home)).issued(VIN)
    assert [h.share for h in held] == [share] and held[0].state(2_000) == "valid"
    found = book.find_issued(VIN, share.share_id.hex()[:6])
    book.mark_revoked(VIN, found.share.share_id)
    assert book.issued(VIN)[0].state(2_000) == "revoked"


def test_expired_records_are_pruned_when_written(store: KeyStore, card: VehicleCard) -> None:
    store.add_vehicle(card)
    now = [10_000_000.0]
    book = ShareBook(store, clock=lambda: now[0])
    holder = crypto.generate_private_key().public_key()

    def share(not_after: int) -> object:
        made = issue_share(
            store.private_key,
            vehicle_id=card.vehicle_id,
            holder_key=holder,
            role=Role.GUEST,
            not_before=0,
            not_after=not_after,
        )
        book.record_issued(VIN, made)
        return made

    long_gone = share(1_000)
    recent = share(int(now[0]) - 60)
    held = [h.share for h in book.issued(VIN)]
    assert recent in held and long_gone not in held
