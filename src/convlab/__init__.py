"""convlab: from a folder of photos to a well-tuned convolutional image classifier.

TensorFlow is imported lazily, so `import convlab` and `convlab --help` stay fast and the
ingest worker processes (Pillow only) never load it.
"""

from convlab.errors import ConvlabError
from convlab.version import __version__

__all__ = ["ConvlabError", "__version__", "resume", "train"]


def train(*args, **kwargs):
    """Train a model or recipe; see `convlab.training.trainer.train`."""
    from convlab.training.trainer import train as _train

    return _train(*args, **kwargs)


def resume(*args, **kwargs):
    """Continue an interrupted run; see `convlab.training.trainer.resume`."""
    from convlab.training.trainer import resume as _resume

    return _resume(*args, **kwargs)
