"""TensorFlow imported without its C++ start-up lines (oneDNN, CUDA probing, CPU features).

Those lines go straight to file descriptor 2, ignore TF_CPP_MIN_LOG_LEVEL, and would bury
convlab's own output in a terminal or a notebook cell. Set TF_CPP_MIN_LOG_LEVEL=0 to see them.
"""

from __future__ import annotations

import contextlib
import os
import sys

_done = False


def import_tensorflow():
    """`import tensorflow` and its first device probe (which logs "failed call to cuInit"
    where there is no GPU) with fd 2 muted, once per process; returns the module."""
    global _done
    if _done:
        return sys.modules["tensorflow"]
    _done = True
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with muted_stderr():  # not when the user asked for the lines (TF_CPP_MIN_LOG_LEVEL=0)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # probes CUDA, which logs when there is none
    return tf


@contextlib.contextmanager
def muted_stderr():
    """File descriptor 2 muted for the duration: for TensorFlow's converters and the TFLite
    interpreter, whose C++ progress lines ("fully_quantize: 0", "Created TensorFlow Lite
    XNNPACK delegate") would bury convlab's output. Their errors still arrive as exceptions."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    with contextlib.suppress(AttributeError, ValueError):
        sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
