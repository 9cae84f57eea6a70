"""Hyperparameter search with KerasTuner, through the same engine as `convlab train`.

Each trial is an ordinary run (`convlab.training.trainer.train` into TUNE/trials/), so it
can be inspected, evaluated and exported like any other. KerasTuner's oracle (Hyperband by
default, Bayesian optimisation or random search as options) proposes the settings and keeps
its state in TUNE/oracle/: the same command after Ctrl-C or a kill continues the search with
the finished trials kept. The search space is a list of config keys (the `--set` keys) with
ranges; each model family declares one (`SPACES`), and `space=` / `--hp` narrows, widens or
drops entries.

A trial's score is its last epoch's validation accuracy. A trial that fails (an error, a
NaN loss) is recorded as failed and the search goes on. At the end: TUNE/results.json (every
trial's settings, score, run folder, seconds), best.json (the base config with the best
settings, at the full number of epochs: `convlab train --config TUNE/best.json` retrains
from it), plots and tune.html.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from convlab.config import TrainConfig, named_config
from convlab.errors import ConvlabError
from convlab.files import figure, write_text_atomic

if TYPE_CHECKING:
    from convlab.training.trainer import AfterFit


@dataclass(frozen=True)
class Range:
    """One searched config key: floats in [low, high] (log-uniform when `log`), or one of
    `values`."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple | None = None

    def describe(self) -> str:
        if self.values is not None:
            return f"{self.key} in {list(self.values)}"
        return f"{self.key} in [{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"


_SCRATCH = (Range("schedule.learning_rate", 3e-4, 1e-2, log=True),
            Range("weight_decay", 1e-5, 1e-1, log=True),
            Range("label_smoothing", 0.0, 0.2),
            Range("augment.zoom", 0.5, 0.95),
            Range("model_options.dropout", 0.0, 0.5))
_PRETRAINED = (Range("schedule.learning_rate", 3e-4, 1e-2, log=True),
               Range("label_smoothing", 0.0, 0.2),
               Range("model_options.dropout", 0.0, 0.5),
               Range("fine_tune_schedule.learning_rate", 2e-5, 1e-3, log=True))
# The search space each model family declares (config keys as `--set` takes them).
SPACES = {
    "dense": (Range("schedule.learning_rate", 1e-4, 1e-2, log=True),
              Range("model_options.dropout", 0.0, 0.5)),
    "convnet": _SCRATCH,
    "squeezenet": _SCRATCH + (Range("model_options.width", values=(0.75, 1.0, 1.5)),),
}
OBJECTIVE = "val_accuracy"
ALGORITHMS = ("hyperband", "bayesian", "random")


def default_space(config: TrainConfig) -> list[Range]:
    """The model family's space, without what the config cannot use (weight decay without
    AdamW, the fine-tune LR without a fine-tune phase)."""
    from convlab.models import get_model_info

    # a model without a space of its own gets none (an error that says so), not another's
    space = SPACES.get(config.model) or (
        _PRETRAINED if get_model_info(config.model).pretrained else ())
    return [r for r in space
            if not (r.key == "weight_decay" and config.optimizer != "adamw")
            and not (r.key.startswith("fine_tune") and not config.fine_tune_epochs)
            and not (r.key.startswith("augment.") and config.augment is None)]


def parse_range(text: str) -> tuple[str, Range | None]:
    """`KEY=LOW:HIGH[:log]`, `KEY=A,B,C` or `KEY=none` (drop it) -> (key, Range or None).

    Raises:
        ConvlabError: a malformed or empty range.
    """
    key, sep, spec = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key or not spec:
        raise ConvlabError(f"--hp takes KEY=LOW:HIGH[:log], KEY=A,B,C or KEY=none, received: "
                           f"{text!r}")
    if spec == "none":
        return key, None
    if ":" in spec:
        parts = spec.split(":")
        try:
            low, high = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise ConvlabError(f"--hp {text!r}: LOW and HIGH must be numbers") from None
        log = parts[2:] == ["log"]
        if len(parts) > 3 or (len(parts) == 3 and not log):
            raise ConvlabError(f"--hp {text!r}: the third part may only be 'log'")
        if not low < high:
            raise ConvlabError(f"--hp {text!r}: an empty range (LOW must be below HIGH)")
        if log and low <= 0:
            raise ConvlabError(f"--hp {text!r}: a log range needs LOW > 0")
        return key, Range(key, low, high, log=log)
    values = tuple(json.loads(v) if _is_json(v) else v for v in spec.split(",") if v)
    if not values:
        raise ConvlabError(f"--hp {text!r}: no values")
    return key, Range(key, values=values)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def resolve_space(config: TrainConfig, changes: list[str] | None) -> list[Range]:
    """The default space with `--hp` changes applied, each key checked against the config.

    Raises:
        ConvlabError: an unknown key, a bad range, or nothing left to search.
    """
    space = {r.key: r for r in default_space(config)}
    for text in changes or []:
        key, rng = parse_range(text)
        if rng is None:
            space.pop(key, None)
        else:
            space[key] = rng
    for rng in space.values():  # a key the config does not have is an error now, not later
        sample = rng.values[0] if rng.values is not None else rng.low
        try:
            config.with_settings([f"{rng.key}={json.dumps(sample)}"]).validate()
        except ConvlabError as err:
            raise ConvlabError(f"hyperparameter {rng.key!r}: {err}") from None
    if not space:
        raise ConvlabError(f"the search space of {config.model!r} is empty (its family declares "
                           "none in convlab.training.tune.SPACES, or --hp removed every key); "
                           "add a range with --hp KEY=LOW:HIGH")
    return list(space.values())


