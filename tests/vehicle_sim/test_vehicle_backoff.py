"""Failed-authentication backoff as pure logic with a clock the test moves:
per-connection exponential delays and drop, a global level that rises and
decays, a checkpoint written only on level changes and restored after a
power cut."""

from __future__ import annotations

import asyncio
import math

import pytest
from firmware_testkit import command, firmware_vehicle, try_connect, until
from vehicle_testkit import STEP_TIMEOUT, BlePhone, PhoneFactory

from ble_stack.virtual_link import VirtualRadio
from protocol import ChallengeReceived, Command, LockState, VehicleRejected
from protocol.types import ResultCode
from vehicle_sim.backoff import Backoff, BackoffPolicy, counts_as_failure, level_of
from vehicle_sim.firmware_store import LogKind
from vehicle_sim.state_store import FileVehicleStore, open_store


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_per_connection_delay_doubles_and_the_connection_is_dropped_after_n() -> None:
    policy = BackoffPolicy(conn_base=0.5, conn_max=8.0, drop_after=4, global_unit=0.0)
    backoff = Backoff(Clock(), policy=policy)
    conn = backoff.connection()
    verdicts = [backoff.record_failure(conn) for _ in range(4)]
    assert [v.delay for v in verdicts] == [0.5, 1.0, 2.0, 4.0]
    assert [v.drop for v in verdicts] == [False, False, False, True]
    # Another connection starts from the bottom of its own ladder.
    assert backoff.record_failure(backoff.connection()).delay == 0.5


def test_per_connection_delay_is_capped() -> None:
    policy = BackoffPolicy(conn_base=1.0, conn_max=3.0, drop_after=100, global_unit=0.0)
    backoff = Backoff(Clock(), policy=policy)
    conn = backoff.connection()
    delays = [backoff.record_failure(conn).delay for _ in range(10)]
    assert max(delays) == 3.0


def test_global_level_rises_with_failures_everywhere_and_delays_fresh_connections() -> None:
    policy = BackoffPolicy(conn_base=0.0, global_unit=0.1, global_max=100.0)
    backoff = Backoff(Clock(), policy=policy)
    for _ in range(31):  # one failure per connection: a reconnecting attacker
        backoff.record_failure(backoff.connection())
    assert backoff.level() == 5  # floor(log2(31 + 1))
    verdict = backoff.record_failure(backoff.connection())
    assert verdict.delay == pytest.approx(0.1 * (2**5 - 1))
    assert not verdict.drop


def test_global_level_decays_with_time() -> None:
    clock = Clock()
    backoff = Backoff(clock, policy=BackoffPolicy(half_life=60.0))
    for _ in range(63):
        backoff.record_failure(backoff.connection())
    assert backoff.level() == 6
    clock.now += 60.0  # one half-life: score 63 -> 31.5
    assert backoff.level() == 5
    clock.now += 600.0
    assert backoff.level() == 0
    assert backoff.global_delay() == 0.0


def test_a_flood_costs_logarithmically_many_checkpoints() -> None:
    saved: list[int] = []
    backoff = Backoff(Clock(), save_level=saved.append)
    for _ in range(10_000):
        backoff.record_failure(backoff.connection())
    assert saved == list(range(1, level_of(10_000) + 1))
    assert len(saved) <= math.log2(10_000) + 1


def test_decay_writes_each_level_once_on_the_way_down() -> None:
    clock = Clock()
    saved: list[int] = []
    backoff = Backoff(clock, save_level=saved.append)
    for _ in range(100):
        backoff.record_failure(backoff.connection())
    saved.clear()
    for _ in range(200):
        clock.now += 10.0
        backoff.level()
    assert saved == sorted(set(saved), reverse=True) and saved[-1] == 0


def test_restart_restores_the_level_not_zero() -> None:
    clock = Clock()
    saved: list[int] = []
    before = Backoff(clock, save_level=saved.append)
    for _ in range(40):
        before.record_failure(before.connection())
    level = saved[-1]
    assert level == before.level() == 5

    # Power cut: a new firmware instance starts from the checkpoint.
    after = Backoff(clock, level=level, save_level=saved.append)
    assert after.level() == level
    assert after.global_delay() == before.global_delay()
    assert after.score == 2**level - 1  # at most a factor 2 below the real score


def test_failing_checkpoint_is_retried_on_the_next_change_and_backoff_still_applies() -> None:
    attempts: list[int] = []

    def broken(level: int) -> None:
        attempts.append(level)
        raise OSError("flash worn out")

    backoff = Backoff(Clock(), policy=BackoffPolicy(conn_base=0.0), save_level=broken)
    backoff.record_failure(backoff.connection())
    assert backoff.checkpoint_error == "OSError: flash worn out"
    assert backoff.level() == 1  # the in-RAM level moved anyway
    assert attempts == [1, 1]  # and the checkpoint was retried
    assert backoff.record_failure(backoff.connection()).delay > 0


