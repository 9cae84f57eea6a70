"""Out-of-scope scores and calibration: which "none of these classes" score, which calibration.

    .venv/bin/python benchmarks/out_of_scope.py \
        --run runs/FLOWERS ../shared/data/clothing-small/validation ../shared/data/clothing-small/test \
        --run runs/CLOTHING ../shared/data/flower_photos
        [--max-photos 700] [--synthetic 300] [--methods msp,knn-10] [--seed 0] [--quick]

About 2.5 minutes per run of ~3,000 training images on a 2-core CPU the first time (the
feature passes, ~25-40 ms an image at 340 px); seconds again, as the features are cached
(--cache, default /tmp/convlab-out-of-scope). `--quick` caps every image set at 64 images:
a smoke run of about a minute.

Each `--run RUN PHOTOS...` measures one trained run. In-scope images: its prepared validation
split, and its test split when it has one. Out-of-scope images: "photos", up to --max-photos
photos sampled from PHOTOS (folders of another collection, none of whose classes the model
knows), and "synthetic", --synthetic deterministic non-photos (flat colours, uniform and
Gaussian noise, gradients, text on plain backgrounds, checkerboards). Every image reaches the
model as in training and `convlab predict`: prepared splits through `convlab.data.load`,
files (synthetic ones as PNG bytes) through `convlab.inference.decode_bytes`, at the run's
test size.

Scores (higher = more in-scope; the table METHODS) all come from one forward pass to the
pooled features ("avg_pool"); the logits are the final Dense layer applied here (dropout is
off at inference; checked against the model's own softmax). Nothing is fitted on
out-of-scope images: the temperature on the validation split, Mahalanobis and kNN on the
training split's features (one extra pass over it, without augmentation, timed).

Metrics: AUROC; FPR@95: the fraction of out-of-scope images that pass the threshold 95% of
the validation images pass; on the test split, the fraction of its images passing that same
threshold (~95% if the threshold transfers). Calibration: one temperature T fitted on the
validation logits by NLL; NLL and ECE (15 equal-width bins of the top probability) before
and after, on validation (fitted there), on 2 folds of it (fitted on one half, measured on
the other) and on the test split, beside the ECE floor: what a perfectly calibrated model
would show on as many images. Results: tables on stdout, JSON in --out.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import io
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from scipy.optimize import minimize_scalar  # noqa: E402
from scipy.special import log_softmax, logsumexp, softmax  # noqa: E402
from sklearn.covariance import LedoitWolf, ShrunkCovariance  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

TPR = 0.95
ECE_BINS = 15
QUICK_LIMIT = 64

# ---------------------------------------------------------------------------------------------
# Synthetic non-photos: each kind a generator (rng, size) -> uint8 (size, size, 3).

WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua invoice total page chapter 2024 "
         "SALE error login password menu settings").split()


def _colour(rng) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float64)


def flat(rng, size):
    return np.broadcast_to(_colour(rng), (size, size, 3)).astype(np.uint8)


def uniform_noise(rng, size):
    # Noise at a random grain (1-8 px), so not every image is pure per-pixel noise.
    grain = int(rng.choice([1, 2, 4, 8]))
    small = rng.integers(0, 256, (-(-size // grain),) * 2 + (3,), dtype=np.uint8)
    return small.repeat(grain, 0).repeat(grain, 1)[:size, :size]


def gaussian_noise(rng, size):
    image = rng.normal(rng.uniform(40, 215, 3), rng.uniform(10, 60), (size, size, 3))
    return np.clip(image.round(), 0, 255).astype(np.uint8)


def gradient(rng, size):
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    if rng.random() < 0.5:  # linear, at any angle
        angle = rng.uniform(0, 2 * np.pi)
        t = x * np.cos(angle) + y * np.sin(angle)
    else:  # radial, around any point
        t = np.hypot(x - rng.random(), y - rng.random())
    t = (t - t.min()) / (t.max() - t.min())
    a, b = _colour(rng), _colour(rng)
    return (a + t[..., None] * (b - a)).round().astype(np.uint8)


def text(rng, size):
    from PIL import Image, ImageDraw, ImageFont

    background = _colour(rng)
    # Dark text on light backgrounds and light on dark, as documents and screenshots are.
    ink = rng.integers(0, 60, 3) if background.mean() > 127 else rng.integers(196, 256, 3)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(image)
    points = int(rng.integers(12, 48))
    font = ImageFont.load_default(size=points)
    top = int(rng.integers(0, points))
    for y in range(top, size, int(points * 1.4)):
        line = " ".join(rng.choice(WORDS, 6))
        draw.text((int(rng.integers(0, points)), y), line, fill=tuple(int(c) for c in ink),
                  font=font)
    return np.asarray(image)


def checkerboard(rng, size):
    cell = int(rng.integers(4, size // 3))
    y, x = np.mgrid[0:size, 0:size] // cell
    return np.where(((x + y) % 2 == 0)[..., None], _colour(rng), _colour(rng)).astype(np.uint8)


SYNTHETIC = {f.__name__: f for f in (flat, uniform_noise, gaussian_noise, gradient, text,
                                     checkerboard)}


def synthetic_images(count: int, size: int, seed: int) -> tuple[list[bytes], list[str]]:
    """`count` PNG files, the kinds in turn; image i depends only on (seed, i)."""
    from PIL import Image

    files, kinds = [], []
    for i in range(count):
        kind = list(SYNTHETIC)[i % len(SYNTHETIC)]
        out = io.BytesIO()
        Image.fromarray(SYNTHETIC[kind](np.random.default_rng([seed, i]), size)).save(out, "PNG")
        files.append(out.getvalue())
        kinds.append(kind)
    return files, kinds


# ---------------------------------------------------------------------------------------------
# Features: one pass per image set, cached.


@dataclass
class ImageSet:
    features: np.ndarray  # pooled features, float32 (n, d)
    seconds: float  # decoding + feature pass, when it was extracted
    labels: np.ndarray | None = None  # the model's class indices (in-scope sets only)
    decode_seconds: float = 0.0  # of that, decoding files (sets made from files)
    kinds: np.ndarray | None = None  # synthetic: the kind of each image
    skipped: int = 0  # files that could not be decoded


class Extractor:
    """A run's model cut at its pooled features, with its final Dense layer's weights."""

    def __init__(self, run: str, which: str, cache: Path, batch_size: int):
        import keras

        from convlab.runs import load_run_model, run_info
        from convlab.training.features import split_head

        self.info = run_info(run)
        self.model, path = load_run_model(run, which, image_size=self.info.test_size)
        self.extractor, head = split_head(self.model)
        dense = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]
        others = [layer for layer in head.layers[1:] if not isinstance(
            layer, (keras.layers.Dense, keras.layers.Dropout, keras.layers.Activation))]
        if len(dense) != 1 or others:
            raise SystemExit(f"{path}: expected a head of Dropout/Dense after avg_pool, "
                             f"received: {[layer.name for layer in head.layers[1:]]}")
        kernel, bias = dense[0].get_weights()
        self.kernel, self.bias = kernel.astype(np.float64), bias.astype(np.float64)
        stat = path.stat()
        self.tag = f"{path.resolve()}:{stat.st_mtime_ns}:{stat.st_size}:{self.info.test_size}"
        self.cache, self.batch_size = cache, batch_size
        self.from_cache: list[str] = []  # the sets whose features an earlier run extracted

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features.astype(np.float64) @ self.kernel + self.bias

    def cached(self, name: str, key: str, make: Callable[[], ImageSet]) -> ImageSet:
        digest = hashlib.sha1(f"{self.tag}|{key}".encode()).hexdigest()[:16]
        file = self.cache / f"{self.info.path.name}-{name}-{digest}.npz"
        if file.exists():
            self.from_cache.append(name)
            saved = np.load(file, allow_pickle=False)
            return ImageSet(**{k: (saved[k] if saved[k].ndim else saved[k].item())
                               for k in saved.files})
        found = make()
        self.cache.mkdir(parents=True, exist_ok=True)
        np.savez(file, **{k: v for k, v in vars(found).items() if v is not None})
        return found

    def _pass(self, dataset) -> tuple[np.ndarray, list[np.ndarray]]:
        import tensorflow as tf

        from convlab.training.features import extract

        tf.get_logger().setLevel("ERROR")  # a retrace per set (its last batch) is expected
        return extract(self.extractor, dataset, None, "features", progress=False)

    def split(self, split: str, limit: int | None) -> ImageSet:
        """A split of the run's own prepared data, as `convlab evaluate` reads it."""
        from convlab.data import load, read_manifest

        def make():
            start = time.perf_counter()
            ds = load(self.info.prepared, split, batch_size=self.batch_size,
                      image_size=self.info.test_size, training=False, cache=False,
                      deterministic=True)
            if limit:
                ds = ds.take(-(-limit // self.batch_size))
            features, (labels,) = self._pass(ds)
            names = read_manifest(self.info.prepared)["classes"]
            to_model = np.array([self.info.classes.index(c) for c in names])
            return ImageSet(features, time.perf_counter() - start, to_model[labels])

        return self.cached(split, f"{self.info.prepared.resolve()}|{split}|{limit}", make)

    def files(self, name: str, files: list, key: str, kinds: list[str] | None = None
              ) -> ImageSet:
        """Image files (paths, or bytes), decoded as `convlab predict` decodes them."""

        def make():
            import tensorflow as tf

            from convlab.data.decode import SkipImage
            from convlab.inference import decode_bytes, decode_image

            start, images, kept = time.perf_counter(), [], []
            for i, f in enumerate(files):
                try:
                    images.append(decode_bytes(f, self.info) if isinstance(f, bytes)
                                  else decode_image(f, self.info))
                    kept.append(i)
                except SkipImage:
                    pass
            if not images:
                raise SystemExit(f"{name}: none of the {len(files)} files could be decoded")
            decoded = time.perf_counter()
            ds = tf.data.Dataset.from_tensor_slices(np.stack(images)).batch(self.batch_size)
            # The same float conversion as the pipeline: cast, then divide by 255.
            ds = ds.map(lambda x: (tf.cast(x, tf.float32) / 255.0,))
            features, _ = self._pass(ds)
            return ImageSet(features, time.perf_counter() - start, None, decoded - start,
                            None if kinds is None else np.array(kinds)[kept],
                            len(files) - len(kept))

        return self.cached(name, key, make)

    def head_check(self, images: np.ndarray) -> float:
        """max |softmax(our logits) - the model's own output| on a batch: the logits are right."""
        ours = softmax(self.logits(np.asarray(self.extractor(images, training=False))), axis=1)
        return float(np.abs(ours - np.asarray(self.model(images, training=False))).max())


def sample_photos(folders: list[str], count: int, seed: int) -> list[str]:
    from convlab.inference import collect

    paths, _ = collect(folders)
    return sorted(random.Random(seed).sample(paths, min(count, len(paths))))


# ---------------------------------------------------------------------------------------------
# Scores: each method is fitted on in-scope data only, then scores (features, logits).


@dataclass
class Fitted:
    score: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (features, logits) -> scores
    state_bytes: int = 0  # what would ship beside the model (float32)


@dataclass
class InScope:
    train: ImageSet | None  # None when no method needs it
    val_features: np.ndarray
    val_logits: np.ndarray
    val_labels: np.ndarray
    temperature: float


def _squared_distances(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(n, classes) Mahalanobis distances squared: (x - m)^T P (x - m) for each mean m."""
    xp = x @ precision
    return ((xp * x).sum(1)[:, None] - 2 * xp @ means.T
            + ((means @ precision) * means).sum(1)[None, :])


def fit_mahalanobis(data: InScope, relative: bool = False) -> Fitted:
    """Lee et al. 2018: class means, one shared covariance (Ledoit-Wolf shrunk, as ~3,000
    images cannot estimate 1,280 x 1,280 entries). `relative` (Ren et al. 2021) subtracts
    the distance to one Gaussian of all training features: what every image shares (e.g.
    "is a photo") stops dominating the distance."""
    f, y = data.train.features.astype(np.float64), data.train.labels
    classes = np.unique(y)
    means = np.stack([f[y == c].mean(0) for c in classes])
    within = LedoitWolf().fit(f - means[np.searchsorted(classes, y)])
    precision, background = within.precision_, None
    if relative:
        # Shrunk as much as the class covariance: with Ledoit-Wolf's own (smaller) shrinkage
        # the background's smallest eigenvalues are smaller, its distance grows faster off
        # the training data, and the difference ranks out-of-scope images as most in-scope.
        shrunk = ShrunkCovariance(shrinkage=within.shrinkage_).fit(f)
        background = (f.mean(0, keepdims=True), shrunk.precision_)

    def score(features, _):
        x = features.astype(np.float64)
        d = _squared_distances(x, means, precision).min(1)
        return -(d - _squared_distances(x, *background)[:, 0]) if relative else -d

    d = f.shape[1]
    return Fitted(score, 4 * (len(classes) * d + d * d) * (2 if relative else 1))


def fit_knn(data: InScope, k: int) -> Fitted:
    """Sun et al. 2022: cosine similarity to the k-th nearest L2-normalised training feature."""
    bank = _unit(data.train.features.astype(np.float32))

    def score(features, _):
        similarity = _unit(features.astype(np.float32)) @ bank.T
        return np.partition(similarity, -k, axis=1)[:, -k]

    return Fitted(score, bank.nbytes)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def fit_sum(data: InScope, parts: tuple[str, ...]) -> Fitted:
    """A combination: the sum of the parts' scores, each standardised on the validation
    split (in-scope images only)."""
    fitted = [METHODS[p][1](data) for p in parts]
    ref = [f.score(data.val_features, data.val_logits) for f in fitted]
    stats = [(r.mean(), r.std()) for r in ref]

    def score(features, logits):
        return sum((f.score(features, logits) - m) / s
                   for f, (m, s) in zip(fitted, stats, strict=True))

    return Fitted(score, sum(f.state_bytes for f in fitted) + 16 * len(parts))


# name: (needs the training split's features, fit, help)
METHODS: dict[str, tuple[bool, Callable[[InScope], Fitted], str]] = {
    "msp": (False, lambda d: Fitted(lambda f, z: softmax(z, 1).max(1)),
            "maximum softmax probability"),
    "msp-T": (False, lambda d: Fitted(lambda f, z: softmax(z / d.temperature, 1).max(1), 4),
              "MSP after temperature scaling (T fitted on validation)"),
    "max-logit": (False, lambda d: Fitted(lambda f, z: z.max(1)), "largest logit"),
    "energy": (False, lambda d: Fitted(lambda f, z: logsumexp(z, 1)),
               "logsumexp of the logits (Liu et al. 2020)"),
    "mahalanobis": (True, fit_mahalanobis, "min Mahalanobis distance to a class mean"),
    "mahalanobis-rel": (True, lambda d: fit_mahalanobis(d, relative=True),
                        "relative Mahalanobis (Ren et al. 2021)"),
    "knn-1": (True, lambda d: fit_knn(d, 1), "nearest training image, cosine"),
    "knn-10": (True, lambda d: fit_knn(d, 10), "10th nearest training image, cosine"),
    "knn-10+msp-T": (True, lambda d: fit_sum(d, ("knn-10", "msp-T")),
                     "sum of the two, each standardised on validation"),
}


# ---------------------------------------------------------------------------------------------
# Metrics and calibration.


def threshold(in_scope: np.ndarray, tpr: float = TPR) -> float:
    """The largest threshold that at least `tpr` of `in_scope` reach (score >= threshold)."""
    return float(np.sort(in_scope)[int(np.floor((1 - tpr) * len(in_scope)))])


def separation(in_scope: np.ndarray, out: np.ndarray, cut: float) -> dict:
    truth = np.r_[np.ones(len(in_scope)), np.zeros(len(out))]
    return {"auroc": float(roc_auc_score(truth, np.r_[in_scope, out])),
            "fpr95": float((out >= cut).mean()), "in_scope_pass": float((in_scope >= cut).mean())}


def nll(logits: np.ndarray, labels: np.ndarray, t: float = 1.0) -> float:
    return float(-log_softmax(logits / t, axis=1)[np.arange(len(labels)), labels].mean())


def ece(logits: np.ndarray, labels: np.ndarray, t: float = 1.0) -> float:
    p = softmax(logits / t, axis=1)
    return _ece(p.max(1), p.argmax(1) == labels)


def _ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |accuracy - confidence| over equal-width bins of the top
    probability, weighted by the images in each bin."""
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return float(sum(abs(correct[which == b].mean() - confidence[which == b].mean())
                     * (which == b).mean() for b in range(bins) if (which == b).any()))


def ece_floor(logits: np.ndarray, t: float, seed: int, draws: int = 200) -> float:
    """The ECE a perfectly calibrated model with these confidences would show on this many
    images (each right with the probability it states): ECE's sampling noise, what no
    calibration can go below here."""
    confidence = softmax(logits / t, axis=1).max(1)
    rng = np.random.default_rng(seed)
    return float(np.mean([_ece(confidence, rng.random(len(confidence)) < confidence)
                          for _ in range(draws)]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising NLL (searched on log T: T in [0.05, 20])."""
    found = minimize_scalar(lambda log_t: nll(logits, labels, np.exp(log_t)),
                            bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def calibration(logits: np.ndarray, labels: np.ndarray, t: float, seed: int) -> dict:
    same = bool((logits.argmax(1) == (logits / t).argmax(1)).all())
    return {"images": len(labels), "accuracy": float((logits.argmax(1) == labels).mean()),
            "accuracy_unchanged": same,
            "nll": nll(logits, labels), "nll_T": nll(logits, labels, t),
            "ece": ece(logits, labels), "ece_T": ece(logits, labels, t),
            "ece_floor_T": ece_floor(logits, t, seed)}


def two_fold(logits: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """Held-out calibration without a test split: T fitted on one half of the validation
    split, ECE/NLL measured on the other, and the other way round, pooled."""
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = order[: len(order) // 2], order[len(order) // 2:]
    temps, scaled = [], np.empty_like(logits)
    for fit, held in (halves, halves[::-1]):
        temps.append(fit_temperature(logits[fit], labels[fit]))
        scaled[held] = logits[held] / temps[-1]
    return {"temperatures": temps, "images": len(labels), "ece": ece(logits, labels),
            "ece_T": ece(scaled, labels), "nll": nll(logits, labels), "nll_T": nll(scaled, labels)}


# ---------------------------------------------------------------------------------------------
# One run.


def per_image_ms(score: Callable, features: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """(batched, one image at a time) milliseconds per image of a score, given the features."""
    batched = min(_seconds(lambda: score(features, logits)) for _ in range(3)) / len(features)
    n = min(100, len(features))
    single = np.median([_seconds(lambda i=i: score(features[i:i + 1], logits[i:i + 1]))
                        for i in range(n)])
    return 1000 * batched, 1000 * float(single)


def _seconds(work: Callable) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def image_sets(ex: Extractor, photos: list[str], args) -> tuple[dict, ImageSet | None, dict]:
    """(in-scope sets, the training split or None, out-of-scope sets) of one run."""
    from convlab.data import read_manifest

    limit = QUICK_LIMIT if args.quick else None
    splits = read_manifest(ex.info.prepared)["counts"]["per_split"]
    inside = {s: ex.split(s, limit) for s in ("validation", "test") if splits.get(s)}
    train = ex.split("train", limit) if any(METHODS[m][0] for m in args.methods) else None
    paths = sample_photos(photos, limit or args.max_photos, args.seed)
    count = min(limit or args.synthetic, args.synthetic)
    synthetic, kinds = synthetic_images(count, ex.info.stored_size, args.seed)
    # The generators' source is part of the key: editing one remakes the images.
    made_by = "".join(inspect.getsource(f) for f in (_colour, *SYNTHETIC.values())) + str(WORDS)
    key = f"{count}|{args.seed}|{hashlib.sha1(made_by.encode()).hexdigest()}"
    outside = {"photos": ex.files("photos", paths, "|".join(paths)),
               "synthetic": ex.files("synthetic", synthetic, key, kinds)}
    return inside, train, outside


def calibrate(ex: Extractor, inside: dict, seed: int) -> dict:
    val = inside["validation"]
    logits = ex.logits(val.features)
    t = fit_temperature(logits, val.labels)
    found = {"temperature": t, "validation": calibration(logits, val.labels, t, seed),
             "validation_2fold": two_fold(logits, val.labels, seed)}
    if "test" in inside:
        test = inside["test"]
        found["test"] = calibration(ex.logits(test.features), test.labels, t, seed)
    return found


def score_all(ex: Extractor, data: InScope, inside: dict, outside: dict, methods: list[str]
              ) -> tuple[dict, list[dict], dict]:
    """Per method: (cost and threshold, separation per in-scope x out-of-scope set,
    synthetic images passing by kind)."""
    costs, results, by_kind = {}, [], {}
    kinds = outside["synthetic"].kinds
    val = inside["validation"]
    for name in methods:
        needs, fit, help_text = METHODS[name]
        start = time.perf_counter()
        fitted = fit(data)
        fit_s = time.perf_counter() - start
        scores = {k: fitted.score(s.features, ex.logits(s.features))
                  for k, s in {**inside, **outside}.items()}
        cut = threshold(scores["validation"])
        results += [{"in_scope": where, "ood": ood, "method": name,
                     **separation(scores[where], scores[ood], cut)}
                    for where in inside for ood in outside]
        by_kind[name] = {k: float((scores["synthetic"][kinds == k] >= cut).mean())
                         for k in SYNTHETIC if (kinds == k).any()}
        batched, single = per_image_ms(fitted.score, val.features, ex.logits(val.features))
        costs[name] = {"help": help_text, "needs_training_features": needs, "fit_s": fit_s,
                       "ms_per_image_batched": batched, "ms_per_image_single": single,
                       "state_bytes": fitted.state_bytes, "threshold": cut}
    return costs, results, by_kind


def measure_run(run: str, photos: list[str], args) -> dict:
    ex = Extractor(run, args.model, Path(args.cache), args.batch_size)
    print(f"\n== {run}: {len(ex.info.classes)} classes at {ex.info.test_size} px", flush=True)
    inside, train, outside = image_sets(ex, photos, args)
    calib = calibrate(ex, inside, args.seed)
    val = inside["validation"]
    data = InScope(train, val.features, ex.logits(val.features), val.labels,
                   calib["temperature"])
    costs, results, by_kind = score_all(ex, data, inside, outside, args.methods)
    sets = {**inside, **({"train": train} if train else {}), **outside}
    # Any images check the head's maths; these need no data.
    size = ex.info.test_size
    probe = np.stack([gradient(np.random.default_rng([args.seed, i]), size) for i in range(4)])
    return {
        "run": run, "model": args.model, "classes": ex.info.classes, "image_size": size,
        "photos_from": photos,
        "images": {k: len(s.features) for k, s in sets.items()},
        "skipped_files": {k: s.skipped for k, s in outside.items()},
        "head_check_max_abs_diff": ex.head_check(probe.astype(np.float32) / 255),
        "feature_pass": {k: {"seconds": s.seconds, "decode_seconds": s.decode_seconds,
                             "ms_per_image": 1000 * s.seconds / len(s.features),
                             "from_cache": k in ex.from_cache}
                         for k, s in sets.items()},
        "calibration": calib, "methods": costs, "results": results,
        "synthetic_pass_by_kind": by_kind,
    }


# ---------------------------------------------------------------------------------------------
# Printing.


def print_run(r: dict) -> None:
    images = ", ".join(f"{k} {v}" for k, v in r["images"].items())
    print(f"\n## {r['run']} ({len(r['classes'])} classes, {r['image_size']} px): {images}")
    print(f"photos from: {' '.join(r['photos_from'])}; head check: max |softmax(features @ W "
          f"+ b) - model output| = {r['head_check_max_abs_diff']:.1e}")
    for where in dict.fromkeys(x["in_scope"] for x in r["results"]):
        rows = {}
        for x in r["results"]:
            if x["in_scope"] == where:
                rows.setdefault(x["method"], {})[x["ood"]] = x
        print(f"\nin-scope = {where} (threshold: the one 95% of validation pass)\n")
        print("| method | photos AUROC | photos FPR@95 | synthetic AUROC | synthetic FPR@95 | "
              f"{where} pass |")
        print("|---|---:|---:|---:|---:|---:|")
        for m, row in rows.items():
            p, s = row["photos"], row["synthetic"]
            print(f"| {m} | {p['auroc']:.4f} | {p['fpr95']:.1%} | {s['auroc']:.4f} | "
                  f"{s['fpr95']:.1%} | {p['in_scope_pass']:.1%} |")
    kinds = list(next(iter(r["synthetic_pass_by_kind"].values())))
    print("\nsynthetic images passing the threshold, by kind\n")
    print(f"| method | {' | '.join(kinds)} |\n|---|{'---:|' * len(kinds)}")
    for m, row in r["synthetic_pass_by_kind"].items():
        print(f"| {m} | {' | '.join(f'{row[k]:.0%}' for k in kinds)} |")
    print("\ncost per image (the shared feature pass aside), one-time fit, state to ship\n")
    print("| method | batched ms | single ms | fit s | state |\n|---|---:|---:|---:|---:|")
    for m, x in r["methods"].items():
        print(f"| {m} | {x['ms_per_image_batched']:.4f} | {x['ms_per_image_single']:.3f} | "
              f"{x['fit_s']:.2f} | {x['state_bytes'] / 2**20:.2f} MiB |")
    passes = ", ".join(f"{k} {v['ms_per_image']:.1f} ms/image ({v['seconds']:.0f} s"
                       + (f", {v['decode_seconds']:.0f} s decoding" if v["decode_seconds"] else "")
                       + ")" for k, v in r["feature_pass"].items())
    cached = [k for k, v in r["feature_pass"].items() if v["from_cache"]]
    print(f"\nfeature passes: {passes}"
          + (f"; from the cache (times from when extracted): {', '.join(cached)}" if cached else ""))
    c = r["calibration"]
    same = all(x.get("accuracy_unchanged", True) for x in c.values() if isinstance(x, dict))
    print(f"\ncalibration: T = {c['temperature']:.3f} (fitted on validation; 2-fold: "
          f"{', '.join(f'{t:.3f}' for t in c['validation_2fold']['temperatures'])}); "
          f"predicted classes unchanged by T: {'all' if same else 'NOT ALL'}\n")
    print("| measured on | images | accuracy | NLL | NLL (T) | ECE | ECE (T) | ECE floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, x in c.items():
        if isinstance(x, dict):
            acc = f"{x['accuracy']:.4f}" if "accuracy" in x else "-"
            floor = f"{x['ece_floor_T']:.2%}" if "ece_floor_T" in x else "-"
            print(f"| {name} | {x['images']} | {acc} | {x['nll']:.4f} | {x['nll_T']:.4f} | "
                  f"{x['ece']:.2%} | {x['ece_T']:.2%} | {floor} |")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.exists() else []
    return f"{names[0] if names else cpu}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="+", action="append", required=True,
                        metavar=("RUN", "PHOTOS"),
                        help="a run folder, then the photo folders its out-of-scope photos "
                             "are sampled from (repeat --run for more runs)")
    parser.add_argument("--max-photos", type=int, default=700)
    parser.add_argument("--synthetic", type=int, default=300)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--model", default="best", choices=["best", "final"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache", default="/tmp/convlab-out-of-scope")
    parser.add_argument("--out", default="benchmarks/results/out_of_scope.json")
    parser.add_argument("--quick", action="store_true",
                        help=f"at most {QUICK_LIMIT} images per set: a smoke run")
    args = parser.parse_args(argv)
    args.methods = args.methods.split(",")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or any(len(r) < 2 for r in args.run):
        parser.error(f"unknown methods {unknown}" if unknown else
                     "--run needs a run folder and at least one photo folder")

    start = time.perf_counter()
    runs = [measure_run(r[0], r[1:], args) for r in args.run]
    for r in runs:
        print_run(r)
    wall = time.perf_counter() - start
    import keras
    import tensorflow as tf

    result = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
              "settings": {k: v for k, v in vars(args).items() if k != "run"},
              "tpr": TPR, "ece_bins": ECE_BINS, "wall_s": wall, "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwall time {wall:.0f} s; results in {out}")
    return result


if __name__ == "__main__":
    main()
