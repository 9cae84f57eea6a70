"""The one road from images to what convlab says about them: calibrated class probabilities,
and whether a photo looks like one of the run's classes at all.

`Predictor` runs a run's model on a batch and returns `Outputs`; `convlab predict`, the Python
API (`convlab.load`), the web page and the JSON API all call it, so a probability is the same
number wherever it is shown.

Two things are fitted after training, on the run's validation split, by `calibrate` (run at
the end of `convlab train`, or as `convlab calibrate RUN`) and kept in the run folder:

- **A temperature** T (Guo et al. 2017): probabilities become softmax(log p / T), the one
  scalar that minimises the validation split's negative log-likelihood. The order of the
  classes, so the accuracy, does not change. convlab's recipes train with label smoothing,
  which leaves probabilities under-confident: T < 1 sharpens them.
- **An out-of-scope score**: the cosine similarity of a photo's pooled features to its 10th
  nearest training photo (Sun et al. 2022), with the threshold that 95% of the validation
  photos reach. A photo below it is "none of the classes". Chosen by measurement
  (benchmarks/out_of_scope.py, BENCHMARKS.md): the maximum probability, max-logit and energy
  pass flat colours and gradients as confidently as flowers; the features do not.

A run without them (trained before, or without a validation split) still predicts, with
its model's own probabilities, and says it is uncalibrated.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from convlab.errors import ConvlabError
from convlab.files import write_text_atomic
from convlab.runs import RunFolder, RunInfo, load_run_model, read_record, run_info

NEIGHBOURS = 10  # the k of the k-th nearest training photo
PASS_RATE = 0.95  # the share of in-scope validation photos the threshold lets through
ECE_BINS = 15
TTA_MODES = ("none", "flip")


# ---- pixels ----------------------------------------------------------------------------


def to_unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], as the training pipeline converts them (cast, then
    divide by 255: bit for bit the same floats)."""
    return np.asarray(pixels).astype(np.float32) / np.float32(255.0)


def to_pixels(unit: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 pixels: the inverse of `to_unit`, exact on its floats."""
    return np.round(np.asarray(unit) * 255).astype(np.uint8)


def check_tta(tta: str | None) -> str:
    """The test-time augmentation mode ("none" for None); ConvlabError for an unknown one."""
    tta = tta or "none"
    if tta not in TTA_MODES:
        raise ConvlabError(f"--tta must be one of {', '.join(TTA_MODES)}, received: {tta!r}")
    return tta


# ---- the measures ----------------------------------------------------------------------


def tempered(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the same ranking of classes, sharper (T < 1) or softer (T > 1)."""
    z = np.log(np.maximum(np.asarray(probs, np.float64), 1e-300)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(p, 1e-300)).mean())


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
                     ) -> list[tuple[float, float, float]]:
    """(mean top probability, share right, share of the images) of each non-empty
    equal-width bin of the top probability: the reliability diagram's points."""
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return [(float(confidence[which == b].mean()), float(correct[which == b].mean()),
             float((which == b).mean())) for b in range(bins) if (which == b).any()]


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |accuracy - confidence| over equal-width bins of the top
    probability, weighted by the share of images in each bin."""
    return float(sum(abs(right - sure) * share
                     for sure, right, share in reliability_bins(probs, labels, bins)))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the NLL of `tempered(probs, T)` (searched on log T)."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(lambda log_t: nll(tempered(probs, np.exp(log_t)), labels),
                            bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def unit(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float32)
    return features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)


def knn_scores(features: np.ndarray, bank: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Cosine similarity of each row of `features` to its k-th nearest row of `bank` (unit
    rows): high for photos like the training photos, low for anything else."""
    k = min(k, len(bank))
    similarity = unit(features) @ np.asarray(bank, np.float32).T
    return np.partition(similarity, -k, axis=1)[:, -k]


