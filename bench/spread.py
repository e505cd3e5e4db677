"""The one summary every benchmark here reports for repeated runs: the median and the range (min, max),
never only the best run (timings on the project's machines vary 1.5-2x from run to run).

Imported by the scripts of bench/ (each runs with bench/ first on sys.path)."""
from __future__ import annotations

import statistics


def spread(values, digits: int = 2) -> dict:
    """{"median", "min", "max"} of the runs, each rounded to `digits`."""
    values = list(values)
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def spread_text(values, fmt: str = "{:.2f}") -> str:
    """"median [min-max]" of the runs, each formatted with `fmt`."""
    values = list(values)
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"
