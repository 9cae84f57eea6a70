"""Scaling out: input sharding, the multi-worker launcher on loopback, TPU safety on CPU."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from convlab.data import prepare
from convlab.data.pipeline import input_plan, load, shard_policy
from convlab.data.resolve import resolve_data
from convlab.data.synthetic import make_folder
from convlab.errors import ConvlabError
from convlab.runs import load_run_model
from convlab.training import strategy as strategy_mod
from convlab.training.distributed import check_tpu_data, weights_digest
from convlab.training.strategy import precision_policy

TRAIN = ["squeezenet", "--image-size", "16", "--batch-size", "8", "--precision", "float32",
         "--quiet", "--no-report"]


@pytest.fixture(scope="module")
def shards(tiny_prepared):
    """96 training images in 4 equal shard files, 24 validation images."""
    return tiny_prepared(per_class=40, shards=4)


def test_shard_policy_prefers_whole_files_when_they_split_evenly():
    assert shard_policy([24, 24, 24, 24], 1, 96) == "off"
    assert shard_policy([24, 24, 24, 24], 2, 48) == "file"
    assert shard_policy([24, 24, 24], 2, 40) == "data"  # 48 vs 24 records: too uneven
    assert shard_policy([24], 2, 8) == "data"  # fewer files than workers
    assert shard_policy([24, 24, 24, 24], 2, None) == "file"  # evaluation: no minimum


def _epoch_fingerprints(ds) -> list[str]:
    return [hashlib.sha1(np.asarray(x).tobytes()).hexdigest() + str(int(y))
            for images, labels in ds for x, y in zip(images, labels, strict=True)]


@pytest.mark.parametrize("files", [4, 1])
def test_sharded_pipelines_split_each_epoch_between_workers(shards, tmp_path, files):
    data = shards
    if files == 1:  # one shard file: by-record sharding
        data = tmp_path / "one"
        prepare(str(shards.parent / "src"), data, size=16, shards=1, progress=False)
    seen = []
    for index in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index,
                                             num_replicas_in_sync=2)
        ds = load(data, "train", batch_size=4, seed=5, input_context=context,
                  batches_per_epoch=12, repeat=False)
        seen.append(_epoch_fingerprints(ds))
        # The plan the trainer prints is the one `load` followed.
        plan = input_plan(data, "train", input_context=context, needed=48)
        assert (plan.policy, plan.records) == ("file" if files == 4 else "data", 48)
        assert len(plan.files) == (2 if files == 4 else 1)
    assert len(seen[0]) == len(seen[1]) == 48  # 12 batches of 4 each
    assert not set(seen[0]) & set(seen[1])  # no image on both workers
    assert len(set(seen[0]) | set(seen[1])) == 96  # every training image once per epoch


def test_two_workers_on_loopback_train_one_model(shards, tmp_path):
    """The issue's integration test: 2 workers on 127.0.0.1, 2 epochs, tiny shards.

    3 shard files per split: too uneven for 2 workers to split the training files (so they
    split the records), and the validation files give one worker twice the other's batches.
    """
    data = tmp_path / "data"
    prepare(str(shards.parent / "src"), data, size=16, shards=3, progress=False)
    # No byte-code caching: AutoGraph imports its generated modules from TMPDIR, and Python
    # would leave their __pycache__ there, which is not a worker's file.
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONDONTWRITEBYTECODE": "1"}
    (tmp_path / "tmp").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "convlab", "launch", "--workers", "2", "--", "train", *TRAIN,
         "--data", str(data), "--epochs", "2", "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=420, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()  # exactly one run folder, the chief's
    assert list((tmp_path / "tmp").iterdir()) == []  # the other worker's files are gone

    derived = json.loads((run / "config.json").read_text())["derived"]
    assert derived["strategy"] == "multiworker" and derived["workers"] == 2
    assert derived["replicas"] == 2 and derived["per_replica_batch"] == 4
    history = json.loads((run / "history.json").read_text())
    # All workers together trained on each of the 96 images once per epoch, validated on 24.
    assert [h["examples"] for h in history] == [96, 96]
    assert [h["val_examples"] for h in history] == [24, 24]
    assert "input (train): pipeline 1 of 2 reads one record in 2, starting at record 0" in (
        result.stdout)
    assert "input (validation): pipeline 1 of 2 reads shard files 0, 2, ... of 3" in (
        result.stdout)

    # Both workers ended with identical weights: the launcher compared their digests, and
    # the chief's saved model is the model it digested.
    line = next(x for x in result.stdout.splitlines() if "identical weights" in x)
    digest = line.split("sha256 ")[1][:16]
    model, _ = load_run_model(run, "final")  # model.keras
    assert weights_digest(model).startswith(digest)
    # A fresh process (as `convlab evaluate/predict/export` are) loads it too.
    fresh = subprocess.run(
        [sys.executable, "-c", "import sys; from convlab.runs import load_run_model; "
         "from convlab.training.distributed import weights_digest; "
         "print(weights_digest(load_run_model(sys.argv[1], 'final')[0]))", str(run)],
        capture_output=True, text=True, timeout=120, env=env)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert fresh.stdout.strip().startswith(digest)


def _worker_pid(launcher: subprocess.Popen, index: int) -> int | None:
    """The pid of the launcher's child that runs worker `index` (read from /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            environ = (stat.parent / "environ").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == launcher.pid and f'"index": {index}}}'.encode() in environ:
            return int(stat.parent.name)
    return None


