"""`phonekey doctor`: check this machine's set-up and say what to fix.

Python and package versions, which transports can open here, dongle
permissions, whether bluetoothd holds an adapter, and whether the phone can
use the OS adapter through bleak. Never needs root. The checks live in
`phonekey.doctor_checks`, the probes of the machine in `phonekey.doctor_env`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .doctor_checks import Check
    from .doctor_env import Environment

EXIT_OK = 0
EXIT_FAILED = 1

DOCTOR_EXIT_CODES = """exit codes:
  0  nothing failed (warnings allowed: e.g. no Bluetooth hardware, use the virtual radio)
  1  a check failed: Python or a package missing or too old, or a --transport did not open
  2  usage error
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check Python, packages, dongles, permissions and bluetoothd; say what to fix",
        description="Check this machine's set-up for phonekey: Python and package versions, "
        "which transports can open here (virtual, usb, serial, hci-socket, the OS adapter "
        "through bleak), dongle permissions and bluetoothd. Never needs root.",
        epilog=DOCTOR_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--transport",
        metavar="SPEC",
        action="append",
        default=[],
        help="also open this transport and power its controller on (repeatable), "
        "e.g. usb:0, serial:/dev/ttyACM0,1000000, hci-socket:0",
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=5.0,
        metavar="S",
        help="seconds to open each --transport and power it on (default 5)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list devices and ports")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.set_defaults(handler=_handle)


def _positive(text: str) -> float:
    from .cli_args import number_in_range

    return number_in_range(float, lambda v: 0 < v <= 600, "must be within 0..600 s")(text)


def _handle(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.CRITICAL,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return run_doctor(
            specs=list(args.transport),
            as_json=args.json,
            verbose=args.verbose or args.debug,
            timeout=args.timeout,
        )
    except BrokenPipeError:  # piped into `head`: stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as error:  # the doctor itself broke: say so in one line
        if args.debug:
            traceback.print_exc()
        print(f"phonekey doctor: error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED


def run_doctor(
    *,
    specs: list[str] | None = None,
    as_json: bool = False,
    verbose: bool = False,
    timeout: float = 5.0,
    env: Environment | None = None,
    out: TextIO | None = None,
) -> int:
    """Run every check, print the report, return the exit code."""
    from .doctor_checks import run_checks, verdict
    from .doctor_env import Environment

    stream = out if out is not None else sys.stdout
    checks, found = run_checks(env or Environment(), specs or [], timeout)
    code = EXIT_FAILED if any(check.status == "fail" for check in checks) else EXIT_OK
    summary = verdict(checks, found)
    if as_json:
        report: dict[str, Any] = {
            "ok": code == EXIT_OK,
            "exit_code": code,
            "verdict": summary,
            "checks": [check.as_json() for check in checks],
        }
        print(json.dumps(report, indent=2), file=stream)
    else:
        print(render(checks, summary, verbose=verbose), file=stream)
    return code


def render(checks: list[Check], summary: str, *, verbose: bool = False) -> str:
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.status:<4}  {check.name:<{width}}  {check.summary}")
        pad = " " * (width + 8)
        if check.fix:
            label = "fix" if check.status != "ok" else "hint"
            lines.append(f"{pad}{label}: {check.fix}")
        if verbose:
            lines += [f"{pad}- {detail}" for detail in check.details]
    lines.append(f"verdict: {summary}")
    return "\n".join(lines)
