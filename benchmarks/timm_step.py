"""One fine-tuning step of EfficientNet-Lite0, side by side: convlab's Keras model (TensorFlow)
against timm's `efficientnet_lite0` (PyTorch), on the same CPU, the same batch and size.

    .venv/bin/python benchmarks/timm_step.py both --torch-python TORCH_VENV/bin/python

TORCH_VENV is a second virtual environment with PyTorch and timm (`python -m venv TORCH_VENV
&& TORCH_VENV/bin/pip install torch torchvision timm`); convlab's own needs neither. `both`
runs the two sides in turn, each in its own process (keras, torch, keras, torch for
--rounds 2), and prints each one's seconds per step and the ratio. `keras` or `torch` alone
runs one side in this interpreter and prints one JSON line per setting.

Each setting: a random float32 batch in memory, 5 classes, Adam, cross-entropy with label
smoothing 0.1, batch norm frozen (inference statistics, no trainable scale or offset: as
convlab fine-tunes), the best of --steps timed steps after one that traces or warms up.
Settings: the whole network, and from block 5 on (convlab's block5_; timm's blocks[3] on),
the stem and the blocks before frozen: what the recipe fine-tunes. PyTorch runs channels-last
(faster on a CPU than its default layout). Weights are not loaded: the arithmetic does not
depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FROM = {None: "the whole network", "block5_": "from block 5 (stem and blocks 0-4 frozen)"}


def keras_step(first: str | None, size: int, batch: int, steps: int) -> float:
    from fine_tune_from import step_seconds  # beside this file

    return step_seconds(first, size, batch, rounds=steps, label_smoothing=0.1)


def torch_step(first: str | None, size: int, batch: int, steps: int) -> float:
    import timm
    import torch

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=5)
    model = model.to(memory_format=torch.channels_last).train()
    frozen = [model.conv_stem, model.bn1, *model.blocks[:3]] if first == "block5_" else []
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()  # inference statistics; its scale and offset frozen below
            for p in module.parameters():
                p.requires_grad_(False)
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch) % 5

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    step()
    spans = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        spans.append(time.perf_counter() - start)
    return min(spans)


def run_side(side: str, sizes: list[int], batch: int, steps: int) -> None:
    """One JSON line per (size, setting) for `side` in this interpreter."""
    timer = keras_step if side == "keras" else torch_step
    if side == "keras":
        import tensorflow as tf
        version = f"TensorFlow {tf.__version__}"
    else:
        import timm
        import torch
        version = f"PyTorch {torch.__version__}, timm {timm.__version__}"
    for size in sizes:
        for first in FROM:
            seconds = timer(first, size, batch, steps)
            print(json.dumps({"side": side, "version": version, "size": size, "batch": batch,
                              "from": first, "seconds": round(seconds, 3)}), flush=True)


def run_both(args) -> None:
    """keras, torch, keras, torch ... in separate processes; the best per side and setting."""
    common = ["--sizes", ",".join(map(str, args.sizes)), "--batch-size", str(args.batch_size),
              "--steps", str(args.steps)]
    best: dict[tuple, dict] = {}
    for _ in range(args.rounds):
        for side, python in (("keras", sys.executable), ("torch", args.torch_python)):
            out = subprocess.run([python, __file__, side, *common], check=True,
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                if line.startswith("{"):
                    r = json.loads(line)
                    key = (r["side"], r["size"], r["from"])
                    if key not in best or r["seconds"] < best[key]["seconds"]:
                        best[key] = r
    versions = {r["side"]: r["version"] for r in best.values()}
    print(f"batch {args.batch_size}, float32, best of {args.steps} steps x {args.rounds} "
          f"rounds; convlab: {versions['keras']}; timm: {versions['torch']}")
    for size in args.sizes:
        for first, what in FROM.items():
            k, t = best[("keras", size, first)], best[("torch", size, first)]
            print(f"{size} px, {what}: convlab {k['seconds']:.2f} s/step, timm "
                  f"{t['seconds']:.2f} s/step ({t['seconds'] / k['seconds']:.1f}x)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("side", choices=("both", "keras", "torch"))
    parser.add_argument("--torch-python", default="python3",
                        help="`both`: the interpreter that has PyTorch and timm")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")],
                        default=[300, 224], help="image sizes, comma-separated")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    parser.add_argument("--rounds", type=int, default=2, help="`both`: turns per side")
    args = parser.parse_args(argv)
    if args.side == "both":
        run_both(args)
    else:
        run_side(args.side, args.sizes, args.batch_size, args.steps)


if __name__ == "__main__":
    main()
