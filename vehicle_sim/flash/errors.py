"""The errors a vehicle's state raises (re-exported by ``vehicle_sim.state_store``)."""

from __future__ import annotations

from pathlib import Path


class VehicleStateError(Exception):
    """The vehicle's state is missing, corrupt, unreadable, unwritable or full.

    ``str()`` is one line that says what is wrong and what to do.
    """


class VehicleStateBusy(VehicleStateError):
    """Another process (a running vehicle) holds the state open for writing."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "another process"
        super().__init__(
            f"vehicle state {state_dir} is in use by a running vehicle ({holder}); stop it first"
        )
        self.pid = pid


class FlashTampered(VehicleStateError):
    """The flash image was modified by someone without the device key.

    A journal record or bank header is complete (its CRC holds) but fails its
    MAC, or the image went back to an older format or generation than the
    device's rollback counter has seen. The key module refuses to run on it.
    """


class FlashRolledBack(FlashTampered):
    """The flash image is older than the device's rollback counter allows.

    Every MAC holds, but the image is one this device has moved past: an older
    flash format or journal generation, a journal cut short of (or diverged
    from) the last record the counter marks, such as the record of a key
    removal, a revocation or a factory reset. The key module refuses to run on
    it, as for any tampering.
    """


class FastKeyTampered(FlashTampered):
    """A wrapped fast-path secret in the flash image fails its AES key wrap
    integrity check (flash format 3): it was not wrapped with this device's
    key. The key module refuses to run on the image, as for any tampering.
    """


class TooManyIssuers(VehicleStateError):
    """The vehicle already trusts as many issuer keys as it may hold."""


class StoreFull(VehicleStateError):
    """A change would hold more than the flash layout has room for."""


class StaleRevocations(ValueError):
    """A revocation version that does not move forward."""
