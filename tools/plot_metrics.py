#!/usr/bin/env python
"""Plot the total loss (and the given keys) of one or more Detectron2 metrics.json files into a PNG.

python tools/plot_metrics.py output/toy/stage1/metrics.json output/toy/stage2/metrics.json \\
    -o loss.png
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path):
    """Training rows (with total_loss) of a metrics.json, in iteration order. Detectron2 appends to
    the file: when the iteration goes back (a rerun in the same folder, or a --resume from an
    earlier checkpoint), the later run replaces the earlier one's rows from that iteration on."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not JSON ({e})") from e
            if "total_loss" not in row:
                continue
            while rows and rows[-1]["iteration"] >= row["iteration"]:
                rows.pop()
            rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="+", help="metrics.json files (one curve each)")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--keys", nargs="*", default=["total_loss"])
    args = parser.parse_args()
    fig, axes = plt.subplots(
        1, len(args.metrics), figsize=(5 * len(args.metrics), 3.5), squeeze=False
    )
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
