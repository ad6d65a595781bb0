#!/usr/bin/env python3
"""Latency distribution plot of a `sandpit bench --csv` file: one box (with every sample as a
dot) per measure, log time axis. Usage: bench_plot.py latency.csv out.png"""
import csv
import sys
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    samples: "OrderedDict[str, list[float]]" = OrderedDict()
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            samples.setdefault(row["measure"], []).append(float(row["ms"]))
    names = list(samples)
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(names) + 1.5))
    ax.boxplot([samples[n] for n in names], vert=False, whis=(1, 99), showfliers=False)
    for i, n in enumerate(names, start=1):
        ys = [i + (k % 7 - 3) * 0.04 for k in range(len(samples[n]))]
        ax.scatter(samples[n], ys, s=4, alpha=0.35)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log scale; box: quartiles, whiskers: p1-p99)")
    ax.set_title("sandpit bench: latency distributions, same run")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main()