# ---- what a run keeps ------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """A run's temperature and out-of-scope threshold (calibration.json), and the unit
    training features the score compares with (calibration-features.npy, float16)."""

    model_file: str  # the model file it was fitted for: best.keras or model.keras
    temperature: float
    threshold: float | None  # None: the model has no pooled features (the dense baseline)
    neighbours: int = NEIGHBOURS
    measured: dict = field(default_factory=dict)  # validation NLL / ECE before and after, ...
    bank: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, run: str | os.PathLike, model_file: str) -> Calibration | None:
        """The run's calibration for `model_file`; None when it has none (an older run, no
        validation split, or fitted for the other model file)."""
        folder = RunFolder(run)
        try:
            saved = json.loads(folder.calibration.read_text())
            if saved.get("model_file") != model_file:
                return None
            bank = np.load(folder.feature_bank) if saved.get("threshold") is not None else None
            return cls(saved["model_file"], float(saved["temperature"]), saved.get("threshold"),
                       int(saved.get("neighbours", NEIGHBOURS)), saved.get("measured", {}), bank)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or damaged: uncalibrated, and said so

    def summary(self) -> str:
        """What was fitted and measured, in one line."""
        m = self.measured
        line = (f"temperature {self.temperature:.3f}: on {m['images']} validation photos, NLL "
                f"{m['nll']:.3f} -> {m['nll_calibrated']:.3f}, ECE {m['ece']:.1%} -> "
                f"{m['ece_calibrated']:.1%} (accuracy {m['accuracy']:.1%}, unchanged)")
        if self.threshold is not None:
            line += (f"; \"none of the classes\" below a score of {self.threshold:.3f} "
                     f"({m['validation_passing']:.1%} of the validation photos pass)")
        return line

    def save(self, run: str | os.PathLike) -> None:
        folder = RunFolder(run)
        if self.bank is not None:
            np.save(folder.feature_bank, self.bank.astype(np.float16))
        saved = {k: v for k, v in asdict(self).items() if k != "bank"}
        write_text_atomic(folder.calibration, json.dumps(saved, indent=1))


@dataclass(frozen=True)
class Outputs:
    """What the model says about a batch."""

    probabilities: np.ndarray  # (N, classes), calibrated when the run is
    raw: np.ndarray  # the model's own probabilities
    features: np.ndarray | None  # (N, channels) pooled; None for the dense baseline
    scores: np.ndarray | None  # out-of-scope score per image; None when not calibrated
    in_scope: np.ndarray | None  # bool per image: score >= the run's threshold
    maps: np.ndarray | None  # (N, h, w) heat maps of the top class, when asked for

    @staticmethod
    def join(parts: list[Outputs], classes: int) -> Outputs:
        """The outputs of several batches as one (heat maps left out)."""
        if not parts:
            empty = np.zeros((0, classes), np.float32)
            return Outputs(empty, empty, None, None, None, None)
        return Outputs(*(None if getattr(parts[0], f.name) is None or f.name == "maps" else
                         np.concatenate([getattr(p, f.name) for p in parts])
                         for f in fields(Outputs)))

    def row(self, i: int) -> Outputs:
        """Image i's outputs, as a batch of one."""
        return Outputs(*(None if (v := getattr(self, f.name)) is None else v[i:i + 1]
                         for f in fields(self)))


