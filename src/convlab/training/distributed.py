"""What multi-worker and TPU training need beyond picking a strategy.

- Who writes: only the chief writes the run folder; other workers write to a temporary folder
  that is removed at the end (all workers still run the same steps, collectives included).
- How the input is split: `convlab.data.pipeline.input_plan` chooses by-file or by-record sharding so that across
  workers each training example is seen once per epoch; `ExampleCount` measures it.
- Where TPUs may read: only from cloud storage (`check_tpu_data`).
- Keras 3 `fit` under MultiWorkerMirroredStrategy: two upstream bugs and their narrow fixes
  (`install_keras_fixes`).
- A worker report (weights digest, examples per epoch) for `convlab launch` to cross-check.
"""

from __future__ import annotations

import hashlib
import json
import os

import keras
import numpy as np
import tensorflow as tf

from convlab.errors import ConvlabError
from convlab.files import write_text_atomic
from convlab.training.callbacks import ema_weights

REPORT_ENV = "CONVLAB_WORKER_REPORT"
# How a worker's error begins when the job lost another worker (it died, or went silent past
# the heartbeat timeout): `convlab launch` resumes after such a loss, not after other errors.
LOST_CONTACT = "lost contact with another worker"
# What TensorFlow's collectives raise then, instead of waiting forever.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
               tf.errors.CancelledError)


def task_of(strategy: tf.distribute.Strategy) -> tuple[str, int]:
    """(task type, index) of this process in a cluster, ("worker", 0) when alone."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "worker", 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The process that writes checkpoints, logs and the report (TF's own rule: the "chief"
    task, or worker 0 when the cluster has no chief)."""
    return bool(strategy.extended.should_checkpoint)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.extended._num_workers > 1)


@keras.saving.register_keras_serializable(package="convlab")
class ExampleCount(keras.metrics.Metric):
    """Examples the model trained (or was evaluated) on, summed over all replicas and workers.

    Under a multi-worker strategy its epoch value shows that input sharding gives each
    example to exactly one worker: it equals steps x global batch, not a multiple of it.
    """

    def __init__(self, name: str = "examples", **kwargs):
        super().__init__(name=name, **kwargs)
        self.count = self.add_variable(shape=(), initializer="zeros", name="count",
                                       aggregation="sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.count.assign_add(keras.ops.cast(keras.ops.shape(y_true)[0], self.dtype))

    def result(self):
        # A new tensor, not the variable: Keras keeps epoch logs while validation reuses
        # and resets the metric.
        return keras.ops.multiply(self.count, 1.0)


def sum_over_workers(strategy: tf.distribute.Strategy, values: tf.Tensor) -> tf.Tensor:
    """`values` (the same on each of this worker's replicas) summed over all workers."""
    local = len(strategy.extended.worker_devices)

    def per_replica(context):  # only each worker's first replica contributes
        first = context.replica_id_in_sync_group % local == 0
        return values if first else tf.zeros_like(values)

    distributed = strategy.experimental_distribute_values_from_function(per_replica)
    return strategy.reduce("SUM", distributed, axis=None)


class ShardedValidation(keras.callbacks.Callback):
    """Validation under a multi-worker strategy: each worker evaluates its own part of the
    validation split with plain local inference, then one all-reduce sums (loss, correct,
    count) over the workers. val_loss / val_accuracy / val_examples go into the epoch logs.

    Why not Keras' own validation: the workers' parts can differ by a batch, and then
    tf.distribute feeds the worker that ran out an empty batch, on which TensorFlow's CPU
    convolution + batch-norm graph failed here ("Incompatible shapes: [32] vs.
    [0,16,16,3]"); with the counts asserted instead, the workers ran different numbers of
    steps and their collectives crossed. A local loop needs no collective per step.
    """

    def __init__(self, dataset: tf.data.Dataset, strategy: tf.distribute.Strategy):
        super().__init__()
        self.dataset, self.strategy = dataset, strategy
        self._step = None

    def on_train_begin(self, logs=None):
        self._step = None  # the loss may have changed (a second, fine-tuning phase)

    def _make_step(self):
        model, loss = self.model, self.model.loss

        @tf.function(reduce_retracing=True)
        def step(images, labels):
            probs = tf.cast(model(images, training=False), tf.float32)
            n = tf.cast(tf.shape(images)[0], tf.float32)
            target = labels if labels.shape.rank == 1 else tf.argmax(labels, axis=-1)
            hits = tf.equal(tf.argmax(probs, axis=-1), tf.cast(target, tf.int64))
            return tf.stack([loss(labels, probs) * n,
                             tf.reduce_sum(tf.cast(hits, tf.float32)), n])

        return step

    def on_epoch_end(self, epoch, logs=None):
        if self._step is None:
            self._step = self._make_step()
        totals = tf.zeros(3)
        with ema_weights(self.model):
            for images, labels in self.dataset:
                totals += self._step(images, labels)
        loss_sum, correct, count = sum_over_workers(self.strategy, totals).numpy().tolist()
        if logs is not None and count:
            logs.update(val_loss=loss_sum / count, val_accuracy=correct / count,
                        val_examples=count)


def synchronize_batch_norm(model: keras.Model) -> int:
    """Make every BatchNormalization layer use the global batch's statistics (all-reduced
    over workers) instead of each worker's own. Without it each worker's moving mean and
    variance follow its own data and the workers end with different models; with it,
    training matches one machine with the whole global batch. Returns the layers changed."""
    changed, stack = 0, list(model.layers)
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []))
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            changed += 1
    return changed


