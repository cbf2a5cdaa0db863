"""`phonekey radio`: host a virtual radio that several processes share.

    $ phonekey radio --listen tcp-server:127.0.0.1:0 --listen tcp-server:127.0.0.1:0
    host 1: --transport tcp-client:127.0.0.1:40001
    host 2: --transport tcp-client:127.0.0.1:40002
    radio ready

Each printed spec is for one process (vehicle, phone, ...). Runs until
SIGINT or SIGTERM, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ble_stack.errors import BleStackError

EXIT_OK = 0
EXIT_FAILED = 1


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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(serve(args.listen))
    except BleStackError as error:
        print(f"phonekey radio: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def serve(
    listen_specs: list[str], out: TextIO | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run a RadioHub until `stop` is set, or SIGINT/SIGTERM when it is None."""
    from ble_stack.radio_hub import RadioHub  # keeps `phonekey --help` free of bumble

    out = out or sys.stdout
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    hub = RadioHub(listen_specs)
    try:
        for number, spec in enumerate(await hub.start(), start=1):
            print(f"host {number}: --transport {spec}", file=out)
        print("radio ready", file=out, flush=True)
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
