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
    "doctor": "phonekey.doctor",
}

EXIT_CODES_HELP = """exit codes:
  0  success
  1  the operation was denied or failed (a one-line reason is printed)
  2  usage error
  3  timed out or vehicle not found
  4  local state or configuration error (e.g. a transport that cannot be opened)
  5  `vehicle log`: the event log's MAC chain does not verify (tampered)
"""


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps text as argparse does, except text with its own line breaks (exit codes)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _document_exit_codes(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without an epilog of its own the exit codes in its --help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if child.epilog is None:
                    child.epilog = EXIT_CODES_HELP
                    if child.formatter_class is argparse.HelpFormatter:
                        child.formatter_class = _HelpFormatter
                _document_exit_codes(child)


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
    _document_exit_codes(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