def _settings(values: dict, space: list[Range]) -> list[str]:
    return [f"{r.key}={json.dumps(values[r.key])}" for r in space if r.key in values]


def _tuner_class():
    import keras_tuner as kt

    class ConvlabTuner(kt.engine.base_tuner.BaseTuner):
        """KerasTuner's search loop, each trial a `convlab train` run."""

        def __init__(self, oracle, *, search: Search, **kwargs):
            self.search_spec = search
            super().__init__(oracle, hypermodel=None, **kwargs)

        def pre_create_trial(self):
            spec, done = self.search_spec, len(self.oracle.trials)
            over = spec.budget_seconds and time.time() - spec.started >= spec.budget_seconds
            if done >= spec.trials or over:
                self.oracle.max_trials = done  # the oracle then stops the search

        def run_trial(self, trial, *args, **kwargs):
            return self.search_spec.run_trial(trial)

        def save_model(self, trial_id, model, step=0):
            pass  # each trial's run folder holds its models

        def load_model(self, trial):
            raise NotImplementedError("load a trial's run with convlab.load(RUN)")

    return ConvlabTuner


class Search:
    """One search: its folder, base config, space and bookkeeping."""

    def __init__(self, base: TrainConfig, space: list[Range], folder: Path, *,
                 budget_seconds: float | None, progress: bool, trials: int,
                 after_fit: AfterFit | None = None):
        self.base, self.space, self.folder = base, space, folder
        self.budget_seconds, self.progress, self.trials = budget_seconds, progress, trials
        self.after_fit = after_fit  # what follows each trial's fitting, as for `train`
        self.started = time.time()
        self.durations: list[float] = []

    def hyperparameters(self, hp) -> dict:
        values = {}
        for r in self.space:
            if r.values is not None:
                values[r.key] = hp.Choice(r.key, list(r.values))
            else:
                values[r.key] = hp.Float(r.key, r.low, r.high,
                                         sampling="log" if r.log else "linear")
        return values

    def run_trial(self, trial) -> dict:
        import keras_tuner as kt

        from convlab.runs import RunFolder, read_record
        from convlab.training.trainer import train

        hp = trial.hyperparameters
        values = {r.key: hp.get(r.key) for r in self.space}
        epochs = int(hp.values.get("tuner/epochs", self.base.epochs))
        config = self.base.with_settings(_settings(values, self.space)).override(
            epochs=epochs, runs_dir=str(self.folder / "trials"), name=f"trial-{trial.trial_id}",
            report=False)
        shown = ", ".join(f"{k.split('.')[-1]}={short_value(v)}" for k, v in values.items())
        path = self.folder / "trial_results.json"
        done = json.loads(path.read_text()).get(trial.trial_id) if path.exists() else None
        if done is not None and done["values"] == values:
            # finished, but the search was stopped before KerasTuner saved that: not run again
            print(f"trial {trial.trial_id}: {shown}: finished before the search stopped, "
                  f"{OBJECTIVE} {done['score']:.4f} kept", flush=True)
            return {OBJECTIVE: float(done["score"])}
        print(f"trial {trial.trial_id}: {shown}, {epochs} epoch(s)", flush=True)
        start = time.time()
        try:
            run = train(config, progress=self.progress, after_fit=self.after_fit)
        except ConvlabError as err:
            raise kt.errors.FailedTrialError(str(err)) from None
        seconds = time.time() - start
        self.durations.append(seconds)
        summary = json.loads(RunFolder(run).summary_json.read_text())
        final = summary.get("final", {})
        score = final.get(OBJECTIVE)
        if score is None or not math.isfinite(final.get("loss", math.nan)):
            raise kt.errors.FailedTrialError(f"trial {trial.trial_id}: the loss is "
                                             f"{final.get('loss')} (diverged); see {run}")
        _record(self.folder, trial.trial_id, {"values": values, "score": score,
                                              "epochs": epochs, "run": str(read_record(run).path),
                                              "seconds": round(seconds, 1)})
        elapsed = time.time() - self.started
        left = (f", ~{_minutes(self.budget_seconds - elapsed)} of the budget left"
                if self.budget_seconds else "")
        print(f"trial {trial.trial_id}: {OBJECTIVE} {score:.4f} in {_minutes(seconds)} "
              f"(search: {_minutes(elapsed)}{left})", flush=True)
        if self.budget_seconds and len(self.durations) == 1 and seconds > self.budget_seconds:
            raise kt.errors.FatalError(
                f"the budget of {_minutes(self.budget_seconds)} is too small for one trial "
                f"(the first took {_minutes(seconds)}); raise --budget-minutes or lower "
                "--epochs")
        return {OBJECTIVE: float(score)}


