"""Per-site report of a federation from the `metrics.csv` the ServerApp writes in its `out-dir`.

    python deploy/site_report.py runs/federation/metrics.csv [--round N] [--json]

One row per site for the chosen round (default: the last): training examples, validation MAD after
local training, test MAD of the global model, epsilon spent under DP, seconds of local training (a slow
site shows here), and any failure reason.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

# (label, phase, metric): what the table shows of each site
COLUMNS = (("train n", "train", "num-examples"), ("val MAD mo", "train", "val-mad-months"),
           ("test n", "evaluate", "num-examples"), ("test MAD mo", "evaluate", "mad-months"),
           ("within 1 y", "evaluate", "accuracy-1y"), ("epsilon", "train", "epsilon"),
           ("train s", "train", "train-seconds"))


def site_report(metrics_csv: Path, round_number: int | None = None) -> tuple[int, dict[str, dict[str, str]]]:
    """The round reported and, per site, `phase/metric` values and `status` (ok or the failure)."""
    with open(metrics_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{metrics_csv} has no rows: did the federation run a round?")
    chosen = round_number if round_number is not None else max(int(row["round"]) for row in rows)
    sites: dict[str, dict[str, str]] = {}
    for row in rows:
        if int(row["round"]) != chosen or not row["site"] or row["phase"] == "central":  # server-side rows
            continue
        site = sites.setdefault(row["site"], {"status": "ok"})
        if row["status"] != "ok":
            site["status"] = f"{row['phase']} {row['status']}: {row['reason']}"
        if row["metric"]:
            site[f"{row['phase']}/{row['metric']}"] = row["value"]
    return chosen, sites


def format_table(round_number: int, sites: dict[str, dict[str, str]]) -> str:
    """A plain-text table, one line per site."""
    table = [["site", *(label for label, _, _ in COLUMNS), "status"]]
    for site in sorted(sites, key=lambda s: (not s.isdigit(), s.zfill(12))):
        values = sites[site]
        table.append([site, *(_short(values.get(f"{p}/{m}", "-")) for _, p, m in COLUMNS), values["status"]])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1]
             for row in table]
    return "\n".join([f"round {round_number}", *lines])


def _short(value: str) -> str:
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/site_report.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics_csv", type=Path, help="metrics.csv in the run's out-dir")
    parser.add_argument("--round", type=int, default=None, help="round to report (default: the last)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        chosen, sites = site_report(args.metrics_csv, args.round)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"round": chosen, "sites": sites}) if args.json else format_table(chosen, sites))
    return 0


if __name__ == "__main__":
    sys.exit(main())
