"""`--data`: turn what the user names into a prepared TFRecord folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from convlab.data.ingest import prepare
from convlab.data.manifest import is_prepared
from convlab.data.sources import NAMED_SOURCES, is_remote
from convlab.files import cache_dir


def resolve_data(spec: str | os.PathLike, image_size: int, *,
                 progress: bool = True) -> Path | str:
    """A prepared dataset folder for `spec`.

    `spec` is a prepared folder (has manifest.json, used as it is), a folder of class
    subfolders or a glob/gs:// pattern, `flowers` (downloaded once) or `synthetic`. A prepared
    folder on cloud storage (gs://..., with manifest.json) comes back as its URL. Anything
    but a prepared folder is prepared once into convlab's cache at `image_size` and reused
    while its files are unchanged.
    """
    spec = str(spec)
    if not is_remote(spec) and is_prepared(spec):
        return Path(spec)
    if is_remote(spec) and "*" not in spec and is_prepared(spec):
        return spec
    source = spec if spec in NAMED_SOURCES or is_remote(spec) else str(
        Path(spec).expanduser().resolve())
    key = hashlib.sha256(f"{source}|{image_size}".encode()).hexdigest()[:12]
    name = Path(source.rstrip("/")).name.replace("*", "_") or "data"
    out = cache_dir() / "prepared" / f"{name}-{image_size}px-{key}"
    # The cache folder is ours: if the source changed since, rebuild it.
    prepare(spec, out, size=image_size, overwrite=True, progress=progress)
    return out
