"""The prepared folder's manifest.json: its one reader, its one writer, and `Manifest`, the typed
view every other module reads (attributes, never the JSON's keys).

Also the names of everything `convlab data prepare` writes into a prepared folder, so that
what is convlab's there (and may be replaced) is decided in one place.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from convlab.data.sources import Scan, file_sha256, is_remote, join
from convlab.errors import ConvlabError
from convlab.files import LOCK, write_text_atomic

MANIFEST = "manifest.json"
STATE = ".convlab-prepare.json"  # an unfinished prepare's plan, for resuming it
PARTS = ".convlab-parts"  # a record of each finished shard, while the job runs
FORMAT = "convlab.tfrecords/1"
SPLITS = ("train", "validation", "test")
DEFAULT_QUALITY = 90  # `prepare`'s JPEG quality, for manifests that did not record theirs

# The names convlab gives what it writes into a prepared folder; nothing else is ever deleted.
SHARD_FILE = re.compile(r"(train|validation|test)\d{2}(-\d+\.tfrec|\.tfrec\.tmp)")


@dataclass(frozen=True)
class Shard:
    """One TFRecord file of a prepared folder."""

    file: str  # its name in the folder
    split: str
    count: int  # records
    bytes: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Manifest(Mapping):
    """A prepared folder's manifest, as `prepare` made it or `read_manifest` read it.

    convlab reads its attributes (tests/test_structure.py holds it to that). The JSON as
    written is `raw`, also readable as a read-only mapping (`manifest["counts"]`) by code
    written against the dict `prepare` used to return. The repr leaves out the long lists
    (one entry per file, class or shard)."""

    raw: dict = field(repr=False)
    source: str  # the photos it was prepared from: a folder, a pattern, a labels file
    fingerprint: str  # of the options and the plan: the same job resumes, another replaces
    classes: tuple[str, ...]
    stored_size: int  # images are stored_size x stored_size
    quality: int  # their JPEG quality
    per_split: dict[str, int]  # photos written per split
    per_class: dict[str, dict[str, int]] = field(repr=False)  # class -> split -> photos
    shards: tuple[Shard, ...] = field(repr=False)
    total: int
    candidates: int  # files found that might be photos
    enlarged: int  # photos whose short side was below stored_size
    inputs: tuple[dict, ...] = field(repr=False)  # each photo kept: path, class, split, shard
    skipped: tuple[dict, ...] = field(repr=False)  # each file left out: path, class, reason
    skipped_by_reason: dict[str, int]
    duplicates: tuple[dict, ...] = field(repr=False)  # byte-identical files; the one kept
    ignored: tuple[str, ...] = field(repr=False)  # files clearly not photos
    empty_classes: tuple[str, ...]  # class folders with no usable photo
    given_splits: dict[str, str]  # the splits the source gave: split -> folder or label
    notes: tuple[str, ...]  # what a person should know about the split
    resumed: bool = False  # `prepare` found this dataset already complete

    @classmethod
    def from_dict(cls, raw: dict) -> Manifest:
        """The manifest of the JSON `raw`.

        Raises:
            KeyError, TypeError, IndexError: a part every manifest has is missing.
        """
        counts = raw["counts"]
        return cls(
            raw, source=raw.get("source", ""), fingerprint=raw.get("fingerprint", ""),
            classes=tuple(raw["classes"]), stored_size=int(raw["image_size"][0]),
            quality=int(raw.get("options", {}).get("quality", DEFAULT_QUALITY)),
            per_split=counts["per_split"], per_class=counts["per_class"],
            shards=tuple(Shard(s["file"], s["split"], s["count"], s.get("bytes"),
                               s.get("sha256")) for s in raw["shards"]),
            total=counts.get("total", sum(counts["per_split"].values())),
            candidates=counts.get("candidates", 0), enlarged=counts.get("enlarged", 0),
            inputs=tuple(raw.get("inputs", [])), skipped=tuple(raw.get("skipped", [])),
            skipped_by_reason=raw.get("skipped_by_reason", {}),
            duplicates=tuple(raw.get("duplicates", [])), ignored=tuple(raw.get("ignored", [])),
            empty_classes=tuple(raw.get("empty_classes", [])),
            given_splits=raw.get("given_splits", {}), notes=tuple(raw.get("notes", [])),
            resumed=raw.get("resumed") == "already complete")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def count(self, split: str) -> int:
        """Photos in `split` (0 for a split it does not have)."""
        return self.per_split.get(split, 0)

    def has_split(self, split: str) -> bool:
        return self.count(split) > 0

    def shards_of(self, split: str) -> list[Shard]:
        return [s for s in self.shards if s.split == split]

    def __getitem__(self, key: str):
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)


# ---- reading ----


def is_prepared(path: str | os.PathLike) -> bool:
    """Whether `path` holds a manifest (a local folder, or a gs:// URL: asks the storage)."""
    if is_remote(str(path)):
        import tensorflow as tf

        return tf.io.gfile.exists(join(path, MANIFEST))
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | os.PathLike, *, check_shards: bool = True) -> Manifest:
    """The manifest of a prepared dataset folder (local, or a gs:// URL).

    Args:
        check_shards: also check that every shard file is there (and, locally, has the
            size the manifest says); off for reading what the manifest says only.

    Raises:
        ConvlabError: not a prepared folder, or its shards are missing.
    """
    if is_remote(str(path)):
        import tensorflow as tf

        exists, read = tf.io.gfile.exists, lambda p: tf.io.gfile.GFile(p).read()
    else:
        path = Path(path)
        exists, read = os.path.exists, lambda p: Path(p).read_text()
    file = join(path, MANIFEST)
    if not exists(file):
        hint = " (an interrupted `convlab data prepare`? run it again to resume)" if exists(
            join(path, STATE)) else ""
        raise ConvlabError(f"'{path}' is not a prepared dataset: no {MANIFEST}{hint}")
    raw = load_json(file, read(file))
    try:
        manifest = Manifest.from_dict(raw)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError):
        raise ConvlabError(f"'{file}' is not a complete convlab manifest; give the folder "
                           "`convlab data prepare` wrote, or prepare it again") from None
    if not check_shards:
        return manifest
    missing = [s.file for s in manifest.shards if not exists(join(path, s.file))]
    if missing:
        raise ConvlabError(
            f"prepared dataset '{path}' is missing shard {missing[0]} "
            f"({len(missing)} missing); prepare it again with --overwrite"
        )
    if not is_remote(str(path)):
        damaged = verify_shards(path, manifest, checksums=False)
        if damaged:
            raise ConvlabError(f"prepared dataset '{path}': {damaged[0]} ({len(damaged)} "
                               f"damaged shard(s)); prepare it again with --overwrite")
    return manifest