def test_a_dead_worker_stops_the_job_which_then_resumes(shards, tmp_path):
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "convlab", "launch", "--workers", "2", "--", "train",
               *TRAIN, "--data", str(shards), "--epochs", "4", "--runs-dir", str(runs)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    deadline = time.time() + 300
    while not list(runs.glob("*/state.json")):
        assert launcher.poll() is None, launcher.communicate()
        assert time.time() < deadline
        time.sleep(0.1)
    os.kill(_worker_pid(launcher, 1), signal.SIGKILL)
    killed = time.time()
    out, err = launcher.communicate(timeout=120)
    assert time.time() - killed < 60  # stopped, not hanging on the dead worker
    assert launcher.returncode == 2
    (run,) = runs.iterdir()
    assert "worker 1 was killed by SIGKILL, so the job was stopped" in err
    assert f"continue with: convlab launch --workers 2 -- train --resume {run}" in err
    done = json.loads((run / "state.json").read_text())["epoch"]
    assert 1 <= done < 4 and not (run / "model.keras").exists()

    resumed = subprocess.run(command[:6] + ["train", "--resume", str(run), "--quiet"],
                             capture_output=True, text=True, timeout=420, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "identical weights" in resumed.stdout
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]  # each epoch exactly once
    assert (run / "model.keras").exists() and list(runs.iterdir()) == [run]


def test_launch_rejects_what_it_cannot_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "convlab", "launch", "--workers", "2",
                             "--", "evaluate", "runs/x"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "launch runs `convlab train ...` on every worker" in result.stderr


def test_tpu_detection_and_local_path_refusal_on_cpu(monkeypatch):
    for var in ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE"):
        monkeypatch.delenv(var, raising=False)
    assert not strategy_mod.tpu_signalled({})
    assert strategy_mod.tpu_signalled({"TPU_NAME": "my-tpu"})
    assert strategy_mod.tpu_signalled({"COLAB_TPU_ADDR": "10.0.0.2:8470"})
    assert strategy_mod.detect_tpu({}) is None  # no NameError, no metadata-server wait
    with pytest.raises(ConvlabError, match="TPUs read data only from Cloud Storage, and "
                                           "'data/flowers' is on this machine"):
        check_tpu_data("data/flowers")
    check_tpu_data("gs://bucket/flowers")  # accepted


def test_prepared_data_on_a_cloud_filesystem(tmp_path):
    """What a TPU needs: prepare straight to a bucket URL and train from it. TensorFlow's
    in-memory ram:// filesystem stands in for gs:// (same tf.io.gfile code path)."""
    src = make_folder(tmp_path / "src", num_classes=2, per_class=10, size=24)
    url = f"ram://convlab-gs-stand-in-{os.getpid()}/prepared"
    manifest = prepare(str(src), url, size=16, shards=2, progress=False)
    assert tf.io.gfile.exists(f"{url}/manifest.json")
    assert resolve_data(url, 16) == url
    images, labels = next(iter(load(url, "train", batch_size=4, seed=1)))
    assert images.shape == (4, 16, 16, 3) and manifest["counts"]["per_split"]["train"] == 16
    assert prepare(str(src), url, size=16, shards=2, progress=False) == manifest  # no-op


def test_float16_gets_loss_scaling_for_gpus():
    with precision_policy("mixed_float16"):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(optimizer="adam", loss="mse")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