class Predictor:
    """A run's model with its calibration: float [0, 1] or uint8 images in, `Outputs` out.

    Args:
        run: a run folder written by `convlab.train`.
        model: "best" or "final".
        image_size: the size the model takes (default: the run's test size).
        calibrated: False: the model's own probabilities and no out-of-scope score (what
            `calibrate` fits on).
    """

    def __init__(self, run: str | os.PathLike, model: str = "best", *,
                 image_size: int | None = None, calibrated: bool = True):
        from convlab.evaluation.gradcam import HeatMaps

        self.info = run_info(run)
        self.model, self.path = load_run_model(run, model, image_size=image_size)
        self.calibration = Calibration.load(run, self.path.name) if calibrated else None
        try:
            self.heat_maps: HeatMaps | None = HeatMaps(self.model)
        except ConvlabError:
            self.heat_maps = None  # the dense baseline: no feature map
        self._forward = self.model.predict_on_batch

    @classmethod
    def of_model(cls, model, info: RunInfo, path: Path, calibration: Calibration | None
                 ) -> Predictor:
        """A `Predictor` of a model already in memory (export's float32 rebuild of a run's
        model, the reference its exports are verified against): probabilities only, calibrated
        with `calibration` when given; no pooled features, so no out-of-scope score and no
        heat maps. Each batch is one direct call of the model, in inference mode."""
        self = cls.__new__(cls)
        self.info, self.model, self.path, self.calibration = info, model, path, calibration
        self.heat_maps = None
        self._forward = lambda x: model(x, training=False)
        return self

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def __call__(self, images: np.ndarray, *, tta: str | None = None,
                 heat: bool = False) -> Outputs:
        """`Outputs` of a batch: uint8 (N, S, S, 3) as decoded, or float32 in [0, 1]."""
        x = np.asarray(images)
        if x.dtype == np.uint8:
            x = to_unit(x)
        tta = check_tta(tta)
        features = maps = None
        if self.heat_maps is not None:
            feature_maps, raw = self.heat_maps.outputs(x)
            features = feature_maps.mean(axis=(1, 2))
            if heat:
                maps = self.heat_maps.maps(feature_maps, raw.argmax(1))
        else:
            raw = self.probabilities(x)
        if tta == "flip":  # the mean with the mirror image's (training flips photos)
            raw = (raw + self.probabilities(x[:, :, ::-1])) / 2
        cal = self.calibration
        if cal is None:
            return Outputs(raw, raw, features, None, None, maps)
        scores = (knn_scores(features, cal.bank, cal.neighbours)
                  if cal.bank is not None and features is not None else None)
        return Outputs(tempered(raw, cal.temperature), raw, features, scores,
                       None if scores is None else scores >= cal.threshold, maps)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """The model's own probabilities of a float [0, 1] batch, without its features."""
        return np.asarray(self._forward(x), np.float32)

    def describe(self) -> str:
        """One line: what the probabilities and the out-of-scope answer mean for this run."""
        cal = self.calibration
        if cal is None:
            return ("uncalibrated: the model's own probabilities, and no \"none of the "
                    "classes\" answer (run `convlab calibrate RUN` to fit them)")
        scope = (f"photos scoring below {cal.threshold:.3f} (which 5% of its validation photos "
                 "do) are \"none of the classes\"" if cal.threshold is not None else
                 "no \"none of the classes\" answer (the model has no pooled features)")
        return f"calibrated (temperature {cal.temperature:.3f}); {scope}"


# ---- answers ---------------------------------------------------------------------------


NONE_OF_THE_CLASSES = "none of the classes"


def verdict(score: float, threshold: float) -> str:
    """How a rejected image's answer reads: 'none of the classes (score 0.41 < 0.53)'."""
    return f"{NONE_OF_THE_CLASSES} (score {score:.3f} < {threshold:.3f})"


class TopK(list):
    """The k most probable classes of one image, most probable first ([{"class",
    "probability"}, ...]), and the run's verdict on whether the image is one of its classes
    at all: `none_of_the_classes` (True, False, or None when the run is not calibrated),
    with the `score` and the `threshold` it was compared with."""

    def __init__(self, top: list[dict], score: float | None = None,
                 threshold: float | None = None, in_scope: bool | None = None,
                 reject: bool = True):
        super().__init__(top)
        self.score, self.threshold = score, threshold
        self.none_of_the_classes = None if in_scope is None or not reject else not in_scope

    def verdict(self) -> str | None:
        """`verdict` for a rejected image, else None."""
        return verdict(self.score, self.threshold) if self.none_of_the_classes else None

    def as_dict(self) -> dict:
        """The JSON form: {"predictions": [...], "none_of_the_classes", "score",
        "threshold"}."""
        return {"predictions": list(self), "none_of_the_classes": self.none_of_the_classes,
                "score": None if self.score is None else round(float(self.score), 4),
                "threshold": None if self.threshold is None else round(float(self.threshold), 4)}

    def __repr__(self) -> str:
        verdict = self.verdict()
        return f"{verdict}; {list.__repr__(self)}" if verdict else list.__repr__(self)


