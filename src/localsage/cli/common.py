"""Helpers shared by the command modules: --hp parsing, the one table printer, error guards."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_hp(pairs, hp_file=None) -> dict:
    """`--hp name=value` pairs (and an optional JSON file under them) as a dict of strings/values."""
    values = {}
    if hp_file:
        values.update(json.loads(Path(hp_file).read_text()))
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--hp expects name=value, got {pair!r}")
        values[key.strip()] = value.strip()
    return values


def pairs(items, flag) -> dict:
    """Repeated `FLAG KEY=VALUE` options as a dict (values kept as given)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def at_least_one(text) -> int:
    """argparse type of a count (instances, processes per host, trials): a whole number >= 1, refused
    before any job starts (exit 2 with the usage line), not silently taken as one."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number, at least 1, got {text!r}")
    return value


def fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(rows, header) -> str:
    """Left-aligned columns, two spaces apart: the one table layout every command prints."""
    rows = [tuple(str(x) for x in r) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in (tuple(header), *rows))


def print_table(rows, header) -> None:
    print(table(rows, header))


def guard(func, *errors):
    """The given library errors -> a one-line message on stderr and exit code 2."""
    def run(args):
        try:
            return func(args)
        except errors as exc:
            print(f"localsage: {exc}", file=sys.stderr)
            return 2
    return run


def cloud_guard(func):
    def run(args):
        from localsage.host.cloud.session import CloudError

        return guard(func, CloudError)(args)
    return run
