"""Time to accuracy of finished runs: validation accuracy against wall minutes, one line per
run, one colour per group (e.g. the old and the new recipe, several seeds each).

    .venv/bin/python benchmarks/accuracy_over_time.py --out docs/images/fine-tune-time-to-accuracy.png \\
        --mark-minutes 12 \\
        --group "recipe before" runs/A runs/B runs/C --group "recipe now" runs/D runs/E runs/F

Reads each run's history.csv (`elapsed_seconds`: from the first epoch's start, validation
included) and summary.json (`feature_cache_seconds`: the backbone's pass over the cached
views, before the first epoch), so a point's x is the training's wall time when that epoch
ended. The line is the validation accuracy after each epoch at the training size; a star at
the training's end marks the run's headline (metrics.json: best.keras at its test size).
Prints, per group, the mean training minutes and headline accuracy. No training here.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

COLOURS = ["tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]


def read_run(run: Path) -> dict:
    """(minutes, accuracies) per epoch, the training's minutes and the headline of `run`."""
    summary = json.loads((run / "summary.json").read_text())
    before = summary.get("feature_cache_seconds") or 0.0
    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    metrics = json.loads((run / "metrics.json").read_text())
    return {"minutes": [(before + float(r["elapsed_seconds"])) / 60 for r in rows],
            "accuracy": [100 * float(r["val_accuracy"]) for r in rows],
            "wall": summary["wall_seconds"] / 60, "headline": 100 * metrics["accuracy"],
            "test_size": metrics.get("image_size")}


def parse_groups(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", nargs="+", action="append", required=True,
                        metavar=("LABEL", "RUN"), help="a label, then its run folders")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--mark-minutes", type=float, help="a dashed line at this time (a target)")
    parser.add_argument("--title", default="Fine-tuning EfficientNet-Lite0 on flower_photos, "
                                           "2-core CPU")
    args = parser.parse_args(argv)
    for group in args.group:
        if len(group) < 2:
            parser.error(f"--group {group[0]!r} names no run folder")
    return args


def main(argv: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args = parse_groups(argv)
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    for colour, (label, *runs) in zip(COLOURS, args.group, strict=False):
        read = [read_run(Path(r)) for r in runs]
        for i, r in enumerate(read):
            ax.plot(r["minutes"], r["accuracy"], "-o", color=colour, alpha=0.75, ms=3,
                    label=label if i == 0 else None)
            ax.plot([r["wall"]], [r["headline"]], "*", color=colour, ms=11,
                    markeredgecolor="black", markeredgewidth=0.5)
        wall = statistics.mean(r["wall"] for r in read)
        headline = statistics.mean(r["headline"] for r in read)
        print(f"{label}: {len(read)} run(s), training {wall:.1f} min on average, headline "
              f"{headline:.2f}% (" + ", ".join(f"{r['headline']:.1f}" for r in read) + ")")
    if args.mark_minutes:
        ax.axvline(args.mark_minutes, color="black", ls="--", lw=0.8,
                   label=f"{args.mark_minutes:g} min")
    ax.set_xlabel("training wall time (minutes; feature caching included)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(88, 98)
    ax.grid(alpha=0.3)
    ax.set_title(args.title, fontsize=10)
    ax.plot([], [], "*", color="white", markeredgecolor="black", ms=11,
            label="the run's headline: best.keras at its test size")
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