def load_json(file, text: str) -> dict:
    """A manifest (or prepare's state) read from its text; one line naming what is wrong, and
    `--overwrite` advised only for a folder that holds nothing but what convlab writes."""
    local = not is_remote(str(file)) and Path(file).parent.is_dir()
    fix = ("prepare the dataset again with --overwrite, which replaces it" if local and not
           strangers(Path(file).parent) else
           "it is not a convlab dataset: give the folder `convlab data prepare` wrote")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        where = f": {err.msg} at line {err.lineno}" if isinstance(
            err, json.JSONDecodeError) else ", nested too deep"
        raise ConvlabError(f"'{file}' is damaged (not valid JSON{where}); {fix}") from None
    if not isinstance(value, dict) or (value.get("format") != FORMAT
                                       and "fingerprint" not in value):
        raise ConvlabError(f"'{file}' was not written by convlab (not a convlab manifest); "
                           "give the folder `convlab data prepare` wrote")
    return value


def verify_shards(path: str | os.PathLike, manifest: Manifest, *, checksums: bool
                  ) -> list[str]:
    """What is wrong with the shard files of a local prepared folder, one line per damaged
    shard: a size other than the manifest's (always checked: one stat per file), or with
    `checksums`, a sha256 other than the manifest's (reads every byte)."""
    damaged = []
    for shard in manifest.shards:
        file = Path(path) / shard.file
        size = file.stat().st_size if file.is_file() else None
        if size is None:
            damaged.append(f"shard {shard.file} is missing")
        elif shard.bytes is not None and size != shard.bytes:
            damaged.append(f"shard {shard.file} has {size:,} bytes, the manifest says "
                           f"{shard.bytes:,} (truncated or overwritten)")
        elif checksums and shard.sha256 is not None and file_sha256(file) != shard.sha256:
            damaged.append(f"shard {shard.file} does not match its sha256 in the manifest")
    return damaged


