"""`phonekey radio`: host a virtual radio that several processes share.

    $ phonekey radio --listen tcp-server:127.0.0.1:0 --listen tcp-server:127.0.0.1:0
    host 1: --transport tcp-client:127.0.0.1:40001
    host 2: --transport tcp-client:127.0.0.1:40002
    links of a host that goes away drop after 4 s (supervision timeout)
    radio ready
    host 1: attached
    host 2: attached
    host 2: connected to host 1 (as central)
    host 1: gone; its 1 link(s) drop in 4 s (supervision timeout); slot ready for a new host
    host 2: link to host 1 down (connection timeout, 0x08)

Each printed spec is for one process (vehicle, phone, ...): give it as that
process's --transport. After `radio ready`, one line per host attaching or
leaving and per link coming up or going down. Runs until SIGINT or SIGTERM,
then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, TextIO

from ble_stack.errors import BleStackError
from phonekey.cli_logging import add_logging_flags, logging_configured

EXIT_OK = 0
EXIT_FAILED = 1
DEFAULT_SUPERVISION_TIMEOUT = 4.0  # ble_stack.radio_hub's, without importing bumble


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "radio",
        help="host a virtual BLE radio shared by other phonekey processes",
        description=(
            "Host one virtual Bluetooth controller per --listen spec, all on one "
            "simulated radio link. Each app process attaches to one of them with "
            "the printed --transport spec."
        ),
    )
    parser.add_argument(
        "--listen",
        action="append",
        required=True,
        metavar="SPEC",
        help=(
            "tcp-server:HOST:PORT (PORT 0 picks a free port) or unix-server:PATH; "
            "repeat once per process that will attach"
        ),
    )
    parser.add_argument(
        "--supervision-timeout",
        type=_timeout_arg,
        default=DEFAULT_SUPERVISION_TIMEOUT,
        metavar="S",
        help=(
            "seconds after which the peers of a host that went away (process died, "
            f"socket closed) lose their links, 0.1-32 (default {DEFAULT_SUPERVISION_TIMEOUT:g})"
        ),
    )
    add_logging_flags(parser)
    parser.set_defaults(handler=run)


def _timeout_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.1 <= value <= 32.0:  # also refuses nan and inf
        raise argparse.ArgumentTypeError("must be within 0.1..32 s")
    return value


def run(args: argparse.Namespace) -> int:
    with logging_configured(args):
        try:
            asyncio.run(serve(args.listen, supervision_timeout=args.supervision_timeout))
        except BleStackError as error:
            if args.debug:
                traceback.print_exc()
            print(f"phonekey radio: {error}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


async def serve(
    listen_specs: list[str],
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
    *,
    supervision_timeout: float = DEFAULT_SUPERVISION_TIMEOUT,
) -> None:
    """Run a RadioHub until `stop` is set, or SIGINT/SIGTERM when it is None."""
    from ble_stack.radio_hub import RadioHub  # keeps `phonekey --help` free of bumble

    stream = out or sys.stdout
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)

    def say(line: str) -> None:
        print(line, file=stream, flush=True)  # flushed: people and tests read it live

    hub = RadioHub(listen_specs, supervision_timeout=supervision_timeout, on_event=say)
    try:
        for number, spec in enumerate(await hub.start(), start=1):
            print(f"host {number}: --transport {spec}", file=stream)
        print(
            f"links of a host that goes away drop after {supervision_timeout:g} s "
            "(supervision timeout)",
            file=stream,
        )
        print("radio ready", file=stream, flush=True)
        await stop.wait()
    finally:
        await hub.close()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ble_stack.radio_cli --listen ...`, same as `phonekey radio`."""
    parser = argparse.ArgumentParser(prog="phonekey")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["radio", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