def test_which_refusals_count() -> None:
    assert counts_as_failure(ResultCode.BAD_SIGNATURE)
    assert counts_as_failure(ResultCode.UNKNOWN_KEY)
    assert counts_as_failure(ResultCode.MALFORMED)
    assert not counts_as_failure(ResultCode.INTERNAL)
    assert not counts_as_failure(ResultCode.BUSY)


def test_policy_is_checked() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(drop_after=0)
    with pytest.raises(ValueError):
        BackoffPolicy(half_life=0)


# --- on the virtual radio ---------------------------------------------------------------
async def _refused(phone: BlePhone, address: object, cmd: Command = Command.UNLOCK) -> None:
    """Connect, send ``cmd`` (refused), and return without waiting for the answer."""
    assert await try_connect(phone, address)
    assert isinstance(await phone.next_event(), ChallengeReceived)
    await phone.send(cmd)


async def test_a_stranger_claiming_the_owner_key_id_never_delays_or_locks_out_the_owner(
    radio: VirtualRadio, store: FileVehicleStore, make_phone: PhoneFactory
) -> None:
    owner = await make_phone("owner")
    impostors = [await make_phone(f"impostor{i}", role=None) for i in range(3)]
    # The failure replies are held until the end of the test: if the owner's
    # answer had to wait behind them (or behind the backoff), it never came.
    async with firmware_vehicle(radio, store, hold=True) as fw:
        address = fw.runtime.device.random_address
        for impostor in impostors:
            assert await try_connect(impostor, address)
            assert isinstance(await impostor.next_event(), ChallengeReceived)
            assert impostor.protocol is not None
            impostor.protocol._key_id = owner.key_id  # claims the owner's key id
            impostor.counter = 1000  # passes the counter check: the signature is what fails
            await impostor.send(Command.UNLOCK)
        await until(lambda: len(fw.sleep.delays) == 3)  # three bad signatures, held back
        assert fw.runtime.backoff.level() >= 1

        fw.clock.now += 5  # the held impostors are evictable now
        assert await try_connect(owner, address)
        assert isinstance(await owner.next_event(), ChallengeReceived)
        done = await command(owner, Command.UNLOCK)
        assert (done.result, done.lock_state) == (ResultCode.OK, LockState.UNLOCKED)
        assert len(fw.sleep.delays) == 3  # the owner's answer was not delayed
        assert (await command(owner, Command.LOCK)).counter == 2

        fw.sleep.release()
        for impostor in impostors[1:]:  # (the first was evicted for the owner)
            refusal = await impostor.next_event()
            assert isinstance(refusal, VehicleRejected)
            assert refusal.code is ResultCode.BAD_SIGNATURE
        await until(lambda: len(fw.seen) == 5)  # 2 commands and 3 refusals reported
        fw.runtime.store.flush_log()  # identical denials are aggregated in RAM
        log = fw.runtime.store.read_log().entries
        denials = [e for e in log if e.kind is LogKind.DENIED]
        assert {(e.key_id, e.reason) for e in denials} == {(owner.key_id, ResultCode.BAD_SIGNATURE)}


async def test_backoff_level_survives_a_restart_without_a_write_per_failure(
    radio: VirtualRadio,
    store: FileVehicleStore,
    make_phone: PhoneFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checkpoints: list[int] = []
    save_level = store.save_backoff_level

    def counting_save(level: int) -> None:
        checkpoints.append(level)
        save_level(level)

    monkeypatch.setattr(store, "save_backoff_level", counting_save)
    stranger = await make_phone("stranger", role=None)
    failures = 12
    async with firmware_vehicle(radio, store) as fw:
        for _ in range(failures):
            await _refused(stranger, fw.runtime.device.random_address)
            assert isinstance(await stranger.next_event(), VehicleRejected)
            async with asyncio.timeout(STEP_TIMEOUT):
                await stranger.disconnected.wait()
        level = fw.runtime.backoff.level()
        assert fw.runtime.backoff.failures == failures
    assert level == 3  # floor(log2(12 + 1))
    assert checkpoints == [1, 2, 3]  # one flash write per level, not one per failure

    # Power cut and reboot: the image is mounted afresh and the firmware starts
    # at the saved level.
    store.close()
    with open_store(store.state_dir) as remounted:
        assert remounted.backoff_level() == level
        async with firmware_vehicle(radio, remounted) as rebooted:
            assert rebooted.runtime.backoff.level() == level
            assert rebooted.runtime.backoff.global_delay() > 0
