"""``phonekey bench``: run the benchmarks, print JSON or a summary."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .report import SECTIONS, failed, run


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure unlock latency, radio timing, throughput, scale and cloud independence",
        description="Run phonekey's benchmarks on the virtual adapter and print the figures "
        "(medians, p99 and run counts; compared figures are measured interleaved). "
        "See docs/performance.md.",
    )
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument(
        "--quick", action="store_true", help="few runs per section (a smoke run, not figures)"
    )
    parser.add_argument(
        "--section",
        action="append",
        choices=SECTIONS,
        metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    report = run(args.section or SECTIONS, quick=args.quick)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(summary_text(report))
    return 1 if failed(report) else 0


def _ms(entry: Any) -> str:
    if not isinstance(entry, dict) or "p50_ms" not in entry:
        return _missing(entry)
    return f"p50 {entry['p50_ms']:.1f} ms, p99 {entry['p99_ms']:.1f} ms ({entry['runs']} runs)"


def _missing(entry: Any) -> str:
    if isinstance(entry, dict):
        return f"n/a ({entry.get('why') or entry.get('error') or 'not measured'})"
    return "n/a"


def _unlock_line(name: str, entry: Any) -> str:
    if not isinstance(entry, dict) or "p50_ms" not in entry:
        return f"  {name:<18} {_missing(entry)}"
    return (
        f"  {name:<18} {_ms(entry)}; handshake p50 {entry['handshake']['p50_ms']:.1f} ms, "
        f"{entry['round_trips']} round trip(s) after subscribing, "
        f"{entry['bytes_to_vehicle']} B to vehicle / {entry['bytes_to_phone']} B to phone"
    )


def summary_text(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"phonekey bench{' (quick: smoke run, not figures)' if report['quick'] else ''} on "
        f"{machine['cpu']} x{machine['cpus']}, Python {machine['python']}; "
        f"vehicle store {', '.join(report['vehicle_store']) or 'n/a'}, "
        f"fsync {report['persistence_fsync']}",
    ]
    if "unlock" in report:
        lines.append("unlock (virtual adapter, command to authenticated result):")
        for kind in ("cold", "warm", "cached_credential"):
            lines.append(_unlock_line(kind, report["unlock"].get(kind)))
    if "radio" in report:
        section = report["radio"]
        lines.append("radio (connection-event model):")
        for label in [f"{i:g}" for i in section.get("intervals_ms", [])] + ["15ms_loss_5pct"]:
            entry = section.get(label, {})
            for path in ("full", "fast"):
                value = entry.get(path)
                if isinstance(value, dict) and "p50_ms" in value:
                    text = (
                        f"{_ms(value)} = {value['p50_intervals']} intervals; handshake "
                        f"{value['handshake']['p50_ms']:.1f} ms = "
                        f"{value['handshake_p50_intervals']} intervals"
                    )
                else:
                    text = _missing(value)
                lines.append(f"  {label:<15} {path:<5} {text}")
        if "error" in section:
            lines.append(f"  {_missing(section)}")
    if "mcu" in report:
        section = report["mcu"]
        lines.append(f"mcu ({section.get('profile', 'cortex-m4-168')}):")
        if "full" in section:
            for path in ("full", "fast"):
                lines.append(_unlock_line(path, section.get(path)))
        else:
            lines.append(f"  {_missing(section)}")
    if "throughput" in report:
        section = report["throughput"]
        if "ratio_to_crypto" in section:
            lines.append(
                f"throughput: {section['handshakes_per_s']:.0f} handshakes/s vs "
                f"{section['crypto_per_s']:.0f} verify+ECDH/s: ratio {section['ratio_to_crypto']} "
                f"(target >= {section['target_ratio_min']}; "
                f"{section['ratio_to_verify_and_exchange']} against a bare exchange "
                "on a decoded point)"
            )
        else:
            lines.append(f"throughput: {_missing(section)}")
    if "scale" in report:
        section = report["scale"]
        if "ratio_max_keys" in section:
            rss = section.get("vehicle_rss_mib")
            lines.append(
                f"scale: {section['max_keys']} keys + {section['revocations']} revocations vs "
                f"1 key: ratio {section['ratio_max_keys']} full handshake, "
                f"{section['ratio_max_keys_fast']} fast path (target <= 1.1); "
                f"{section['flash_bytes_per_key']} flash bytes per key; vehicle process RSS "
                f"{'n/a' if rss is None else f'{rss} MiB'}"
            )
        else:
            lines.append(f"scale: {_missing(section)}")
    if "cloud_independence" in report:
        section = report["cloud_independence"]
        if "http_500_ratio" in section:
            lines.append(
                f"cloud independence: HTTP 500 ratio {section['http_500_ratio']}, blackhole "
                f"ratio {section['blackhole_ratio']} (target <= {section['target_ratio_max']})"
            )
        else:
            lines.append(f"cloud independence: {_missing(section)}")
    if "cloud" in report:
        section = report["cloud"]
        if "credentials_per_s" in section:
            lines.append(
                f"cloud: {section['credentials_per_s']:.0f} credentials/s at concurrency "
                f"{section['concurrency']} on loopback"
            )
        else:
            lines.append(f"cloud: {_missing(section)}")
    lines.append(f"({report['elapsed_s']} s; `phonekey bench --json` for everything)")
    return "\n".join(lines)
