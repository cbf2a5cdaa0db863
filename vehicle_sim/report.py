"""What `phonekey vehicle show` and `log` print, from a store (stopped vehicle)
or from the running vehicle (through its control socket): one JSON-able
dict, rendered as text by the same code either way.

``show`` holds keys and roles, counters, fast-path key presence, keycards,
issuers, revocation version, lockout (backoff) state, clock and time floor,
lock state and the event log's length. Nothing secret: key ids and public
keys only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .display import iso_utc, lock_word
from .firmware_store import FirmwareStore, LogReadout

if TYPE_CHECKING:
    from .runtime import VehicleRuntime

JSON = dict[str, Any]


def show_report(store: FirmwareStore, runtime: VehicleRuntime | None = None) -> JSON:
    from protocol import crypto

    keys = sorted(store.keys(), key=lambda entry: (entry.role, entry.key_id))
    readout = store.read_log()
    level = runtime.backoff.level() if runtime is not None else store.backoff_level()
    report: JSON = {
        "vin": store.identity.vin,
        "vehicle_id": store.identity.vehicle_id.hex(),
        "running": runtime is not None,
        "lock_state": lock_word(store.lock_state()),
        "keys": [
            {
                "key_id": entry.key_id.hex(),
                "role": entry.role.name.lower(),
                "counter": store.last_counter(entry.key_id),
                "fast_path": store.fast_key(entry.key_id) is not None,
                "revoked": store.is_key_revoked(entry.key_id),
            }
            for entry in keys
        ],
        "keycards": sorted(crypto.key_id(card).hex() for card in store.keycards()),
        "issuers": [key_id.hex() for key_id in store.issuer_keys()],
        "revocation_version": store.revocation_version(),
        "revocation_entries": store.revoked_count(),
        "clock": store.now(),
        "time_floor": store.time_floor,
        "lockout": {"level": level},
        "log": {
            "length": len(readout.entries),
            "verified": readout.verified,
            "lost_to_wrap": readout.lost_to_wrap,
        },
        "card": store.card.to_text(),
    }
    if runtime is not None:
        backoff = runtime.backoff
        report["lockout"].update(
            {
                "failure_delay_s": round(backoff.global_delay(), 3),
                "failures_since_boot": backoff.failures,
                "checkpoints_since_boot": backoff.checkpoints,
            }
        )
        report["connections"] = runtime.gatt.stats()
        report["pairing_window_s"] = round(runtime.window.remaining(), 1)
        report["mcu"] = {
            "profile": runtime.cpu.profile.name,
            "charged_ops": dict(runtime.cpu.charged),
            "busy_s": round(runtime.cpu.busy_seconds, 3),
        }
    return report


def render_show(report: JSON) -> list[str]:
    lines = [
        f"VIN         {report['vin']}",
        f"vehicle id  {report['vehicle_id']}",
        f"doors       {report['lock_state']}",
        f"state       {'running' if report['running'] else 'stopped'}",
        f"keys        {len(report['keys'])}",
    ]
    for key in report["keys"]:
        extra = "  fast-path" if key["fast_path"] else ""
        extra += "  revoked" if key["revoked"] else ""
        lines.append(f"  {key['key_id'][:8]}  {key['role']:6}  counter {key['counter']}{extra}")
    lines.append(f"keycards    {len(report['keycards'])}")
    lines.extend(f"  {card_id[:8]}" for card_id in report["keycards"])
    lines.append(f"issuers     {len(report['issuers'])}")
    lines.extend(f"  {issuer}" for issuer in report["issuers"])
    entries = report["revocation_entries"]
    count = "" if entries is None else f", {entries} {'entry' if entries == 1 else 'entries'}"
    lines.append(f"revocations version {report['revocation_version']}{count}")
    lines.append(f"clock       {iso_utc(report['clock'])}")
    if report["time_floor"] is not None:
        lines.append(f"time floor  {iso_utc(report['time_floor'])}")
    lockout = report["lockout"]
    line = f"lockout     level {lockout['level']}"
    if "failure_delay_s" in lockout:
        line += (
            f", failure replies +{lockout['failure_delay_s']:g} s, "
            f"{lockout['failures_since_boot']} failures since boot"
        )
    lines.append(line)
    if "connections" in report:
        conns = report["connections"]
        lines.append(
            f"connections {conns['connections']}/{conns['max_connections']} "
            f"({conns['authenticated']} authenticated), {conns['evictions']} evicted, "
            f"{conns['refused']} refused, {conns['timeouts']} timed out"
        )
        if report["pairing_window_s"] > 0:
            lines.append(f"pairing     open for {report['pairing_window_s']:g} s")
        mcu = report["mcu"]
        lines.append(f"mcu         {mcu['profile']}, {mcu['busy_s']:g} s of crypto charged")
    log = report["log"]
    state = "verified" if log["verified"] else "DOES NOT VERIFY"
    lines.append(f"log         {log['length']} entries, chain {state}")
    lines.append(f"card        {report['card']}")
    return lines


def log_report(readout: LogReadout) -> JSON:
    return {
        "verified": readout.verified,
        "problem": readout.problem,
        "lost_to_wrap": readout.lost_to_wrap,
        "entries": [
            {
                "seq": entry.seq,
                "time": entry.time,
                "kind": entry.kind.name.lower(),
                "key_id": entry.key_id.hex(),
                "reason": entry.reason,
                "count": entry.count,
            }
            for entry in readout.entries
        ],
    }


def render_log(report: JSON) -> list[str]:
    from protocol.types import ResultCode

    lines = []
    if report["lost_to_wrap"]:
        lines.append(f"({report['lost_to_wrap']} older entries lost to wrap)")
    for entry in report["entries"]:
        line = f"{entry['seq']:6}  {iso_utc(entry['time'])}  {entry['kind']:18}"
        if entry["key_id"] != "00" * 16:
            line += f"  {entry['key_id'][:8]}"
        if entry["kind"] == "denied":
            try:
                reason = ResultCode(entry["reason"]).name.lower().replace("_", "-")
            except ValueError:
                reason = f"reason {entry['reason']}"
            line += f"  {reason}"
        if entry["count"] > 1:
            line += f"  x{entry['count']}"
        lines.append(line)
    if report["verified"]:
        lines.append(f"chain verified ({len(report['entries'])} entries)")
    else:
        lines.append(f"CHAIN DOES NOT VERIFY: {report['problem']}")
    return lines
