"""Entry point of the `phonekey` console script.

Each package owns its subcommands and registers them here; this module only
dispatches. Imports are lazy so `phonekey --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module that provides `register(subparsers)`
_SUBCOMMANDS: dict[str, str] = {
    "demo": "phonekey.demo",
    "vehicle": "vehicle_sim.cli",
    "phone": "phone_client.cli",
    "radio": "ble_stack.radio_cli",
    "cloud": "cloud_sim.cli",
    "bench": "bench.cli",
}

EXIT_CODES_HELP = """exit codes:
  0  success
  1  the operation was denied or failed (a one-line reason is printed)
  2  usage error
  3  timed out or vehicle not found
  4  local state or configuration error
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phonekey",
        description="Offline-first Bluetooth LE phone-as-key simulator.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _SUBCOMMANDS.values():
        module = importlib.import_module(module_name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
