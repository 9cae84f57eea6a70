"""Scaling out: input sharding, the multi-worker launcher on loopback, TPU safety on CPU."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import context

from convlab.data import prepare
from convlab.data.pipeline import input_plan, load, shard_policy
from convlab.data.resolve import resolve_data
from convlab.data.synthetic import make_folder
from convlab.errors import ConvlabError
from convlab.launch import _Failure, _refusal, _resume_hint, _said, tf_config
from convlab.runs import load_run_model
from convlab.training import strategy as strategy_mod
from convlab.training.distributed import LOST_CONTACT, check_tpu_data, weights_digest
from convlab.training.strategy import HEARTBEAT_ENV, precision_policy

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


def test_two_workers_on_loopback_train_one_model_and_resume_a_lost_one(shards, tmp_path):
    """The issue's integration test: 2 workers on 127.0.0.1, 4 epochs, tiny shards; worker 1
    is killed once the first epoch is checkpointed, and the launcher resumes the job.

    3 shard files per split: too uneven for 2 workers to split the training files (so they
    split the records), and the validation files give one worker twice the other's batches.
    """
    data = tmp_path / "data"
    prepare(str(shards.parent / "src"), data, size=16, shards=3, progress=False)
    runs = tmp_path / "runs"
    # No byte-code caching: AutoGraph imports its generated modules from TMPDIR, and Python
    # would leave their __pycache__ there, which is not a worker's file.
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONDONTWRITEBYTECODE": "1", HEARTBEAT_ENV: "120"}
    (tmp_path / "tmp").mkdir()
    command = [sys.executable, "-m", "convlab", "launch", "--workers", "2", "--", "train",
               *TRAIN, "--data", str(data), "--epochs", "4", "--runs-dir", str(runs)]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    deadline = time.time() + 300
    while not list(runs.glob("*/state.json")):
        assert launcher.poll() is None, launcher.communicate()
        assert time.time() < deadline
        time.sleep(0.1)
    os.kill(_worker_pid(launcher, 1), signal.SIGKILL)
    out, err = launcher.communicate(timeout=420)
    assert launcher.returncode == 0, out[-3000:] + err[-3000:]
    (run,) = runs.iterdir()  # exactly one run folder, the chief's
    # The other worker's files are gone, but for the killed try's (SIGKILL leaves no time to
    # clean up): its work folder and AutoGraph's modules. The resumed try cleaned its own.
    left = [f.name for f in (tmp_path / "tmp").iterdir()
            if not re.fullmatch(r"__autograph_generated_file\w+\.py", f.name)]
    assert len(left) == 1 and left[0].startswith("convlab-worker1-"), left
    resumed = re.search(rf"launch: worker 1 was killed by SIGKILL; stopped the other "
                        rf"worker\(s\); resuming {re.escape(str(run))} after epoch ([123]) "
                        rf"\(retry 1 of 2\)", err)
    assert resumed, err[-3000:]
    assert f"resuming {run} after epoch {resumed.group(1)} from" in out  # the chief did
    assert "on 2 worker(s), heartbeat timeout 120 s)" in out  # the variable reached TF

    derived = json.loads((run / "config.json").read_text())["derived"]
    assert derived["strategy"] == "multiworker" and derived["workers"] == 2
    assert derived["replicas"] == 2 and derived["per_replica_batch"] == 4
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]  # each epoch exactly once
    # All workers together trained on each of the 96 images once per epoch, validated on 24.
    assert [h["examples"] for h in history] == [96] * 4
    assert [h["val_examples"] for h in history] == [24] * 4
    assert "input (train): pipeline 1 of 2 reads one record in 2, starting at record 0" in out
    assert "input (validation): pipeline 1 of 2 reads shard files 0, 2, ... of 3" in out

    # Both workers ended with identical weights: the launcher compared their digests, and
    # the chief's saved model is the model it digested.
    line = next(x for x in out.splitlines() if "identical weights" in x)
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


def test_launch_resumes_only_a_lost_worker_and_only_a_few_times(tmp_path):
    killed = _Failure(1, -signal.SIGKILL, tmp_path / "worker-1.log", lost=True)
    assert _refusal(killed, done=1, before=0, total=4, retry=0, retries=2) is None
    assert _refusal(killed, done=2, before=1, total=4, retry=1, retries=2) is None
    assert _refusal(killed, 3, 2, 4, retry=2, retries=2) == "retried 2 time(s) already"
    assert _refusal(killed, 1, 0, 4, retry=0, retries=0) == "--retries 0"
    # Each try must checkpoint an epoch: a failure that recurs before one stops the job.
    assert _refusal(killed, None, 0, 4, 0, 2) == "no epoch was checkpointed since the start"
    assert _refusal(killed, 2, 2, 4, 1, 2) == "no epoch was checkpointed since the last retry"
    assert _refusal(killed, 4, 3, 4, 1, 2) == "all 4 epochs had been checkpointed"
    user_error = _Failure(0, 2, tmp_path / "worker-0.log", lost=False)
    assert _refusal(user_error, 3, 0, 4, 0, 2) == "not a lost worker"
    # A worker that exits with an error is lost only if it said so in this try's output.
    log = tmp_path / "worker-0.log"
    log.write_text(f"convlab: error: {LOST_CONTACT} (UnavailableError)\n--- launch: retry 1 ---\n")
    start = log.stat().st_size
    assert _said(log, 0, LOST_CONTACT) and not _said(log, start, LOST_CONTACT)
    # What a job that was not resumed says to do next.
    assert _resume_hint(2, "runs/a", 2, 4) == "convlab launch --workers 2 -- train --resume runs/a"
    assert _resume_hint(2, "runs/a", 4, 4).startswith("nothing to resume: all 4 epochs")
    assert _resume_hint(2, None, None, None) == "the same command (no epoch had finished)"


def test_coordination_heartbeat_timeout_reaches_tensorflows_config():
    two = strategy_mod.check_tf_config(tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1))
    assert strategy_mod.coordination_settings(two, {})["heartbeat_timeout_in_ms"] == 300_000
    ctx = context.Context()  # a scratch context: this process's own is left alone
    ctx.configure_coordination_service(**strategy_mod.coordination_settings(
        two, {HEARTBEAT_ENV: "90"}))
    coordination = ctx.config.experimental.coordination_config  # what the workers' servers get
    assert coordination.heartbeat_timeout_in_ms == 90_000
    assert coordination.shutdown_barrier_timeout_in_ms == 0 and coordination.enable_health_check
    assert coordination.service_leader == "/job:worker/replica:0/task:0"
    assert [(j.name, j.num_tasks) for j in coordination.coordinated_job_list] == [("worker", 2)]
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"], "evaluator": ["d:1"]},
                  "task": {"type": "worker", "index": 0}}
    settings = strategy_mod.coordination_settings(with_chief, {})
    assert settings["service_leader"] == "/job:chief/replica:0/task:0"
    assert [(j.name, j.num_tasks) for j in settings["coordinated_jobs"]] == [
        ("chief", 1), ("worker", 2)]
    evaluator = {**with_chief, "task": {"type": "evaluator", "index": 0}}
    assert strategy_mod.coordination_settings(evaluator, {}) is None
    for bad in ("0", "2m", "-5"):
        with pytest.raises(ConvlabError, match=f"{HEARTBEAT_ENV} must be a whole number of "
                                               f"seconds, at least 1, received: '{bad}'"):
            strategy_mod.heartbeat_timeout({HEARTBEAT_ENV: bad})


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
