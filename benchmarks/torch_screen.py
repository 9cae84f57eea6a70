"""A PyTorch port of convlab's squeezenet-plus recipe, to screen levers over many seeds on a
GPU machine that has PyTorch but no TensorFlow. Not convlab: its numbers only choose what to
measure on the CPU with convlab itself (BENCHMARKS.md, "From scratch: MixUp, CutMix and
others screened on a GPU").

Same data (a folder prepared at 224 px by `convlab data prepare`, its train / validation
split), same model (7 fire modules with bypass, batch norm eps 1e-3 and momentum 0.9 in
Keras' terms, Glorot-uniform kernels, dropout before the classifier), augmentation
(random-resized crops from the stored pixels, flip, saturation, brightness, contrast), label
smoothing, AdamW with Keras' decoupled weight decay on every variable, warm-up then cosine,
bfloat16 autocast, as close as PyTorch allows. Differences: PyTorch's random numbers, and its
antialiased resize of the validation photos.

  python torch_screen.py pack data/fp224 OUT.pkl       # here, with convlab's .venv (TF)
  python torch_screen.py prep OUT.pkl                   # there: decode into /tmp/*.npy
  python torch_screen.py run ARM SEED RESULTS.jsonl     # one training; appends one line
  python torch_screen.py drive RESULTS.jsonl ARM,.. SEED,.. PARALLEL DEADLINE_S
"""
import io
import json
import math
import pickle
import subprocess
import sys
import time

import numpy as np

LAYOUT = [(32, 64), "pool", (48, 96), "pool", (64, 128), "pool", (96, 192), (96, 192), "pool",
          (128, 256), (128, 256)]
BASE = dict(epochs=60, batch=64, size=128, lr=3e-3, wd=1e-4, min_lr=1e-5, warmup=2,
            optimizer="adamw", momentum=0.9, ls=0.1, mixup=0.0, cutmix=0.0, zoom=0.5,
            dropout=0.2, ema=0.0, bypass=True)
ARMS = {
    "base": {},
    "cutmix1": {"cutmix": 1.0},
    "mixup02": {"mixup": 0.2},
    "wd05": {"wd": 0.05},
    "sgd": {"optimizer": "sgd", "lr": 0.1, "wd": 5e-3},
    "ema998": {"ema": 0.998},
    "e70": {"epochs": 70},
    "cutmix1_e70": {"cutmix": 1.0, "epochs": 70},
    "ls0": {"ls": 0.0},
    "drop0": {"dropout": 0.0},
    "smoke": {"epochs": 1},
}


def pack(folder, out, quality=80):
    """The prepared split's photos as JPEG bytes (re-encoded at `quality` so the two splits
    fit in a device call's 64 MiB) and labels, pickled."""
    import glob

    import tensorflow as tf
    from PIL import Image
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "class": tf.io.FixedLenFeature([], tf.int64)}
    data = {}
    for split in ("train", "validation"):
        jpgs, labels = [], []
        for record in tf.data.TFRecordDataset(sorted(glob.glob(f"{folder}/{split}*.tfrec"))):
            example = tf.io.parse_single_example(record, spec)
            image = Image.open(io.BytesIO(example["image"].numpy())).convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=quality)
            jpgs.append(buffer.getvalue())
            labels.append(int(example["class"].numpy()))
        data[split] = (jpgs, np.array(labels, np.int64))
        print(split, len(jpgs), f"{sum(map(len, jpgs)) / 1e6:.1f} MB")
    with open(out, "wb") as f:
        pickle.dump(data, f)


def prep(pkl):
    from concurrent.futures import ProcessPoolExecutor

    with open(pkl, "rb") as f:
        data = pickle.load(f)
    with ProcessPoolExecutor(16) as pool:
        for split, (jpgs, labels) in data.items():
            arr = np.stack(list(pool.map(_decode, jpgs, chunksize=64)))
            np.save(f"/tmp/{split}_x.npy", arr)
            np.save(f"/tmp/{split}_y.npy", labels)
            print(split, arr.shape, np.bincount(labels), flush=True)


def _decode(b):
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))


