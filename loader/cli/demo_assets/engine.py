#!/usr/bin/env python3
"""Demo engine: descriptive statistics over two parties' CSV datasets.

Reads the staged datasets named in the config (TL_DATASET_<NAME>, one directory each with
CSV files), computes per-column count, mean, standard deviation, min and max, and a pooled
summary of the columns both datasets share. Writes results.json into TL_OUTPUT.
"""

import csv
import json
import math
import os
import sys
from pathlib import Path


def read_rows(directory: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(directory.rglob("*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            rows.extend(csv.DictReader(f))
    return rows


def describe(values: list[float], digits: int) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {
        "count": n,
        "mean": round(mean, digits),
        "stdev": round(math.sqrt(var), digits),
        "min": min(values),
        "max": max(values),
    }


def main() -> int:
    config = json.loads(Path(os.environ["TL_CONFIG"]).read_text(encoding="utf-8"))
    digits = int(config.get("digits", 2))
    results: dict[str, dict[str, dict[str, float]]] = {}
    pooled: dict[str, list[float]] = {}
    for name in config["datasets"]:
        directory = Path(os.environ["TL_DATASET_" + name.upper().replace("-", "_").replace(".", "_")])
        rows = read_rows(directory)
        results[name] = {}
        for column in config["columns"]:
            values = [float(r[column]) for r in rows if r.get(column) not in (None, "")]
            if values:
                results[name][column] = describe(values, digits)
                pooled.setdefault(column, []).extend(values)
    shared = [c for c in config["columns"] if all(c in results[n] for n in config["datasets"])]
    summary = {
        "datasets": results,
        "pooled": {c: describe(pooled[c], digits) for c in shared},
    }
    out = Path(os.environ["TL_OUTPUT"]) / "results.json"
    out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for column, stats in summary["pooled"].items():
        print(f"pooled {column}: n={stats['count']} mean={stats['mean']} sd={stats['stdev']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
