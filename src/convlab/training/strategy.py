"""Choosing the tf.distribute strategy and the precision policy for this machine.

The order is the codelab's, made safe: TPU (only where a TPU is signalled, so a CPU machine
never waits on a cloud metadata server, and no NameError when there is none) -> TF_CONFIG
(multi-worker) -> several GPUs (MirroredStrategy) -> the default strategy.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from convlab.config import PRECISIONS, STRATEGIES
from convlab.errors import ConvlabError


@dataclass
class StrategyInfo:
    strategy: tf.distribute.Strategy
    kind: str  # one of STRATEGIES but "auto"
    replicas: int
    devices: str  # human-readable
    tpu: bool = False
    workers: int = 1  # processes in the job (TPU: 1; the TPU hosts are TF's business)

    def describe(self) -> str:
        name = {"default": "the default strategy", "onedevice": "OneDeviceStrategy",
                "mirrored": "MirroredStrategy", "multiworker": "MultiWorkerMirroredStrategy",
                "tpu": "TPUStrategy"}.get(self.kind, self.kind)
        return f"{name} ({self.replicas} replica(s) on {self.devices})"


def tpu_signalled(environ=os.environ) -> bool:
    """Whether this process should look for a TPU: a TPU name, Colab's TPU address, or the
    TPU VM device files. Without one, TPUClusterResolver() may wait on a metadata server."""
    return bool(environ.get("TPU_NAME") or environ.get("COLAB_TPU_ADDR")
                or environ.get("TPU_ACCELERATOR_TYPE") or Path("/dev/accel0").exists())


def detect_tpu(environ=os.environ):
    """A connected TPUClusterResolver, or None when no TPU is signalled or reachable."""
    if not tpu_signalled(environ):
        return None
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=environ.get("TPU_NAME") or ("local" if Path("/dev/accel0").exists() else None))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        print(f"convlab: a TPU is signalled but could not be reached ({err}); not using it")
        return None
    return resolver


def _gpus() -> list:
    return tf.config.list_physical_devices("GPU")


def select_strategy(name: str = "auto") -> StrategyInfo:
    """Build the strategy named (or the best one detected, for "auto").

    Multi-worker: a worker that dies is noticed by TensorFlow's coordination service, which
    aborts the others' collectives (UnavailableError) instead of letting them wait forever;
    `coordination_settings` gives it a heartbeat timeout of minutes, not TF's 10 s, so that
    a worker starved of CPU on a busy machine is not taken for dead. (TF's per-collective
    timeout is not used: it starts a thread per collective, and two workers training
    SqueezeNet on the flower photos ran out of threads with it within an epoch.)

    Raises:
        ConvlabError: unknown name, or a named strategy whose hardware is not there.
    """
    if name not in STRATEGIES:
        raise ConvlabError(f"--strategy must be one of {', '.join(STRATEGIES)}, "
                           f"received: {name!r}")
    if name in ("auto", "tpu"):
        resolver = detect_tpu()
        if resolver is not None:
            strategy = tf.distribute.TPUStrategy(resolver)
            return StrategyInfo(strategy, "tpu", strategy.num_replicas_in_sync, "TPU cores",
                                tpu=True)
        if name == "tpu":
            raise ConvlabError("--strategy tpu but no TPU found; set TPU_NAME (or run on a "
                               "Cloud TPU VM / Colab TPU runtime), or use --strategy auto")
    if name == "multiworker" or (name == "auto" and os.environ.get("TF_CONFIG")):
        tf_config = check_tf_config(os.environ.get("TF_CONFIG") or "")
        from tensorflow.python.eager import context

        from convlab.training.distributed import install_keras_fixes

        install_keras_fixes()
        settings = coordination_settings(tf_config)
        if settings is not None:  # the strategy then keeps these instead of TF's defaults
            context.context().configure_coordination_service(**settings)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        workers = strategy.extended._num_workers
        devices = f"{workers} worker(s)"
        if settings is not None:
            devices += f", heartbeat timeout {settings['heartbeat_timeout_in_ms'] // 1000} s"
        return StrategyInfo(strategy, "multiworker", strategy.num_replicas_in_sync, devices,
                            workers=workers)
    gpus = _gpus()
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = ([f"/gpu:{i}" for i in range(len(gpus))] if gpus else
                   [d.name for d in tf.config.list_logical_devices("CPU")])
        # NCCL all-reduce between GPUs (CUDA_VISIBLE_DEVICES decides which are visible).
        strategy = tf.distribute.MirroredStrategy(
            devices, cross_device_ops=tf.distribute.NcclAllReduce() if len(gpus) > 1 else None)
        return StrategyInfo(strategy, "mirrored", len(devices), ", ".join(devices))
    if name == "onedevice":
        device = "/gpu:0" if gpus else "/cpu:0"
        return StrategyInfo(tf.distribute.OneDeviceStrategy(device), "onedevice", 1, device)
    return StrategyInfo(tf.distribute.get_strategy(), "default", 1,
                        "GPU:0" if gpus else "CPU")


def resolve_precision(precision: str, info: StrategyInfo | None = None,
                      model: str | None = None) -> str:
    """`auto` -> bfloat16 on TPU, float16 on GPUs with tensor cores, float32 otherwise,
    except bfloat16 on CPUs where it is fast (`cpu_bfloat16_is_fast`) for `model`s marked
    `cpu_bfloat16` in the registry.

    Measured (BENCHMARKS.md, "Precision"): on a Zen 5 EPYC (AVX512-BF16) the plain convnet
    trains 2.1x and SqueezeNet 1.4-1.5x faster in mixed_bfloat16, EfficientNet-Lite0
    (frozen Keras batch norm and ReLU6 in bfloat16) slower; on a Xeon with AVX512-BF16 but
    no AMX the convnet is slower in bfloat16 and SqueezeNet no faster, so float32 there. Ask for any
    precision with `--precision`.
    """
    if precision not in PRECISIONS:
        raise ConvlabError(f"--precision must be one of {', '.join(PRECISIONS)}, "
                           f"received: {precision!r}")
    if precision != "auto":
        return precision
    if info is not None and info.tpu:
        return "mixed_bfloat16"
    gpus = _gpus()
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "mixed_float16" if details.get("compute_capability", (0, 0))[0] >= 7 else "float32"
    if model is not None and cpu_bfloat16_is_fast():
        from convlab.models import get_model_info

        if get_model_info(model).cpu_bfloat16:
            return "mixed_bfloat16"
    return "float32"


def check_tf_config(text: str) -> dict:
    """TF_CONFIG, parsed and checked: {"cluster": {"worker": [host:port, ...], ...},
    "task": {"type": "worker", "index": i}} with i naming one of its tasks.

    Raises:
        ConvlabError: anything else, in one line naming what is wrong (TensorFlow itself
            would run a one-worker job or fail with a traceback).
    """
    see = "see docs/scaling.md (or let `convlab launch` write it)"
    try:
        config = json.loads(text)
    except json.JSONDecodeError:
        raise ConvlabError(f"TF_CONFIG is not valid JSON ({text[:60]!r}); {see}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not (isinstance(cluster, dict) and cluster and all(
            isinstance(v, list) and v and all(isinstance(a, str) for a in v)
            for v in cluster.values())):
        raise ConvlabError(f"TF_CONFIG needs a \"cluster\" of job name -> list of "
                           f"\"host:port\" strings, received: {text[:80]!r}; {see}")
    if not (isinstance(task, dict) and task.get("type") in cluster
            and isinstance(task.get("index"), int) and not isinstance(task.get("index"), bool)
            and 0 <= task["index"] < len(cluster[task["type"]])):
        raise ConvlabError(f"TF_CONFIG's \"task\" must name a job of its cluster "
                           f"({', '.join(cluster)}) and an index in it, received: "
                           f"{json.dumps(task)[:80]}; {see}")
    return config


HEARTBEAT_ENV = "CONVLAB_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_SECONDS = 300
COORDINATED_JOBS = ("chief", "worker")  # as MultiWorkerMirroredStrategy has them


def heartbeat_timeout(environ=os.environ) -> int:
    """Seconds a worker may miss its heartbeats to the job's coordination service before the
    job counts it lost: $CONVLAB_HEARTBEAT_TIMEOUT, else 300. TensorFlow's own 10 s was
    missed by a worker of a 2-worker job on a 2-core machine busy with other training.

    Raises:
        ConvlabError: a value that is not a whole number of seconds, at least 1.
    """
    text = environ.get(HEARTBEAT_ENV, "").strip()
    if not text:
        return DEFAULT_HEARTBEAT_SECONDS
    seconds = int(text) if text.isdigit() else 0
    if seconds < 1:
        raise ConvlabError(f"{HEARTBEAT_ENV} must be a whole number of seconds, at least 1, "
                           f"received: {text!r}")
    return seconds


def coordination_settings(tf_config: dict, environ=os.environ) -> dict | None:
    """Keyword arguments of TensorFlow's `Context.configure_coordination_service` for the job
    that `tf_config` (checked by `check_tf_config`) describes: what MultiWorkerMirroredStrategy
    sets itself (a standalone service on the chief, or worker 0, that checks its tasks'
    health), plus the heartbeat timeout. None for a task the service does not coordinate
    (an evaluator).

    No shutdown barrier (0, TF's default): `barrier` in distributed.py already ends the
    training together, and one at exit would make a finished worker wait out the chief's
    report and fail the job when that takes longer than its timeout.
    """
    from tensorflow.compiler.xla.tsl.protobuf.coordination_config_pb2 import CoordinatedJob
    from tensorflow.python.distribute import multi_worker_util

    if tf_config["task"]["type"] not in COORDINATED_JOBS:
        return None
    cluster = tf.train.ClusterSpec(tf_config["cluster"])
    return {"service_type": "standalone",
            "service_leader": multi_worker_util.coordination_leader(cluster),
            "enable_health_check": True,
            "heartbeat_timeout_in_ms": heartbeat_timeout(environ) * 1000,
            "shutdown_barrier_timeout_in_ms": 0,
            "coordinated_jobs": [CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job))
                                 for job in COORDINATED_JOBS if job in cluster.jobs]}


@contextlib.contextmanager
def precision_policy(precision: str):
    """Keras' global dtype policy is `precision` inside the block and what it was before after
    it, also when the block raises (a notebook that hits an error keeps its own policy)."""
    import keras

    saved = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(saved)


def _cpu_flags() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX-BF16 flags)."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def cpu_bfloat16_is_fast() -> bool:
    """Whether bfloat16 training was measured faster than float32 on CPUs like this one:
    Intel's with AMX matrix units (the AMX-BF16 flag), and AMD's with AVX512-BF16 (Zen 4
    and 5 run its dot products at full width). Intel's AVX512-BF16 without AMX was slower."""
    flags = _cpu_flags()
    return "amx_bf16" in flags or ("avx512_bf16" in flags and "AuthenticAMD" in flags)


def hardware() -> str:
    """One line: CPU model and cores, and any GPUs."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores"]
    for gpu in _gpus():
        name = tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        parts.append(name)
    return "; ".join(parts)