def written_by_prepare(name: str) -> bool:
    """Whether `prepare` gives a file in its output folder this name (its lock aside)."""
    return name in (MANIFEST, STATE, PARTS) or SHARD_FILE.fullmatch(name) is not None


def strangers(out: Path) -> list[str]:
    """Names in OUT that convlab would not have written there."""
    return sorted(p.name for p in out.iterdir()
                  if p.name != LOCK and not written_by_prepare(p.name))


# ---- writing ----


def new_manifest(scan: Scan, options: dict, classes: list[str], empty: list[str],
                 splits: list[str], records: list[dict], skipped: list[dict],
                 dup_groups: list[dict], fingerprint: str, started: float) -> Manifest:
    """The manifest of a finished `prepare`: its options (`size` among them), the splits it
    planned, its shard records (each with its members and failures), the files it skipped
    and the duplicate groups it found."""
    from convlab.version import __version__

    failures = [f for r in records for f in r["failures"]]
    skipped = sorted(skipped + failures, key=lambda s: s["path"])
    per_class = {c: {s: 0 for s in splits} for c in classes}
    per_split = Counter()
    for r in records:
        per_split[r["split"]] += r["count"]
        for c, n in r["per_class"].items():
            per_class[c][r["split"]] += n
    size = options["size"]
    return Manifest.from_dict({
        "format": FORMAT,
        "convlab_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
        "source": scan.source,
        "fingerprint": fingerprint,
        "options": options,
        "image_size": [size, size],
        "classes": classes,
        "num_classes": len(classes),
        "counts": {
            "total": sum(per_split.values()),
            "per_split": dict(per_split),
            "per_class": per_class,
            "candidates": len(scan.candidates),
            "skipped": len(skipped),
            "ignored": len(scan.ignored),
            # photos whose short side was below the size: enlarged, so no sharper than before
            "enlarged": sum(r.get("enlarged", 0) for r in records),
        },
        "shards": [{k: r[k] for k in ("file", "split", "count", "bytes", "sha256", "per_class")}
                   for r in records],
        "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "skipped": skipped,
        "duplicates": sorted(dup_groups, key=lambda g: g["dropped"][0]),
        "ignored": sorted(scan.ignored),
        "empty_classes": empty,
        # the splits the source gave (split -> its folder or labels value); {} when drawn
        "given_splits": dict(scan.given_splits),
        "notes": split_notes(per_class, scan.given_splits),
        "inputs": [dict(m, split=r["split"], shard=r["file"]) for r in records
                   for m in r["members"]],
    })


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write `manifest` into `folder` (atomically: a reader never finds half of it)."""
    write_text_atomic(folder / MANIFEST, json.dumps(manifest.raw, indent=1))


def split_notes(per_class: dict[str, dict[str, int]], given: dict[str, str]) -> list[str]:
    """What a person should know about the split, from the manifest's counts per class and
    split (photos written): which splits were given and which drawn, class sets that differ
    between splits, and classes too small to measure."""
    classes = list(per_class)
    splits = list(next(iter(per_class.values()), {}))
    counts = {s: Counter({c: n[s] for c, n in per_class.items()}) for s in splits}
    notes = []
    if given:
        drawn = [s for s in ("validation",) if s not in given and s in splits]
        notes.append("splits given by the source: " + ", ".join(
            f"{s} (from {given[s]!r})" for s in SPLITS if s in given) + (
            f"; {', '.join(drawn)} drawn from train, stratified" if drawn else ""))
    for split in splits:
        if split == "train":
            continue
        absent = [c for c in classes if counts[split][c] == 0]
        if absent and (split in given or len(absent) < len(classes)):
            notes.append(f"{len(absent)} of {len(classes)} classes have no {split} photos: "
                         + _some(absent))
    no_train = [c for c in classes if counts.get("train", Counter())[c] == 0]
    if no_train:
        notes.append(f"{len(no_train)} class(es) have no training photos (the model cannot "
                     f"learn them): {_some(no_train)}")
    tiny = [c for c in classes if 0 < sum(per_class[c].values()) < 4]
    if tiny:
        notes.append(f"{len(tiny)} class(es) have fewer than 4 photos (too few to learn or "
                     f"measure well): {_some(tiny)}")
    return notes


def _some(names: list[str], most: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
