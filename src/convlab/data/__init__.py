"""The data layer: photos -> validated TFRecords -> fast tf.data pipelines.

`prepare` (ingest) needs only Pillow; `load`, `load_files` and `load_folder` import
TensorFlow, so they are resolved on first use.
"""

from convlab.data.ingest import prepare
from convlab.data.manifest import Manifest, read_manifest

__all__ = ["Augment", "Manifest", "load", "load_files", "load_folder", "prepare",
           "read_manifest", "record_paths"]


def __getattr__(name):
    if name in ("load", "load_files", "load_folder", "record_paths"):
        from convlab.data import pipeline

        return getattr(pipeline, name)
    if name == "Augment":
        from convlab.data.augment import Augment

        return Augment
    raise AttributeError(f"module 'convlab.data' has no attribute {name!r}")