def build(cfg):
    import torch
    from torch import nn

    def cbr(cin, cout, k):
        conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        nn.init.xavier_uniform_(conv.weight)  # Keras glorot_uniform
        return nn.Sequential(conv, nn.BatchNorm2d(cout, eps=1e-3, momentum=0.1), nn.ReLU(inplace=True))

    class Fire(nn.Module):
        def __init__(self, cin, s, e, bypass):
            super().__init__()
            self.s = cbr(cin, s, 1)
            self.e1 = cbr(s, e // 2, 1)
            self.e3 = cbr(s, e - e // 2, 3)
            self.bypass = bypass and cin == e

        def forward(self, x):
            s = self.s(x)
            y = torch.cat([self.e1(s), self.e3(s)], 1)
            return x + y if self.bypass else y

    layers, c = [cbr(3, 32, 3)], 32
    for b in LAYOUT:
        if b == "pool":
            layers.append(nn.MaxPool2d(2))
        else:
            layers.append(Fire(c, b[0], b[1], cfg["bypass"]))
            c = b[1]
    head = nn.Linear(c, 5)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(cfg["dropout"]), head)


def run(arm, seed, out):
    import torch
    import torch.nn.functional as F
    t0 = time.time()
    cfg = {**BASE, **ARMS[arm]}
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.backends.cudnn.benchmark = True
    dev = "cuda"
    xtr = torch.from_numpy(np.load("/tmp/train_x.npy")).to(dev).permute(0, 3, 1, 2).contiguous()
    ytr = torch.from_numpy(np.load("/tmp/train_y.npy")).to(dev)
    xva = torch.from_numpy(np.load("/tmp/validation_x.npy")).to(dev).permute(0, 3, 1, 2).float()
    yva = torch.from_numpy(np.load("/tmp/validation_y.npy")).to(dev)

    def val_at(px):  # whole image resized (tf.image.resize antialias), rounded to uint8
        v = F.interpolate(xva, size=(px, px), mode="bilinear", antialias=True, align_corners=False)
        return (v.round().clamp(0, 255) / 255.0).contiguous(memory_format=torch.channels_last)
    vals = {128: val_at(128), 144: val_at(144)}

    model = build(cfg).to(dev).to(memory_format=torch.channels_last)
    params = list(model.parameters())
    # Keras semantics: weight decay is decoupled, w -= lr * wd * w, on every variable.
    if cfg["optimizer"] == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["wd"], eps=1e-7)
    else:
        opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=True)
    ema = None
    if cfg["ema"]:
        ema = [p.detach().clone() for p in params]
    n = len(xtr)
    spe = n // cfg["batch"]
    total = spe * cfg["epochs"]
    warm = round(cfg["warmup"] * spe)

    def lr_at(step):
        if step < warm:
            return cfg["lr"] * (step + 1) / max(warm, 1)
        p = min(max((step - warm) / max(total - warm, 1), 0), 1)
        return cfg["min_lr"] + 0.5 * (cfg["lr"] - cfg["min_lr"]) * (1 + math.cos(math.pi * p))

    grey_w = torch.tensor([0.2989, 0.5870, 0.1140], device=dev).view(1, 3, 1, 1)
    S = cfg["size"]

    def augment(x):
        b = x.shape[0]
        side = torch.empty(b, 1, device=dev).uniform_(cfg["zoom"], 1.0)
        tl = torch.rand(b, 2, device=dev) * (1 - side)  # (y, x)
        y1, x1 = tl[:, 0], tl[:, 1]
        y2, x2 = y1 + side[:, 0], x1 + side[:, 0]
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = x2 - x1
        theta[:, 0, 2] = x1 + x2 - 1
        theta[:, 1, 1] = y2 - y1
        theta[:, 1, 2] = y1 + y2 - 1
        grid = F.affine_grid(theta, (b, 3, S, S), align_corners=True)
        x = F.grid_sample(x.float(), grid, mode="bilinear", align_corners=True) / 255.0
        flip = torch.rand(b, 1, 1, 1, device=dev) < 0.5
        x = torch.where(flip, x.flip(3), x)
        grey = (x * grey_w).sum(1, keepdim=True)
        x = grey + torch.empty(b, 1, 1, 1, device=dev).uniform_(0.6, 1.4) * (x - grey)
        x = x + torch.empty(b, 1, 1, 1, device=dev).uniform_(-0.1, 0.1)
        mean = x.mean((1, 2, 3), keepdim=True)
        x = mean + torch.empty(b, 1, 1, 1, device=dev).uniform_(0.8, 1.2) * (x - mean)
        return x.clamp(0, 1)

    def mix(x, y):
        if not (cfg["mixup"] or cfg["cutmix"]):
            return x, y
        use_cut = bool(cfg["cutmix"]) and (not cfg["mixup"] or np.random.rand() < 0.5)
        a = cfg["cutmix"] if use_cut else cfg["mixup"]
        lam = float(np.random.beta(a, a))
        xp, yp = x.flip(0), y.flip(0)
        if use_cut:
            h = w = x.shape[-1]
            side = math.sqrt(1 - lam)
            cy, cx = np.random.rand() * h, np.random.rand() * w
            y0, y1_ = int(round(max(cy - h * side / 2, 0))), int(round(min(cy + h * side / 2, h)))
            x0, x1_ = int(round(max(cx - w * side / 2, 0))), int(round(min(cx + w * side / 2, w)))
            x = x.clone()
            x[:, :, y0:y1_, x0:x1_] = xp[:, :, y0:y1_, x0:x1_]
            lam = 1 - (y1_ - y0) * (x1_ - x0) / (h * w)
        else:
            x = lam * x + (1 - lam) * xp
        return x, lam * y + (1 - lam) * yp

    def evaluate(px, weights=None):
        model.eval()
        if weights is not None:
            live = [p.detach().clone() for p in params]
            for p, e in zip(params, weights, strict=True):
                p.data.copy_(e)
        correct = 0
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            for i in range(0, len(yva), 256):
                correct += (model(vals[px][i:i + 256]).argmax(1) == yva[i:i + 256]).sum().item()
        if weights is not None:
            for p, kept in zip(params, live, strict=True):
                p.data.copy_(kept)
        model.train()
        return correct / len(yva)

    step, best, hist = 0, 0.0, []
    for epoch in range(cfg["epochs"]):
        perm = torch.randperm(n, device=dev)
        correct = 0
        for i in range(spe):
            idx = perm[i * cfg["batch"]:(i + 1) * cfg["batch"]]
            x = augment(xtr[idx]).contiguous(memory_format=torch.channels_last)
            y = F.one_hot(ytr[idx], 5).float()
            x, y = mix(x, y)
            y = y * (1 - cfg["ls"]) + cfg["ls"] / 5
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            with torch.autocast("cuda", torch.bfloat16):
                logits = model(x)
            loss = -(y * F.log_softmax(logits.float(), 1)).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cfg["optimizer"] == "sgd" and cfg["wd"]:
                with torch.no_grad():
                    torch._foreach_mul_(params, 1 - lr_at(step) * cfg["wd"])
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - cfg["ema"])
            correct += (logits.argmax(1) == y.argmax(1)).sum().item() if epoch == cfg["epochs"] - 1 else 0
            step += 1
        acc = evaluate(128, ema)
        best = max(best, acc)
        hist.append(round(acc, 4))
    res = {"arm": arm, "seed": seed, "final128": evaluate(128, ema), "final144": evaluate(144, ema),
           "best128": best, "train_acc_last": correct / (spe * cfg["batch"]),
           "hist": hist, "seconds": round(time.time() - t0, 1)}
    with open(out, "a") as f:
        f.write(json.dumps(res) + "\n")
    print(arm, seed, res["final128"], res["final144"], res["seconds"], flush=True)


def drive(out, arms, seeds, parallel, deadline):
    t0 = time.time()
    jobs = [(a, s) for s in seeds for a in arms]
    running = []
    while jobs or running:
        running = [p for p in running if p.poll() is None]
        while jobs and len(running) < parallel and time.time() - t0 < deadline:
            a, s = jobs.pop(0)
            running.append(subprocess.Popen([sys.executable, __file__, "run", a, str(s), out]))
        if time.time() - t0 > deadline:
            jobs = []
        if time.time() - t0 > deadline + 90:
            for p in running:
                p.kill()
            break
        time.sleep(1)
    print("driver done", round(time.time() - t0), "s", flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "pack":
        pack(sys.argv[2], sys.argv[3])
    elif cmd == "prep":
        prep(sys.argv[2])
    elif cmd == "run":
        run(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif cmd == "drive":
        drive(sys.argv[2], sys.argv[3].split(","), [int(s) for s in sys.argv[4].split(",")],
              int(sys.argv[5]), float(sys.argv[6]))