def check_tpu_data(data: str) -> None:
    """TPUs read input through the TPU host's cloud storage client, never from this disk.

    Raises:
        ConvlabError: `data` is a local path (anything without a `scheme://`).
    """
    from convlab.data.sources import is_remote

    if not is_remote(str(data)):
        raise ConvlabError(
            f"TPUs read data only from Cloud Storage, and '{data}' is on this machine: copy the "
            f"prepared folder to a bucket (convlab data prepare SRC gs://BUCKET/NAME, or "
            f"gsutil -m cp -r DIR gs://BUCKET/NAME) and pass --data gs://BUCKET/NAME")


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Wait until every worker gets here (an all-reduce of a constant): no worker leaves the
    job while another still needs it for a collective.

    Raises:
        ConvlabError: another worker died or went silent meanwhile (`LOST_CONTACT`).
    """
    def one():
        return tf.constant(1.0)

    @tf.function(autograph=False)
    def all_reduce():
        return strategy.reduce("SUM", strategy.run(one), axis=None)

    try:
        all_reduce()
    except PEER_ERRORS as err:
        raise ConvlabError(f"{LOST_CONTACT} ({type(err).__name__}) while waiting for all "
                           f"workers to finish") from None


def variable_digests(model: keras.Model) -> dict[str, str]:
    """sha256 of each variable's bytes, by variable path."""
    return {v.path: hashlib.sha256(np.ascontiguousarray(v.numpy()).tobytes()).hexdigest()
            for v in model.weights}


def weights_digest(model: keras.Model, digests: dict[str, str] | None = None) -> str:
    """One sha256 over all variables' digests, in order: equal means identical models."""
    digests = variable_digests(model) if digests is None else digests
    return hashlib.sha256("".join(digests.values()).encode()).hexdigest()


def write_worker_report(strategy, run, model: keras.Model | None = None,
                        history: list[dict] | None = None) -> None:
    """Where `convlab launch` asked for one ($CONVLAB_WORKER_REPORT), say which run folder this
    job writes (as soon as it is known) and, at the end, what this worker ended with, so the
    launcher can name the folder to resume and check that all workers agree."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    kind, index = task_of(strategy)
    report = {"task": f"{kind}:{index}", "chief": is_chief(strategy),
              "run": str(run) if run is not None else None}
    if model is not None:
        digests = variable_digests(model)
        report["weights_sha256"] = weights_digest(model, digests)
        report["variables"] = {path: d[:12] for path, d in digests.items()}
        report["examples_per_epoch"] = [row.get("examples") for row in history or []]
    write_text_atomic(path, json.dumps(report))


_FIXED = False


def install_keras_fixes() -> None:
    """Make `Model.fit` work under MultiWorkerMirroredStrategy in Keras 3 (idempotent).

    Keras 3.15's TensorFlow trainer has two bugs on that strategy (keras-team/keras#20585,
    #20329), both in code that only runs when there is more than one worker:
    - before the first step it averages a whole input batch across workers with one
      `strategy.reduce` call on a tuple, which TF rejects ("Attempt to convert a value
      (PerReplica...)"); only the batch's shapes are needed, so take this worker's batch;
    - after every step it averages each metric value along axis 0, which fails for scalars
      ("Invalid reduction dimension 0"); the per-step values only feed the progress bar, so
      show this worker's values. Epoch values (history, checkpoints, the best model) are
      read from the metric variables, which are summed over all workers, and stay exact.
    Other strategies keep Keras' own code.
    """
    global _FIXED
    if _FIXED:
        return
    from keras import tree

    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer

        keras_reduce = tf_trainer.reduce_per_replica
        keras_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    except (ImportError, AttributeError) as err:
        raise ConvlabError(
            f"multi-worker training patches two private Keras functions that Keras "
            f"{keras.__version__} does not have ({err}); install the Keras version in "
            f"pyproject.toml, or train on one machine") from None

    def first_local(strategy, values):
        return tree.map_structure(lambda v: strategy.experimental_local_results(v)[0], values)

    def reduce_per_replica(values, strategy, reduction):
        if reduction == "auto" and is_multi_worker(strategy):
            return first_local(strategy, values)
        return keras_reduce(values, strategy, reduction)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or strategy is None or not is_multi_worker(strategy):
            return keras_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = first_local(strategy, next(it))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    _FIXED = True