def answers(outputs: Outputs, predictor: Predictor, k: int, reject: bool = True
            ) -> list[TopK]:
    """The top-k classes and the verdict of each image of a batch."""
    order = np.argsort(-outputs.probabilities, axis=1, kind="stable")[:, :k]
    cal = predictor.calibration
    threshold = cal.threshold if cal is not None else None
    unknown = [None] * len(order)
    scores = outputs.scores if outputs.scores is not None else unknown
    in_scope = outputs.in_scope if outputs.in_scope is not None else unknown
    return [TopK([{"class": predictor.classes[j], "probability": float(p[j])} for j in row],
                 None if s is None else float(s), threshold,
                 None if inside is None else bool(inside), reject)
            for p, row, s, inside in zip(outputs.probabilities, order, scores, in_scope,
                                         strict=True)]


# ---- fitting ---------------------------------------------------------------------------


def _pass(predictor: Predictor, prepared: Path, split: str, batch_size: int,
          progress) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(labels, the model's own probabilities, pooled features or None) of a prepared split,
    un-augmented, at the predictor's size."""
    from convlab.data.pipeline import load

    ds = load(prepared, split, batch_size=batch_size, image_size=predictor.info.test_size,
              training=False, cache=False, deterministic=True)
    labels, raw, features = [], [], []
    for x, y in ds:
        out = predictor(x.numpy())
        labels.append(y.numpy())
        raw.append(out.raw)
        if out.features is not None:
            features.append(out.features)
        progress(len(labels[-1]))
    return (np.concatenate(labels), np.concatenate(raw),
            np.concatenate(features) if features else None)


def calibrate(run: str | os.PathLike, model: str = "best", *, batch_size: int = 32,
              progress: bool = True) -> Calibration:
    """Fit and save the run's temperature and out-of-scope threshold (see the module's
    docstring): one pass over the validation split and one over the training split, both at
    the run's test size without augmentation.

    Returns:
        The `Calibration`, its `measured` holding the validation split's accuracy, NLL and
        ECE before and after, and the share of validation photos that pass.

    Raises:
        ConvlabError: the run's prepared data is gone or has no validation split.
    """
    from convlab.data.manifest import read_manifest
    from convlab.progress import progress_bar

    predictor = Predictor(run, model, calibrated=False)
    info, record = predictor.info, read_record(run)
    if info.prepared is None:
        raise ConvlabError(f"the run's prepared data ('{record.prepared_data}') is not there "
                           "any more; calibration is fitted on its validation split")
    manifest = read_manifest(info.prepared)
    if not manifest.has_split("validation"):
        raise ConvlabError(f"'{info.prepared}' has no validation split to calibrate on; "
                           "prepare the photos with --val-fraction above 0 and train again")
    total = manifest.count("validation") + manifest.count("train")
    with progress_bar(progress, total, "calibrating") as advance:
        labels, raw, features = _pass(predictor, info.prepared, "validation", batch_size,
                                      advance)
        _, _, train = _pass(predictor, info.prepared, "train", batch_size, advance)
    temperature = fit_temperature(raw, labels)
    calibrated = tempered(raw, temperature)
    measured = {"images": int(len(labels)), "accuracy": float((raw.argmax(1) == labels).mean()),
                "nll": nll(raw, labels), "nll_calibrated": nll(calibrated, labels),
                "ece": ece(raw, labels), "ece_calibrated": ece(calibrated, labels),
                "ece_bins": ECE_BINS}
    bank = threshold = None
    if features is not None:
        bank = unit(train).astype(np.float16)
        scores = knn_scores(features, bank)
        # the largest threshold that at least PASS_RATE of the validation photos reach
        threshold = float(np.sort(scores)[int((1 - PASS_RATE) * len(scores))])
        measured.update(training_photos=int(len(bank)),
                        validation_passing=float((scores >= threshold).mean()))
    result = Calibration(predictor.path.name, temperature, threshold, NEIGHBOURS, measured,
                         bank)
    result.save(run)
    return result
