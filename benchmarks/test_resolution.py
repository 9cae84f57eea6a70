"""Test-time resolution: a trained run's validation accuracy at other input sizes (FixRes).

    .venv/bin/python benchmarks/test_resolution.py RUN [RUN ...] --sizes 300,340,380
        [--data PREPARED] [--model final]

The training zoom (random crops of part of each side, resized to the training size) shows
objects larger than whole-image validation does; evaluating at a larger size than trained
at can undo that. One size per run is `convlab evaluate RUN --image-size PX` (and a
recipe's `test_scale`); this sweeps several, loading each run once.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from convlab.evaluation.metrics import _datasets, _predict  # noqa: E402
from convlab.prediction import Predictor  # noqa: E402
from convlab.runs import read_record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--sizes", required=True, help="comma-separated sizes, px")
    parser.add_argument("--data", help="prepared folder (default: each run's own)")
    parser.add_argument("--model", default="final", choices=("best", "final"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print("| run | " + " | ".join(f"{s} px" for s in sizes) + " |")
    print("| --- |" + " ---: |" * len(sizes))
    for run in args.runs:
        record = read_record(run)
        prepared = Path(args.data or record.prepared_data)
        cells = []
        for size in sizes:  # the model's own probabilities: calibration keeps the accuracy
            predictor = Predictor(run, args.model, image_size=size, calibrated=False)
            y, out = _predict(predictor, _datasets(prepared, "validation", size, 64), None)
            cells.append(f"{100 * (out.raw.argmax(1) == y).mean():.1f}%")
        print(f"| {Path(run).name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