def short_value(value) -> str:
    """A searched value as a table shows it."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _minutes(seconds: float) -> str:
    return f"{max(seconds, 0) / 60:.1f} min"


def _record(folder: Path, trial_id: str, row: dict) -> None:
    path = folder / "trial_results.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    rows[trial_id] = row
    write_text_atomic(path, json.dumps(rows, indent=1))


def _oracle(algorithm: str, trials: int, max_epochs: int, seed: int, hp):
    import keras_tuner as kt

    common = {"objective": kt.Objective(OBJECTIVE, direction="max"), "seed": seed,
              "hyperparameters": hp, "tune_new_entries": False,
              # failed trials are recorded and the search goes on, up to `trials` in a row
              "max_consecutive_failed_trials": max(3, trials)}
    if algorithm == "hyperband":  # its brackets decide the count; `trials` caps it
        return kt.oracles.HyperbandOracle(max_epochs=max(max_epochs, 2), factor=3, **common)
    if algorithm == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=trials, **common)
    return kt.oracles.RandomSearchOracle(max_trials=trials, **common)


def tune(config: TrainConfig | str, *, trials: int = 10, budget_minutes: float | None = None,
         algorithm: str = "hyperband", space: list[str] | None = None,
         out: str | os.PathLike | None = None, overwrite: bool = False, seed: int = 0,
         progress: bool = False, after_fit: AfterFit | None = None, **overrides) -> dict:
    """Search hyperparameters for a recipe or model; see the module docstring.

    Args:
        config: a `TrainConfig`, or a recipe or model name.
        trials: at most this many trials.
        budget_minutes: no new trial starts after this many minutes (None: no limit).
        algorithm: "hyperband" (trials of growing length, up to the config's epochs),
            "bayesian" or "random" (every trial at the config's epochs).
        space: `--hp` changes to the family's space: "KEY=LOW:HIGH[:log]", "KEY=A,B,C",
            "KEY=none".
        out: the search folder (default RUNS_DIR/tune-NAME); the same folder continues a
            search.
        overwrite: start over in `out`, forgetting its trials.
        seed: the oracle's seed.
        progress: progress bars in each trial (else one line per epoch).
        after_fit: what follows each trial's fitting, as for `convlab.training.trainer.train`
            (`convlab.workflow.tune` calibrates each trial's model).
        **overrides: `TrainConfig` fields for every trial (data, image_size, ...).

    Returns:
        The contents of results.json: the search, every trial (settings, score, run
        folder), the best, and the files written.

    Raises:
        ConvlabError: bad options, an unknown hyperparameter, an empty range, a budget too
            small for one trial.
    """
    _check_options(trials, budget_minutes, algorithm)
    base = named_config(config) if isinstance(config, str) else config
    base = base.override(**overrides)
    base.validate()
    if Path(base.data).exists():
        base = base.override(data=str(Path(base.data).resolve()))
    ranges = resolve_space(base, space)
    folder = Path(out) if out is not None else Path(base.runs_dir) / f"tune-{base.name or base.model}"
    spec = {"base": base.to_dict(), "space": [r.describe() for r in ranges],
            "algorithm": algorithm, "trials": trials, "seed": seed}
    spec = json.loads(json.dumps(spec))  # as it reads back (tuples become lists)
    _open_folder(folder, spec, overwrite)
    search = Search(base, ranges, folder, trials=trials, progress=progress, after_fit=after_fit,
                    budget_seconds=budget_minutes * 60 if budget_minutes else None)
    tuner = _tuner(search, algorithm, seed)
    print(f"searching {', '.join(r.describe() for r in ranges)}; {algorithm}, at most {trials} "
          f"trial(s){f', {budget_minutes:g} min' if budget_minutes else ''}; results in {folder}")
    return _run_search(tuner, search)


def _check_options(trials, budget_minutes, algorithm) -> None:
    if not isinstance(trials, int) or trials < 1:
        raise ConvlabError(f"--trials must be at least 1, received: {trials!r}")
    if budget_minutes is not None and not budget_minutes > 0:
        raise ConvlabError(f"--budget-minutes must be positive, received: {budget_minutes}")
    if algorithm not in ALGORITHMS:
        raise ConvlabError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, received: "
                           f"{algorithm!r}")


def _open_folder(folder: Path, spec: dict, overwrite: bool) -> None:
    """The search folder with this search's search.json: the same search continues there, a
    different one (or a folder that is not a search's) is refused unless overwritten."""
    spec_file = folder / "search.json"
    if spec_file.exists() and not overwrite:
        held = json.loads(spec_file.read_text())
        if held != spec:
            differ = sorted({f"base.{k}" for k in spec["base"]
                             if held.get("base", {}).get(k) != spec["base"][k]}
                            | {k for k in spec if k != "base" and held.get(k) != spec[k]})
            raise ConvlabError(f"'{folder}' holds a different search (it differs in "
                               f"{', '.join(differ)}); give another --out, or --overwrite "
                               "to start over there")
        print(f"continuing the search in {folder}")
    elif folder.is_dir() and any(folder.iterdir()) and not spec_file.exists():
        raise ConvlabError(f"'{folder}' is not empty and holds no search of convlab's (no "
                           "search.json); convlab replaces nothing there: give another --out")
    elif overwrite and spec_file.exists():
        _forget_search(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(spec_file, json.dumps(spec, indent=1))


def _tuner(search: Search, algorithm: str, seed: int):
    """KerasTuner's tuner over `search`, its oracle's state in FOLDER/oracle/ (reloaded when
    the search continues)."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    search.hyperparameters(hp)
    oracle = _oracle(algorithm, search.trials, search.base.epochs, seed, hp)
    return _tuner_class()(oracle, search=search, directory=str(search.folder),
                          project_name="oracle", overwrite=False)


def _run_search(tuner, search: Search) -> dict:
    """KerasTuner's search loop; results.json and the rest at its end, also when it stops
    early."""
    import keras_tuner as kt

    folder, base, ranges, oracle = search.folder, search.base, search.space, tuner.oracle
    try:
        tuner.search(verbose=0)  # our own line per trial instead of KerasTuner's
    except kt.errors.FatalError as err:
        write_results(folder, base, ranges, oracle)
        raise ConvlabError(str(err).strip().splitlines()[-1]) from None
    except RuntimeError as err:  # KerasTuner: too many failed trials in a row
        if "consecutive failures" not in str(err):
            raise
        write_results(folder, base, ranges, oracle)
        raise ConvlabError(f"the search stopped: {str(err).splitlines()[0]} (the last: "
                           f"{str(err).strip().splitlines()[-1]}); results so far in "
                           f"{folder / 'results.json'}") from None
    return write_results(folder, base, ranges, oracle)


# What a search writes into its folder: --overwrite deletes these and nothing else.
SEARCH_FILES = ("search.json", "oracle", "trials", "trial_results.json", "results.json",
                "best.json", "tune.html", "tune.png")


def _forget_search(folder: Path) -> None:
    import shutil

    for name in SEARCH_FILES:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def write_results(folder: Path, base: TrainConfig, ranges: list[Range], oracle) -> dict:
    """results.json, best.json, plots and tune.html from the oracle and the trials' runs."""
    recorded = json.loads((folder / "trial_results.json").read_text()) \
        if (folder / "trial_results.json").exists() else {}
    rows = []
    for trial_id, trial in sorted(oracle.trials.items()):
        row = {"trial": trial_id, "status": trial.status,
               "values": {r.key: trial.hyperparameters.get(r.key) for r in ranges
                          if r.key in trial.hyperparameters.values},
               **{k: v for k, v in recorded.get(trial_id, {}).items() if k != "values"}}
        if trial.status != "COMPLETED":  # the last line of KerasTuner's traceback
            lines = (trial.message or "").strip().splitlines()
            row["message"] = lines[-1] if lines else ""
        rows.append(row)
    scored = [r for r in rows if r.get("score") is not None]
    best = max(scored, key=lambda r: r["score"], default=None)
    result = {"folder": str(folder), "objective": OBJECTIVE,
              "space": [r.describe() for r in ranges], "trials": rows, "best": best,
              "completed": len(scored), "failed": len(rows) - len(scored)}
    if best is not None:
        config = base.with_settings(_settings(best["values"], ranges)).override(
            name=f"{base.name or base.model}-tuned")
        write_text_atomic(folder / "best.json", json.dumps(config.to_dict(), indent=1))
        result["best_config"] = str(folder / "best.json")
    result["plot"] = str(_plot(folder, scored, ranges))
    write_text_atomic(folder / "results.json", json.dumps(result, indent=1))
    (folder / "tune.html").write_text(_page(result), encoding="utf-8")
    result["page"] = str(folder / "tune.html")
    return result


def _plot(folder: Path, scored: list[dict], ranges: list[Range]) -> Path:
    """Score per trial, and score against each searched hyperparameter."""
    fig = figure(figsize=(4 * (1 + len(ranges)), 3.4))
    axes = fig.subplots(1, 1 + len(ranges), squeeze=False)[0]
    scores = [r["score"] for r in scored]
    # Hyperband trains most trials for a few epochs and few for all: colour by epochs, so a
    # 2-epoch score is never read against a full one.
    epochs = [r.get("epochs") for r in scored]
    groups = sorted({e for e in epochs if e is not None}) or [None]
    colours = {e: f"C{i}" for i, e in enumerate(groups)}
    axes[0].plot(range(1, len(scores) + 1), scores, "-", color="0.8", zorder=0)
    for e in groups:
        picked = [i for i, x in enumerate(epochs) if x == e]
        axes[0].scatter([i + 1 for i in picked], [scores[i] for i in picked], color=colours[e],
                        label=f"{e} epoch{'s' if e != 1 else ''}" if e is not None else None)
    if groups != [None]:
        axes[0].legend(fontsize=8)
    axes[0].set(xlabel="trial (completed, in order)", ylabel=OBJECTIVE, title="score per trial")
    point_colours = [colours.get(e, "C0") for e in epochs]
    for ax, rng in zip(axes[1:], ranges, strict=True):
        xs = [r["values"].get(rng.key) for r in scored]
        if rng.values is not None:
            labels = [str(v) for v in rng.values]
            ax.scatter([labels.index(str(x)) for x in xs], scores, c=point_colours)
            ax.set_xticks(range(len(labels)), labels)
        else:
            ax.scatter(xs, scores, c=point_colours)
            if rng.log:
                ax.set_xscale("log")
        ax.set(xlabel=rng.key, title=rng.key.split(".")[-1])
    fig.tight_layout()
    path = folder / "tune.png"
    fig.savefig(path, dpi=90)
    return path


def _page(result: dict) -> str:
    keys = [s.split(" in ")[0] for s in result["space"]]
    head = "".join(f"<th>{escape(k)}</th>" for k in ("trial", "status", *keys, "epochs",
                                                     OBJECTIVE, "minutes", "run"))
    body = ""
    for row in result["trials"]:
        cells = [row["trial"], row["status"],
                 *(short_value(row["values"].get(k, "-")) for k in keys), row.get("epochs", "-"),
                 f"{row['score']:.4f}" if row.get("score") is not None else
                 row.get("message", "-"), f"{row['seconds'] / 60:.1f}" if "seconds" in row
                 else "-", row.get("run", "-")]
        mark = ' style="background:#e8f5e9"' if result["best"] and \
            row["trial"] == result["best"]["trial"] else ""
        body += f"<tr{mark}>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>"
    png = base64.b64encode(Path(result["plot"]).read_bytes()).decode("ascii")
    best = (f"best: trial {result['best']['trial']}, {OBJECTIVE} {result['best']['score']:.4f}"
            f"; retrain with <code>convlab train --config {escape(result['best_config'])}"
            "</code>" if result["best"] else "no trial finished")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>convlab tune</title><style>
body{{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222}}table{{border-collapse:
collapse}}td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left}}img{{max-width:100%}}
</style></head><body><h1>Hyperparameter search</h1><p>{escape(result['folder'])} ·
{result['completed']} completed, {result['failed']} failed · {best}</p>
<p>searched: {escape('; '.join(result['space']))}</p>
<table><tr>{head}</tr>{body}</table><p><img src="data:image/png;base64,{png}" alt="scores">
</p></body></html>
"""
