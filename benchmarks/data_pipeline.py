"""Input pipeline benchmark: per-file JPEG loading vs convlab's TFRecord pipeline.

    .venv/bin/python benchmarks/data_pipeline.py [PHOTOS] [--size 128] [--rounds 5]

Prepares PHOTOS (default ../shared/data/flowers128) into a temporary folder, then runs
`convlab data bench` on it: every variant reads the same training images for whole epochs,
alternating over several rounds, median reported. No model: this measures the input only.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from convlab.cli import main

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "flowers128"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="?", default=str(DEFAULT))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')} on {platform.machine()}, "
          f"{Path('/proc/cpuinfo').read_text().count('processor')} cores")
    with tempfile.TemporaryDirectory() as tmp:
        main(["data", "prepare", args.photos, tmp, "--size", str(args.size), "--quiet"])
        main(["data", "bench", tmp, "--rounds", str(args.rounds),
              "--batch-size", str(args.batch_size)])
