"""`phonekey phone share | import-share | shares | revoke-share`: offline shares.

    phonekey phone share --vin VIN --to p256:... --role guest --until 2025-06-30 > share.txt
    phonekey phone import-share share.txt          # on the friend's phone
    phonekey phone shares --vin VIN [--json]
    phonekey phone revoke-share --vin VIN --share-id 1a2b3c4d   # over BLE, owner

`share` prints exactly one line on stdout (the share text) so it can be
redirected to a file; what it did goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final, TypeVar

from protocol.shares import ALL_WEEKDAYS, MAX_UTC_OFFSET, MIN_UTC_OFFSET

from .cli import (
    DEFAULT_COMMAND_TIMEOUT,
    EXIT_OK,
    _add_radio,
    _key_arg,
    _keystore,
    _sub,
    _vin_arg,
    _with_radio,
)
from .errors import BadArgument

_OFFSET_RE: Final = re.compile(r"^(?:UTC)?([+-])(\d{1,2})(?::?(\d{2}))?$")
_DATE_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HOURS_RE: Final = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Values are checked by the handler (same parsers), so each mistake is one
    # line on stderr (exit 2) instead of argparse's usage text.
    p = _sub(commands, "share", "sign an offline share of a vehicle for a friend's key", _share)
    p.add_argument("--vin", required=True, help="the vehicle's VIN")
    p.add_argument("--to", required=True, metavar="PUBKEY", help="p256:<hex>")
    p.add_argument("--role", required=True, help="guest or driver")
    p.add_argument(
        "--until",
        required=True,
        metavar="DATE",
        help="last valid day (YYYY-MM-DD, to its end) "
        "or an ISO datetime (YYYY-MM-DDTHH:MM[+HH:MM])",
    )
    p.add_argument(
        "--from",
        dest="start",
        metavar="DATE",
        help="first valid day (YYYY-MM-DD, from its start) or an ISO datetime (default: now)",
    )
    p.add_argument("--days", default="all", help="e.g. mon-fri or mon,wed,sat (default: all)")
    p.add_argument("--hours", default="00:00-24:00", help="daily window, e.g. 08:00-18:00")
    p.add_argument(
        "--utc-offset",
        metavar="+HH:MM",
        help="the local time of dates and hours (default: this computer's current offset)",
    )

    p = _sub(commands, "import-share", "keep a share a vehicle owner sent", _import_share)
    p.add_argument("file", metavar="FILE", help="the share text file, or - for stdin")

    p = _sub(commands, "shares", "list the shares this phone issued and imported", _shares)
    p.add_argument("--vin", required=True, type=_vin_arg, help="the vehicle's VIN")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _sub(commands, "revoke-share", "revoke a share this phone issued (over BLE)", _revoke)
    p.add_argument("--vin", required=True, type=_vin_arg, help="the vehicle's VIN")
    p.add_argument(
        "--share-id", required=True, metavar="HEX", help="the share id (or a unique prefix)"
    )
    _add_radio(p, DEFAULT_COMMAND_TIMEOUT, mtu=True)


# --- argument types ------------------------------------------------------------------------
_T = TypeVar("_T")


def _checked(option: str, parse: Callable[[str], _T], text: str) -> _T:
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        raise BadArgument(f"{option}: {exc}") from None


def role_arg(text: str) -> Any:
    from protocol import Role

    name = text.strip().lower()
    if name == "owner":
        raise argparse.ArgumentTypeError("a share cannot grant the owner role (guest or driver)")
    if name not in ("guest", "driver"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a share role (guest or driver)")
    return Role.from_name(name)


def offset_arg(text: str) -> int:
    """``+01:00``, ``-0530``, ``+2``, ``UTC+01:00`` or ``Z`` -> minutes east of UTC."""
    text = text.strip()
    if text.upper() in ("Z", "UTC"):
        return 0
    match = _OFFSET_RE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UTC offset like +01:00 or -05:30")
    sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3) or 0)
    if minutes >= 60:
        raise argparse.ArgumentTypeError(f"{text!r}: minutes must be below 60")
    value = (hours * 60 + minutes) * (1 if sign == "+" else -1)
    if not MIN_UTC_OFFSET <= value <= MAX_UTC_OFFSET:
        raise argparse.ArgumentTypeError(f"{text!r} is outside -12:00..+14:00")
    return value


def date_arg(text: str) -> date | datetime:
    """A date (YYYY-MM-DD) or an ISO datetime (naive: in --utc-offset)."""
    text = text.strip()
    try:
        if _DATE_RE.match(text):
            return date.fromisoformat(text)
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (YYYY-MM-DD) or ISO datetime (YYYY-MM-DDTHH:MM[+HH:MM])"
        ) from None


def days_arg(text: str) -> int:
    """``mon-fri``, ``mon,wed,sat``, ``fri-mon`` (wraps), ``all`` -> weekday mask."""
    if text.strip().lower() in ("all", "daily"):
        return ALL_WEEKDAYS
    mask = 0
    for token in text.lower().split(","):
        first, dash, last = token.strip().partition("-")
        start = _day(first, token)
        end = _day(last, token) if dash else start
        day = start
        mask |= 1 << day
        while day != end:
            day = (day + 1) % 7
            mask |= 1 << day
    return mask


_DAY_NAMES: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(name: str, token: str) -> int:
    name = name.strip()
    for index, full in enumerate(_DAY_NAMES):
        if len(name) >= 3 and full.startswith(name):
            return index
    raise argparse.ArgumentTypeError(
        f"{token.strip()!r} is not a day or a range of days (mon..sun, e.g. mon-fri)"
    )


def hours_arg(text: str) -> tuple[int, int]:
    """``08:00-18:00`` (``22:00-02:00`` wraps past midnight, ``00:00-24:00`` all day)."""
    match = _HOURS_RE.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a daily window like 08:00-18:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if m1 >= 60 or m2 >= 60 or start >= 1440 or end > 1440:
        raise argparse.ArgumentTypeError(f"{text!r}: times run from 00:00 to 24:00")
    if start == end:
        raise argparse.ArgumentTypeError(f"{text!r} is an empty window (use 00:00-24:00)")
    return start, end or 1440  # "22:00-00:00" runs to midnight


def local_offset_minutes(now: float) -> int:
    offset = datetime.fromtimestamp(now).astimezone().utcoffset() or timedelta(0)
    return int(offset.total_seconds() // 60)


def to_unix(value: date | datetime, offset_minutes: int, *, end_of_day: bool) -> int:
    """Seconds since the epoch; a date is its first (or last) second in the offset."""
    tz = timezone(timedelta(minutes=offset_minutes))
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=tz)
        return int(moment.timestamp())
    moment = datetime(value.year, value.month, value.day, tzinfo=tz)
    if end_of_day:
        moment += timedelta(days=1, seconds=-1)
    return int(moment.timestamp())


# --- handlers ----------------------------------------------------------------------------
def _share(args: argparse.Namespace) -> int:
    from protocol import crypto
    from protocol.shares import issue_share

    from .share_book import ShareBook, share_text, window_text

    vin = _checked("--vin", _vin_arg, args.vin)
    holder = _checked("--to", _key_arg, args.to)
    role = _checked("--role", role_arg, args.role)
    until_value = _checked("--until", date_arg, args.until)
    start_value = None if args.start is None else _checked("--from", date_arg, args.start)
    weekdays = _checked("--days", days_arg, args.days)
    first, last = _checked("--hours", hours_arg, args.hours)
    offset = (
        None if args.utc_offset is None else _checked("--utc-offset", offset_arg, args.utc_offset)
    )
    store = _keystore(args)
    card = store.vehicle(vin)
    owner = store.private_key
    now = int(time.time())
    if offset is None:
        offset = local_offset_minutes(now)
    until = to_unix(until_value, offset, end_of_day=True)
    start = now if start_value is None else to_unix(start_value, offset, end_of_day=False)
    if until <= now:
        raise BadArgument("--until is in the past: the share would never be valid")
    if start > until:
        raise BadArgument("--from is after --until")
    if crypto.key_id(holder) == store.key_id():
        raise BadArgument("--to is this phone's own key")
    share = issue_share(
        owner,
        vehicle_id=card.vehicle_id,
        holder_key=holder,
        role=role,
        not_before=start,
        not_after=until,
        weekdays=weekdays,
        start_minute=first,
        end_minute=last,
        utc_offset_minutes=offset,
    )
    ShareBook(store).record_issued(card.vin, share)  # before anyone can hold it
    print(share_text(card, share, owner.public_key()), flush=True)
    print(
        f"shared {card.vin} with key {crypto.key_id(holder)[:4].hex()} as "
        f"{share.role.name.lower()}, {window_text(share)} (share id {share.share_id.hex()})",
        file=sys.stderr,
    )
    return EXIT_OK


def _import_share(args: argparse.Namespace) -> int:
    from .share_book import ShareBook, window_text

    if args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadArgument(f"cannot read {args.file}: {exc}") from None
    store = _keystore(args)
    _ = store.private_key  # the share must name this phone's key: it needs one
    card, share = ShareBook(store).import_text(text)
    print(
        f"imported share {share.share_id.hex()} from owner key {share.signer_key_id[:4].hex()}: "
        f"{share.role.name.lower()} of vehicle {card.vin}, {window_text(share)}"
    )
    return EXIT_OK


def _shares(args: argparse.Namespace) -> int:
    from .share_book import HeldShare, ShareBook, holder_text, window_text

    book = ShareBook(_keystore(args))
    now = int(time.time())
    issued, imported = book.issued(args.vin), book.imported(args.vin)

    def as_json(held: HeldShare) -> dict[str, Any]:
        share = held.share
        return {
            "share_id": held.share_id,
            "role": share.role.name.lower(),
            "holder_key_id": share.holder_key_id.hex(),
            "signer_key_id": share.signer_key_id.hex(),
            "not_before": share.not_before,
            "not_after": share.not_after,
            "weekdays": share.weekdays,
            "start_minute": share.start_minute,
            "end_minute": share.end_minute,
            "utc_offset_minutes": share.utc_offset_minutes,
            "state": held.state(now),
            "recorded_at": held.recorded_at,
            "revoked_at": held.revoked_at,
        }

    if args.json:
        body = {
            "vin": args.vin,
            "issued": [as_json(h) for h in issued],
            "imported": [as_json(h) for h in imported],
        }
        print(json.dumps(body, indent=2))
        return EXIT_OK
    if not issued and not imported:
        print(f"{args.vin}: no shares issued or imported", file=sys.stderr)
    for held in issued:
        print(
            f"issued   {held.share_id} to key {holder_text(held.share)} "
            f"{held.share.role.name.lower()}, {window_text(held.share)}: {held.state(now)}"
        )
    for held in imported:
        print(
            f"imported {held.share_id} from key {held.share.signer_key_id[:4].hex()} "
            f"{held.share.role.name.lower()}, {window_text(held.share)}: {held.state(now)}"
        )
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    from .cli_manage import manage_in_radio
    from .share_book import ShareBook

    store = _keystore(args)
    held = ShareBook(store).find_issued(args.vin, args.share_id)
    _ = store.private_key

    async def revoke(manager: Any) -> Any:
        return await manager.revoke_share(args.vin, held.share)

    asyncio.run(_with_radio(args, manage_in_radio(args, store, revoke)))
    print(f"revoked share {held.share_id} on vehicle {args.vin}")
    return EXIT_OK
