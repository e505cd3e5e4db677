"""Epoch metrics: the log line format and SageMaker `metric_definitions` regexes, in one place.

A training job prints one line per epoch of `name=value;` pairs, e.g.
    epoch=3; train_loss=0.412; train_acc=0.871; valid_loss=0.388; valid_acc=0.902; epoch_time=12.1; images_per_sec=241.3;
SageMaker scrapes them from the log with the regexes below; the runner and the tuner parse the
same lines from the streamed log, so every backend reports metrics the same way.
"""
from __future__ import annotations

import re

from . import files

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
