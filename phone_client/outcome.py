"""What one command to a vehicle returned, and what it cost (``run_command``)."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import Command, LockState, ResultCode


@dataclass(frozen=True)
class Latency:
    """Where the time of one command went, in seconds (None: stage skipped)."""

    scan: float | None
    connect: float | None
    challenge: float | None  # subscribe until the first challenge
    command: float  # request written until the authenticated response
    total: float  # start of the scan until the response
    cloud_wait: float | None = None  # waited for the cloud after the scan (nothing cached)


@dataclass(frozen=True)
class CommandOutcome:
    """The authenticated answer to one command, and what it cost."""

    vin: str
    command: Command
    result: ResultCode  # OK, or FORBIDDEN: this key's role does not permit it
    lock_state: LockState  # as the vehicle reported under its MAC
    counter: int
    key_id: bytes  # this phone's key id
    att_mtu: int
    frames_written: int
    latency: Latency
    credential: str | None = None  # "whitelist", "cloud" (fetched now), "cache" or "share"
    cloud: str = "none"  # the cloud as observed: "none", "up", "http-500", "blackhole", ...
    message: str = ""  # how the answer was obtained, for people
    credential_not_after: int | None = None  # end of the presented credential's window
    fast_path: bool = False  # answered on the fast path: no public-key operation on the vehicle
    fast_path_refused: str | None = None  # why the vehicle refused the fast attempt (fell back)

    @property
    def ok(self) -> bool:
        return self.result is ResultCode.OK
