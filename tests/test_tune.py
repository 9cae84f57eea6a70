"""`convlab tune`: KerasTuner over ordinary runs; resumable, failures recorded, best retrains."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from convlab.cli.main import main
from convlab.config import TrainConfig
from convlab.errors import ConvlabError
from convlab.training.tune import parse_range, tune

TINY = {"image_size": 16, "batch_size": 8, "epochs": 1, "precision": "float32",
        "model_options": {"layout": [[8, 16], "pool", [8, 16]]}}
SPACE = ["model_options.width=none", "augment.zoom=none", "model_options.dropout=none"]


@pytest.fixture(scope="module")
def data(tiny_prepared):
    return tiny_prepared(per_class=16)


def test_killed_search_resumes_without_repeating_trials_and_best_retrains(data, tmp_path,
                                                                          capsys):
    out = tmp_path / "tune"
    options = {**TINY, "data": str(data), "trials": 3, "algorithm": "random", "out": str(out),
               "space": SPACE}
    script = textwrap.dedent(f"""
        from convlab.training.tune import tune
        tune("squeezenet", **{options!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "trial_results.json").exists():
        assert proc.poll() is None, "the search ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-way: one trial finished, the next one running
    proc.wait()
    first = json.loads((out / "trial_results.json").read_text())
    assert len(first) >= 1

    result = tune("squeezenet", **options)
    assert "continuing the search" in capsys.readouterr().out
    assert result["completed"] == 3 and result["failed"] == 0
    by_id = {t["trial"]: t for t in result["trials"]}
    for trial_id, row in first.items():  # finished before the kill: kept, not run again
        assert by_id[trial_id]["run"] == row["run"]
    runs = list((out / "trials").glob("*/summary.json"))
    assert len(runs) == 3  # every trial an ordinary, finished run
    best = max(result["trials"], key=lambda t: t["score"])
    assert result["best"]["trial"] == best["trial"]
    saved = json.loads((out / "best.json").read_text())
    assert saved["schedule"]["learning_rate"] == pytest.approx(
        best["values"]["schedule.learning_rate"])
    assert (out / "tune.png").read_bytes()[:4] == b"\x89PNG" and (out / "tune.html").exists()

    runs_dir = tmp_path / "retrain"
    assert main(["train", "--config", str(out / "best.json"), "--runs-dir", str(runs_dir),
                 "--quiet", "--no-report"]) == 0
    (run,) = runs_dir.iterdir()
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["schedule"]["learning_rate"] == saved["schedule"]["learning_rate"]
    assert config["label_smoothing"] == saved["label_smoothing"]


def test_failing_trials_are_recorded_and_the_search_goes_on(data, tmp_path, capsys):
    assert main(["tune", "squeezenet", "--data", str(data), "--epochs", "1",
                 "--image-size", "16", "--precision", "float32", "--algorithm", "random",
                 "--trials", "4", "--out", str(tmp_path / "t"), "--quiet",
                 "--set", "model_options.layout=[[8, 16], \"pool\", [8, 16]]",
                 *(f"--hp={s}" for s in SPACE), "--hp", "label_smoothing=none",
                 "--hp", "batch_size=8,100000"]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "t" / "results.json").read_text())
    failed = [t for t in result["trials"] if t["status"] == "FAILED"]
    assert failed and result["completed"] >= 1, result["trials"]
    assert all("global batch of 100000" in t["message"] for t in failed)
    assert "retrain it: convlab train --config" in out and "failed" in out


def test_bad_searches_are_one_line_errors(data, tmp_path):
    for kwargs, message in (
            ({"trials": 0}, "--trials must be at least 1"),
            ({"budget_minutes": 0}, "--budget-minutes must be positive"),
            ({"space": ["colour=1:2"]}, "hyperparameter 'colour'.*unknown config field"),
            ({"space": ["label_smoothing=0.3:0.1"]}, "an empty range"),
            ({"algorithm": "grid"}, "--algorithm must be one of")):
        with pytest.raises(ConvlabError, match=message) as err:
            tune("squeezenet", data=str(data), out=tmp_path / "x", **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(ConvlabError, match="a log range needs LOW > 0"):
        parse_range("schedule.learning_rate=0:1:log")
    assert parse_range("model_options.width=0.5,1")[1].values == (0.5, 1)


def test_a_budget_too_small_for_one_trial_is_a_one_line_error(data, tmp_path):
    out = tmp_path / "tiny-budget"
    with pytest.raises(ConvlabError, match="too small for one trial") as err:
        tune("squeezenet", **{**TINY, "data": str(data), "trials": 3, "algorithm": "random",
                              "out": str(out), "space": SPACE, "budget_minutes": 0.001})
    assert "\n" not in str(err.value) and "--budget-minutes" in str(err.value)
    # The one finished trial is kept, with the results written.
    assert len(json.loads((out / "results.json").read_text())["trials"]) == 1


def test_a_model_gets_its_own_familys_space_or_an_error_never_anothers(monkeypatch):
    from convlab.training import tune as tune_module

    pretrained = {r.key for r in tune_module.default_space(TrainConfig(model="mobilenetv2"))}
    assert "schedule.learning_rate" in pretrained and "model_options.width" not in pretrained
    # a family from scratch that declared no space is told so (it used to get the
    # pretrained models' space in silence)
    monkeypatch.delitem(tune_module.SPACES, "convnet")
    with pytest.raises(ConvlabError, match="search space of 'convnet' is empty"):
        tune_module.resolve_space(TrainConfig(model="convnet"), None)
