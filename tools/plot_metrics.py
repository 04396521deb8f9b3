#!/usr/bin/env python
"""Plot the total loss (and the given keys) of one or more Detectron2 metrics.json files into a PNG.

    python tools/plot_metrics.py output/toy/stage1/metrics.json output/toy/stage2/metrics.json -o loss.png
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return [r for r in rows if "total_loss" in r]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="+", help="metrics.json files (one curve each)")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--keys", nargs="*", default=["total_loss"])
    args = parser.parse_args()
    fig, axes = plt.subplots(1, len(args.metrics), figsize=(5 * len(args.metrics), 3.5), squeeze=False)
    for ax, path in zip(axes[0], args.metrics):
        rows = read_metrics(path)
        if not rows:
            raise ValueError(f"{path}: no training iterations with total_loss")
        for key in args.keys:
            pts = [(r["iteration"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*pts), label=key)
        ax.set_title(path, fontsize=8)
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=90)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
