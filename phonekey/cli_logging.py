"""`-v` / `--debug`, the same on every phonekey command that has them.

    -v, --verbose   INFO logs on stderr: what the stack and the firmware decide
    --debug         DEBUG logs on stderr (bumble's HCI chatter too), and a
                    traceback before the one-line error when something fails

Without either, only warnings and errors are logged; the output a command
prints for people or scripts does not change.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def add_logging_flags(parser: argparse.ArgumentParser, default: Any = False) -> None:
    """Add -v/--verbose and --debug. `default=argparse.SUPPRESS` on a subcommand
    keeps what the parent parser's own copy of the flags set."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="show INFO logs on stderr",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show DEBUG logs (BLE stack included) on stderr, and tracebacks on errors",
    )


def log_level(args: argparse.Namespace) -> int:
    if getattr(args, "debug", False):
        return logging.DEBUG
    if getattr(args, "verbose", False):
        return logging.INFO
    return logging.WARNING


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (tests swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(args: argparse.Namespace) -> None:
    """Send logs at the level -v/--debug ask for to stderr; without them,
    leave logging as it is (warnings and errors reach stderr anyway).

    bumble logs at INFO what a user of -v does not need (every HCI command's
    name), so it stays at WARNING unless --debug is given.
    """
    level = log_level(args)
    if level >= logging.WARNING:
        return
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    bumble_level = logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    logging.getLogger("bumble").setLevel(bumble_level)


@contextlib.contextmanager
def logging_configured(args: argparse.Namespace) -> Iterator[None]:
    """`configure_logging` for the duration of one command, then put logging
    back as it was (in-process callers, such as tests, run many commands)."""
    root, bumble = logging.getLogger(), logging.getLogger("bumble")
    handlers, root_level, bumble_level = list(root.handlers), root.level, bumble.level
    configure_logging(args)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        bumble.setLevel(bumble_level)
