"""Epoch metrics: the log line format and SageMaker `metric_definitions` regexes, in one place.

A training job prints one line per epoch of `name=value;` pairs, e.g.
  epoch=3; train_loss=0.412; train_acc=0.871; valid_loss=0.388; valid_acc=0.902; epoch_time=12.1; images_per_sec=241.3;
SageMaker scrapes them from the log with the regexes below; the runner and the tuner parse the
same lines from the streamed log, so every backend reports metrics the same way.
"""
from __future__ import annotations

import json
import re
import time

from localsage.core import files

NAMES = ("epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "epoch_time", "images_per_sec")
FINAL_NAMES = ("test_loss", "test_acc")
_NUMBER = r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf))"


def regex(name: str) -> str:
    return rf"\b{name}={_NUMBER};"


METRIC_DEFINITIONS = [{"Name": n, "Regex": regex(n)} for n in NAMES[1:] + FINAL_NAMES]
_PATTERNS = {n: re.compile(regex(n)) for n in NAMES + FINAL_NAMES}


def format_line(values: dict) -> str:
    parts = []
    for name, value in values.items():
        text = str(value) if isinstance(value, int) else f"{value:.6g}"
        parts.append(f"{name}={text};")
    return " ".join(parts)


def parse_line(line: str) -> dict | None:
    """Metrics in one log line (None when the line carries no epoch metrics)."""
    found = {}
    for name, pattern in _PATTERNS.items():
        m = pattern.search(line)
        if m:
            found[name] = float(m.group(1))
    if "epoch" not in found and not set(FINAL_NAMES) & set(found):
        return None
    if "epoch" in found:
        found["epoch"] = int(found["epoch"])
    return found


def read_jsonl(path) -> list:
    """metrics.jsonl rows; a line torn by a kill mid-write is skipped, not an error."""
    return files.read_jsonl(path)


# ---------------------------------------------------------------- metric_definitions (script jobs)

def definition(text: str) -> dict:
    """`NAME=REGEX` (the CLI's --metric-definition) -> {"Name": ..., "Regex": ...}; the regex must compile."""
    name, sep, pattern = str(text).partition("=")
    if not sep or not name.strip() or not pattern:
        raise ValueError(f"a metric definition is NAME=REGEX, got {text!r}")
    return check_definition({"Name": name.strip(), "Regex": pattern})


def check_definition(d: dict) -> dict:
    try:
        name, pattern = str(d["Name"]), str(d["Regex"])
    except (KeyError, TypeError):
        raise ValueError(f"a metric definition needs Name and Regex, got {d!r}") from None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"metric {name!r}: bad regex {pattern!r}: {exc}") from None
    if compiled.groups < 1:
        raise ValueError(f"metric {name!r}: the regex {pattern!r} needs a capture group for the value")
    return {"Name": name, "Regex": pattern}


class Scraper:
    """SageMaker's metric_definitions over a job's log: every match of a regex's first group is a point.

    Points: {"name", "value", "timestamp", "ordinal"} (ordinal = 1-based count of that name's matches),
    appended to `path` (output/data/metric_points.jsonl) as they are found."""

    def __init__(self, definitions, path=None):
        self.definitions = [check_definition(d) for d in definitions or []]
        self.patterns = [(d["Name"], re.compile(d["Regex"])) for d in self.definitions]
        self.path = path
        self.counts, self.last = {}, {}

    def scan(self, line: str) -> list[dict]:
        points = []
        for name, pattern in self.patterns:
            for m in pattern.finditer(line):
                try:
                    value = float(m.group(1))
                except (TypeError, ValueError):
                    continue
                self.counts[name] = self.counts.get(name, 0) + 1
                point = {"name": name, "value": value, "timestamp": time.time(), "ordinal": self.counts[name]}
                self.last[name] = point
                points.append(point)
        if points and self.path is not None:
            for p in points:
                files.append_line(self.path, json.dumps(p))
        return points

    def final(self) -> list[dict]:
        """FinalMetricDataList: the last value of each name, in definition order."""
        return [{"MetricName": n, "Value": self.last[n]["value"], "Timestamp": self.last[n]["timestamp"]}
                for n, _ in self.patterns if n in self.last]
