"""`phonekey phone add-vehicle --cloud/--issuer`, `refresh` and `credentials`
through the real dispatcher, against a real cloud on a loopback port.

The CLI runs its own event loop, so each call runs in a worker thread while
the cloud serves from the test's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from phone_cloud_testkit import VIN, Registered, register

from ble_stack.radio_hub import RadioHub
from ble_stack.virtual_link import VirtualRadio
from cloud_sim.server import RunningCloud
from phone_client import CredentialCache, KeyStore
from phonekey.cli import main
from protocol import crypto
from vehicle_sim.runtime import VehicleRuntime
from vehicle_sim.state_store import init_vehicle, open_store


def new_key_text() -> str:
    return crypto.public_key_to_text(crypto.generate_private_key().public_key())


def new_card_text() -> str:
    return f"phonekey-card:1:{VIN}:{new_key_text()}"


async def phonekey(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


@pytest.fixture
async def home(tmp_path: Path) -> Path:
    home = tmp_path / "phone"
    assert await phonekey("phone", "--home", str(home), "keygen") == 0
    return home


async def test_add_vehicle_pins_the_issuer_given(
    home: Path, cloud: RunningCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    owned = await register(cloud)
    capsys.readouterr()
    issuer = crypto.generate_private_key().public_key()
    args = ["--issuer", crypto.public_key_to_text(issuer), "--cloud", cloud.url + "/"]
    assert (
        await phonekey("phone", "--home", str(home), "add-vehicle", owned.card.to_text(), *args)
        == 0
    )
    out = capsys.readouterr().out
    assert f"issuer {crypto.key_id(issuer).hex()}" in out and "trust on first use" not in out
    trust = KeyStore(home).vehicle_trust(VIN)
    assert trust.issuer == issuer and trust.cloud_url == cloud.url  # trailing slash dropped
    # Adding the card again keeps what was pinned.
    assert await phonekey("phone", "--home", str(home), "add-vehicle", owned.card.to_text()) == 0
    assert KeyStore(home).vehicle_trust(VIN).issuer == issuer


async def test_add_vehicle_with_only_a_cloud_pins_its_key_on_first_use(
    home: Path, cloud: RunningCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    owned = await register(cloud)
    capsys.readouterr()
    card = owned.card.to_text()
    assert (
        await phonekey("phone", "--home", str(home), "add-vehicle", card, "--cloud", cloud.url) == 0
    )
    out = capsys.readouterr().out
    assert "trust on first use" in out
    assert KeyStore(home).vehicle_trust(VIN).issuer == cloud.issuer_public_key


async def test_add_vehicle_with_an_unreachable_cloud_fails_cleanly(
    home: Path, cloud: RunningCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    owned = await register(cloud)
    cloud.set_fault("http-500")
    capsys.readouterr()
    code = await phonekey(
        "phone", "--home", str(home), "add-vehicle", owned.card.to_text(), "--cloud", cloud.url
    )
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == "failed: cloud unreachable (HTTP 500)"
    with pytest.raises(Exception, match="holds no key"):
        KeyStore(home).vehicle(VIN)  # nothing half-stored


async def test_refresh_fetches_and_credentials_lists(
    home: Path, cloud: RunningCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    owned = await register(cloud)
    h = ["phone", "--home", str(home)]
    assert await phonekey(*h, "add-vehicle", owned.card.to_text(), "--cloud", cloud.url) == 0
    assert await phonekey(*h, "credentials") == 0
    assert f"{VIN}: no credential cached" in capsys.readouterr().out

    await owned.enroll(KeyStore(home).public_key())
    assert await phonekey(*h, "refresh", "--vin", VIN) == 0
    out = capsys.readouterr().out
    assert f"{VIN}: fetched driver credential #1, valid until" in out
    assert "revocation list version 0" in out
    assert CredentialCache(KeyStore(home)).status(VIN, 0).credential is not None

    assert await phonekey(*h, "credentials") == 0
    listing = capsys.readouterr().out
    assert f"{VIN}: driver credential #1 valid until" in listing and " d left)" in listing
    assert f"cloud {cloud.url}" in listing
    assert "whitelist" not in listing

    KeyStore(home).set_whitelist_accepted(VIN, True)  # as after a whitelisted unlock
    assert await phonekey(*h, "credentials") == 0
    assert "on the vehicle's whitelist (connects without waiting" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mode", "code", "line"),
    [
        ("http-500", 1, "failed: cloud unreachable (HTTP 500)"),
        ("blackhole", 3, "failed: cloud unreachable (no answer within 0.3 s)"),
        ("bad-signature", 1, "failed: cloud answer refused (bad signature on the credential)"),
    ],
)
async def test_refresh_reports_cloud_failures_in_one_line(
    home: Path,
    cloud: RunningCloud,
    capsys: pytest.CaptureFixture[str],
    mode: str,
    code: int,
    line: str,
) -> None:
    owned = await register(cloud)
    h = ["phone", "--home", str(home)]
    assert await phonekey(*h, "add-vehicle", owned.card.to_text(), "--cloud", cloud.url) == 0
    await owned.enroll(KeyStore(home).public_key())
    cloud.set_fault(mode)
    capsys.readouterr()
    assert await phonekey(*h, "refresh", "--vin", VIN, "--cloud-timeout", "0.3") == code
    assert capsys.readouterr().err.strip() == line
    assert CredentialCache(KeyStore(home)).status(VIN, 0).credential is None


async def test_refresh_of_a_phone_the_cloud_does_not_know(
    home: Path, cloud: RunningCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    owned = await register(cloud)
    h = ["phone", "--home", str(home)]
    assert await phonekey(*h, "add-vehicle", owned.card.to_text(), "--cloud", cloud.url) == 0
    capsys.readouterr()
    assert await phonekey(*h, "refresh", "--vin", VIN) == 1
    err = capsys.readouterr().err
    assert err.startswith("failed: cloud refused: HTTP 403:") and "not enrolled" in err


async def test_refresh_without_a_cloud_is_a_local_error(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = new_card_text()
    h = ["phone", "--home", str(home)]
    issuer = new_key_text()
    assert await phonekey(*h, "add-vehicle", card, "--issuer", issuer) == 0
    capsys.readouterr()
    assert await phonekey(*h, "refresh", "--vin", VIN) == 4
    assert "--cloud URL" in capsys.readouterr().err


def test_bad_issuer_and_url_are_usage_errors(tmp_path: Path) -> None:
    card = new_card_text()
    for extra in (["--issuer", "p256:00"], ["--cloud", "ftp://x"], ["--cloud", "http://"]):
        with pytest.raises(SystemExit) as info:
            main(["phone", "--home", str(tmp_path), "add-vehicle", card, *extra])
        assert info.value.code == 2


def test_credentials_reports_a_corrupt_cache_without_failing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = ["phone", "--home", str(tmp_path)]
    assert main([*h, "keygen"]) == 0
    card = new_card_text()
    issuer = new_key_text()
    assert main([*h, "add-vehicle", card, "--issuer", issuer]) == 0
    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / f"{VIN}.json").write_text("{ torn")
    capsys.readouterr()
    assert main([*h, "credentials"]) == 0
    out = capsys.readouterr().out
    assert f"{VIN}: cache file corrupt, ignored ({VIN}.json: not JSON)" in out


# --- unlock through the CLI, on a radio hub the CLI process reaches over TCP -------------
@pytest.fixture
async def car(
    cloud: RunningCloud, tmp_path: Path
) -> AsyncIterator[tuple[Registered, Iterator[str]]]:
    """A running vehicle trusting the cloud's issuer, and transport specs through
    which phone CLIs reach the same virtual radio (a fresh one per CLI run: a
    hub slot serves one host at a time)."""
    radio = VirtualRadio()
    hub = RadioHub(["tcp-server:127.0.0.1:0"] * 6, radio=radio)
    specs = iter(await hub.start())
    card = init_vehicle(tmp_path / "vehicle", VIN, issuers=[cloud.issuer_public_key])
    owned = await register(cloud, card)
    store = open_store(tmp_path / "vehicle")
    device = await radio.create_device("vehicle")
    runtime = VehicleRuntime(store, device)
    await runtime.start()
    try:
        yield owned, specs
    finally:
        await runtime.stop()
        await device.power_off()
        store.close()
        await hub.close()


async def test_cli_unlock_reports_how_it_got_in(
    home: Path,
    cloud: RunningCloud,
    car: tuple[Registered, Iterator[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    owned, specs = car
    h = ["phone", "--home", str(home)]
    assert await phonekey(*h, "add-vehicle", owned.card.to_text(), "--cloud", cloud.url) == 0
    await owned.enroll(KeyStore(home).public_key())
    capsys.readouterr()

    def unlock(*extra: str) -> list[str]:
        return [*h, "unlock", "--vin", VIN, "--transport", next(specs), *extra]

    assert await phonekey(*unlock("--cloud-timeout", "1")) == 0
    result, message = capsys.readouterr().out.strip().splitlines()
    assert result.startswith(f"unlocked {VIN} (")
    assert message.startswith("unlocked with a credential fetched from the cloud, valid until ")

    cloud.set_fault("blackhole")
    assert await phonekey(*unlock("--cloud-timeout", "1")) == 0  # not an error
    result, message = capsys.readouterr().out.strip().splitlines()
    assert result.startswith(f"unlocked {VIN} (")
    assert message.startswith(
        "cloud unreachable (no answer within 1 s); unlocked with cached credential valid until "
    )

    cloud.set_fault("http-500")  # with the earlier failures, the breaker opens
    assert await phonekey(*unlock()) == 0
    capsys.readouterr()
    assert await phonekey(*unlock()) == 0
    result, message = capsys.readouterr().out.strip().splitlines()
    assert message.startswith("cloud skipped (") and "next try in" in message

    assert await phonekey(*unlock("--no-cloud")) == 0
    result, message = capsys.readouterr().out.strip().splitlines()
    assert message.startswith("unlocked with cached credential valid until ")


async def test_cli_unlock_denied_gives_both_reasons(
    home: Path,
    cloud: RunningCloud,
    car: tuple[Registered, Iterator[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    owned, specs = car
    h = ["phone", "--home", str(home)]
    assert await phonekey(*h, "add-vehicle", owned.card.to_text(), "--cloud", cloud.url) == 0
    cloud.set_fault("http-500")
    capsys.readouterr()
    code = await phonekey(*h, "unlock", "--vin", VIN, "--transport", next(specs))
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.strip() == (
        "denied: no credential is cached and the cloud is unreachable (HTTP 500); "
        "this phone's key is not on the vehicle's whitelist: "
        "use an owner's phone to share a key, or the keycard"
    )
