"""Entry point of the `phonekey` console script.

Each package owns its subcommands and registers them here; this module only
dispatches. Imports are lazy so `phonekey --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

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

_EXIT_CODE_TEXT: dict[int, str] = {
    0: "success",
    1: "the operation was denied or failed (a one-line reason is printed)",
    2: "usage error",
    3: "timed out, or the vehicle or the cloud was not found",
    4: "local state or configuration error (e.g. a transport or a capture file "
    "that cannot be opened)",
    5: "`vehicle log`: the event log's MAC chain does not verify (tampered)",
}
# Which codes each command can return; subcommands inherit their command's list.
_EXIT_CODES_OF: dict[str, tuple[int, ...]] = {
    "phonekey": (0, 1, 2, 3, 4, 5),
    "demo": (0, 1, 2, 4),
    "vehicle": (0, 1, 2, 4, 5),
    "vehicle *": (0, 1, 2, 4),
    "vehicle log": (0, 1, 2, 4, 5),
    "phone": (0, 1, 2, 3, 4),
    "radio": (0, 1, 2),
    "cloud": (0, 1, 2, 3, 4),
    "bench": (0, 1, 2),
}
_CODE_TEXT_OF: dict[str, dict[int, str]] = {
    "demo": {1: "a step did not have its expected outcome, or the demo failed"},
    "phone": {3: "timed out, or the vehicle was not found"},
    "cloud": {3: "the cloud did not answer (unreachable or timed out)"},
}


def exit_codes_help(path: str = "phonekey") -> str:
    """The `exit codes:` epilog for the command `path` (e.g. "phone unlock")."""
    words = path.split()
    codes = (
        _EXIT_CODES_OF.get(path)
        or (_EXIT_CODES_OF.get(f"{words[0]} *") if len(words) > 1 else None)
        or _EXIT_CODES_OF.get(words[0])
        or _EXIT_CODES_OF["phonekey"]
    )
    texts = _CODE_TEXT_OF.get(words[0], {})
    lines = [f"  {code}  {texts.get(code, _EXIT_CODE_TEXT[code])}" for code in codes]
    return "exit codes:\n" + "\n".join(lines) + "\n"


EXIT_CODES_HELP = exit_codes_help()


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps text as argparse does, except text with its own line breaks (exit codes)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _document_exit_codes(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give every subcommand without an epilog of its own its exit codes in its --help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                child_path = f"{path} {name}".strip()
                if child.epilog is None:
                    child.epilog = exit_codes_help(child_path)
                    if child.formatter_class is argparse.HelpFormatter:
                        child.formatter_class = _HelpFormatter
                _document_exit_codes(child, child_path)


class _Parser(argparse.ArgumentParser):
    """The parser of every (sub)command (subparsers take their parent's class).

    A usage error (exit 2) of a command line with ``--json`` also prints one
    JSON object on stdout, ``{"ok": false, "command": NAME, "error": {"code":
    2, "reason": MESSAGE}}``, so a script that asked for JSON always gets
    some; the usage and message still go to stderr as without it."""

    json_requested = False  # set by main() for the command line being parsed
    command_words: tuple[str, ...] = ()  # its words before the first option

    def error(self, message: str) -> NoReturn:
        if _Parser.json_requested:
            # The top-level parser reports leftovers ("unrecognized arguments")
            # for any subcommand: name the subcommand the words named.
            words = self.prog.split()[1:] or list(_Parser.command_words) or ["phonekey"]
            failure = {
                "ok": False,
                "command": words[-1],
                "error": {"code": 2, "reason": message},
            }
            print(json.dumps(failure, sort_keys=True), flush=True)
        super().error(message)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` just that subcommand: importing
    every package (bumble, aiohttp, the demo's and the bench's rigs) costs about
    a second, which a `phonekey vehicle show` need not pay."""
    parser = _Parser(
        prog="phonekey",
        description="Offline-first Bluetooth LE phone-as-key simulator.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in _SUBCOMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module_name).register(subparsers)
    _document_exit_codes(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    first = words[0] if words else None
    parser = build_parser(only=first if first in _SUBCOMMANDS else None)
    first_option = next((i for i, word in enumerate(words) if word.startswith("-")), len(words))
    _Parser.json_requested = "--json" in words
    _Parser.command_words = tuple(words[:first_option])
    try:
        args = parser.parse_args(argv)
    finally:  # this command line's, not the next one's (tests call main repeatedly)
        _Parser.json_requested, _Parser.command_words = False, ()
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
