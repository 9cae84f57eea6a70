"""Time to accuracy: wall time until validation accuracy first reaches a threshold.

    .venv/bin/python benchmarks/time_to_accuracy.py [PHOTOS] [--epochs 35] [--size 128]
        [--thresholds 0.5,0.6,0.65] [--recipe codelab-squeezenet] [--skip-baseline]
        [--runs-dir DIR] [-- more convlab train flags, e.g. --image-size 96 --epochs 50]

Trains, one after the other on the same prepared photos and the same train/validation split,
(1) the plain codelab baseline (benchmarks/codelab_baseline.py) and (2) a convlab recipe at
the same image size, for --epochs each, then prints for every threshold the wall time (from
the start of training, validation included) at which each first reached it, and each one's
best accuracy and the time it got there. Flags after `--` go to `convlab train` last, so
they override --epochs and --size for the convlab side (an improved recipe at its own size
and length). Slow by nature (the baseline alone is about 45 minutes at 35 epochs on a
2-core CPU): a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
DEFAULT = HERE.parents[1] / "shared" / "data" / "flower_photos"


def _elapsed(row: dict) -> float:
    """Seconds since training began at the end of this epoch (convlab's history calls it
    elapsed_seconds, the baseline script and older runs wall_seconds)."""
    return row.get("elapsed_seconds", row.get("wall_seconds", float("nan")))


def baseline_history(prepared: Path, epochs: int, size: int) -> list[dict]:
    out = subprocess.run([sys.executable, str(HERE / "codelab_baseline.py"), str(prepared),
                          "--epochs", str(epochs), "--size", str(size)],
                         capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def convlab_history(prepared: Path, recipe: str, epochs: int, size: int, runs: Path,
                    extra: list[str]) -> list[dict]:
    subprocess.run([sys.executable, "-m", "convlab", "train", recipe, "--data", str(prepared),
                    "--image-size", str(size), "--epochs", str(epochs), "--runs-dir",
                    str(runs), "--quiet", "--no-report", *extra], check=True,
                   stdout=subprocess.DEVNULL)
    (run,) = runs.iterdir()
    with open(run / "history.csv") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    for row in rows:
        row["epoch"] += 1  # Keras' CSV counts from 0, the baseline (and people) from 1
    return rows


def first_reach(history: list[dict], threshold: float) -> str:
    for row in history:
        if row.get("val_accuracy", 0) >= threshold:
            return f"{_elapsed(row) / 60:.1f} min (epoch {int(row['epoch'])})"
    return "not reached"


def main() -> None:
    from convlab.data import prepare
    from convlab.training.strategy import hardware

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Flags after -- go to `convlab train` (convlab side).")
    p.add_argument("photos", nargs="?", default=str(DEFAULT))
    p.add_argument("--epochs", type=int, default=35)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--thresholds", default="0.5,0.6,0.65,0.8,0.85")
    p.add_argument("--recipe", default="codelab-squeezenet")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--runs-dir", help="keep the convlab run folder here (default: temporary)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    extra = argv[cut + 1:]  # more `convlab train` flags for the convlab side

    tmp = tempfile.TemporaryDirectory()
    prepared = Path(tmp.name) / "data"
    prepare(args.photos, prepared, size=args.size, progress=False)
    sides = {}
    if not args.skip_baseline:
        sides["codelab baseline"] = baseline_history(prepared, args.epochs, args.size)
    label = f"convlab {args.recipe} {' '.join(extra)}".strip()
    runs = Path(args.runs_dir or Path(tmp.name) / "runs") / f"tta-{time.strftime('%H%M%S')}"
    sides[label] = convlab_history(prepared, args.recipe, args.epochs, args.size, runs, extra)
    print(f"\n{hardware()}; {args.photos} prepared at {args.size} px\n")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    print("| run | " + " | ".join(f"to {t * 100:g}%" for t in thresholds)
          + " | best val acc (when) | total |")
    print("| --- |" + " --- |" * (len(thresholds) + 2))
    for name, history in sides.items():
        best = max(history, key=lambda r: r["val_accuracy"])
        print(f"| {name} | " + " | ".join(first_reach(history, t) for t in thresholds)
              + f" | {best['val_accuracy']:.3f} ({_elapsed(best) / 60:.1f} min, epoch "
              f"{int(best['epoch'])}) | {_elapsed(history[-1]) / 60:.1f} min "
              f"({len(history)} epochs) |")
        print(json.dumps({"run": name, "history": history}), file=sys.stderr)


if __name__ == "__main__":
    main()
