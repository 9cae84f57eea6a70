"""Ingest: photos -> validated, deduplicated, resized, sharded TFRecords + manifest.json.

Two parallel passes over the source: a cheap probe (read, hash, sniff the header) that lets
duplicates and non-images be found before anything is split, then the decode/resize/re-encode
pass, streamed shard by shard. Each shard is written under a temporary name and renamed when
complete, with a small record of it beside; a re-run with the same plan resumes from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from convlab.config import check_image_size
from convlab.data.manifest import (
    FORMAT,
    MANIFEST,
    PARTS,
    SPLITS,
    STATE,
    Manifest,
    load_json,
    new_manifest,
    strangers,
    verify_shards,
    write_manifest,
    written_by_prepare,
)
from convlab.data.sources import Scan, file_sha256, is_remote, join, read_bytes, scan_source
from convlab.errors import ConvlabError, check_at_least
from convlab.files import LOCK, cache_dir, locked, write_text_atomic
from convlab.progress import progress_bar


@dataclass(frozen=True)
class Option:
    """One option of `prepare`, and of `convlab data prepare` as `flag`: its only definition.
    prepare()'s defaults, the flag and its `--help` text (hence the docs' CLI reference) come
    from here."""

    name: str  # prepare()'s argument
    type: type
    default: object
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


PREPARE_OPTIONS = (
    Option("size", int, 192, "output image size in px"),
    Option("shards", int, 16, "TFRecord files per split"),
    Option("val_fraction", float, 0.2, "validation share, stratified by class"),
    Option("test_fraction", float, 0.0, "test share"),
    Option("quality", int, 90, "JPEG quality"),
    Option("seed", int, 42, "split and shuffle seed"),
    Option("workers", int, None, "decoding threads (one per core)"),
    Option("overwrite", bool, False, "replace a different dataset already in OUT"),
)
DEFAULTS = {option.name: option.default for option in PREPARE_OPTIONS}


@dataclass(frozen=True)
class PrepareOptions:
    """What determines the prepared dataset (workers and progress do not): the options'
    values as `prepare` received them (their defaults: `PREPARE_OPTIONS`)."""

    size: int
    shards: int
    val_fraction: float
    test_fraction: float
    quality: int
    seed: int

    def validate(self) -> None:
        check_image_size("size", self.size)
        if self.shards < 1:
            raise ConvlabError(f"--shards must be at least 1, received: {self.shards}")
        for name, value in (("val", self.val_fraction), ("test", self.test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ConvlabError(f"--{name}-fraction must be in [0, 1), received: {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConvlabError(
                "--val-fraction + --test-fraction must leave images for training, received: "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        if not 1 <= self.quality <= 100:
            raise ConvlabError(f"--quality must be in 1..100, received: {self.quality}")


# ---- what the worker threads run ----


def _probe(path: str) -> dict:
    from convlab.data import decode  # Pillow: loaded by the first photo, not by `convlab --help`

    try:
        data = read_bytes(path)
    except OSError as err:
        return {"path": path, "reason": "unreadable", "detail": str(err)}
    digest = hashlib.sha256(data).hexdigest()
    try:
        fmt, (width, height) = decode.sniff(data)
    except decode.SkipImage as skip:
        return {"path": path, "sha256": digest, "reason": skip.reason, "detail": skip.detail}
    return {"path": path, "sha256": digest, "format": fmt, "width": width, "height": height}


def _decode(path: str, size: int, quality: int) -> tuple[str, object]:
    from convlab.data import decode

    try:
        return path, decode.decode_and_resize(read_bytes(path), size, quality)
    except decode.SkipImage as skip:
        return path, {"reason": skip.reason, "detail": skip.detail}
    except OSError as err:
        return path, {"reason": "unreadable", "detail": str(err)}


# ---- planning ----


def _dedupe(probes: list[dict], label_of: dict[str, str],
            split_of: dict[str, str | None] | None = None) -> tuple[list[dict], list[dict], list]:
    """Keep one copy of byte-identical files within a class (the training split's, where the
    source gives splits: a copy in validation or test would measure memory, not skill); drop
    copies across classes."""
    order = {None: 0, "train": 0, "validation": 1, "test": 2}
    split_of = split_of or {}
    by_hash = defaultdict(list)
    for p in probes:
        by_hash[p["sha256"]].append(p)
    kept, skipped, groups = [], [], []
    for digest, group in by_hash.items():
        group.sort(key=lambda p: (order[split_of.get(p["path"])], p["path"]))
        classes = sorted({label_of[p["path"]] for p in group})
        if len(classes) > 1:
            groups.append({"sha256": digest, "kind": "ambiguous", "classes": classes,
                           "kept": None, "dropped": [p["path"] for p in group]})
            for p in group:
                skipped.append({"path": p["path"], "class": label_of[p["path"]],
                                "reason": "ambiguous duplicate",
                                "detail": f"identical files under classes {', '.join(classes)}"})
            continue
        kept.append(group[0])
        if len(group) > 1:
            groups.append({"sha256": digest, "kind": "same class", "classes": classes,
                           "kept": group[0]["path"], "dropped": [p["path"] for p in group[1:]]})
            for p in group[1:]:
                skipped.append({"path": p["path"], "class": classes[0], "reason": "duplicate",
                                "detail": f"same bytes as {group[0]['path']}"})
    return kept, skipped, groups


def _split(items: list[dict], opts: PrepareOptions,
           given: dict[str, str] | None = None) -> dict[str, list[list[dict]]]:
    """Stratified split by class, then shuffle each split and cut it into shards.

    Items from a source that gives splits (`item["split"]`) keep theirs; a validation or test
    split the source does not give is drawn from its training photos, stratified, at the
    options' fractions (a given test split is never added to)."""
    rng = random.Random(opts.seed)
    given = given or {}
    splits = {name: [] for name in SPLITS}
    pool = []
    for item in sorted(items, key=lambda i: i["path"]):
        if item.get("split") in ("validation", "test") or (
                item.get("split") == "train" and "validation" in given and "test" in given):
            splits[item["split"]].append(item)
        else:
            pool.append(item)
    val_fraction = 0.0 if "validation" in given else opts.val_fraction
    test_fraction = 0.0 if "test" in given else opts.test_fraction
    by_class = defaultdict(list)
    for item in pool:
        by_class[item["class"]].append(item)
    for label in sorted(by_class):
        group = by_class[label]
        rng.shuffle(group)
        n_val = round(len(group) * val_fraction)
        n_test = round(len(group) * test_fraction)
        if val_fraction > 0 and n_val == 0 and len(group) > 1:
            n_val = 1  # a class never seen in validation hides its errors
        # every class keeps at least one training photo: a class the model never sees
        # cannot be learnt, and its validation photos would only count as errors
        while n_val + n_test > len(group) - 1 and n_val + n_test > 0:
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        splits["validation"] += group[:n_val]
        splits["test"] += group[n_val:n_val + n_test]
        splits["train"] += group[n_val + n_test:]
    sharded = {}
    for name, members in splits.items():
        if not members:
            continue
        rng.shuffle(members)
        k = min(opts.shards, len(members))
        sharded[name] = [members[i * len(members) // k:(i + 1) * len(members) // k]
                         for i in range(k)]
    return sharded


def _fingerprint(opts: PrepareOptions, classes: list[str], plan: dict) -> str:
    body = {"options": asdict(opts), "classes": classes,
            "plan": {s: [[i["sha256"] for i in shard] for shard in shards]
                     for s, shards in plan.items()}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# ---- the output folder: new, resumable, up to date, or refused ----


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold an exclusive lock on OUT while preparing into it: a second `prepare` into the
    same folder stops at once with a clear error instead of mixing its shards in. The lock
    file goes when the job ends (removed while still held), and so does OUT if this job made
    it and left it empty: a refused prepare leaves nothing behind."""
    if out.exists() and not out.is_dir():
        raise ConvlabError(f"output '{out}' is a file; give a folder (it will be created)")
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / LOCK).touch()
    except OSError as err:
        raise ConvlabError(f"cannot write to output folder '{out}': {err.strerror}") from None
    try:
        with locked(out, f"another `convlab data prepare` is writing '{out}' right now; wait "
                         "for it to finish, or prepare into another folder", remove=True):
            yield
    finally:
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _previous(out: Path) -> dict | None:
    """The manifest (or, for an interrupted job, the state) convlab left in OUT; None when
    there is neither; {"damaged": name} when convlab's file there is cut short or garbled.

    Raises:
        ConvlabError: OUT holds a manifest or state that some other tool wrote, or a damaged
            one beside files convlab does not write: not a convlab dataset, nothing deleted.
    """
    for name in (MANIFEST, STATE):
        file = out / name
        if not file.exists():
            continue
        try:
            value = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            value = None
        if isinstance(value, dict) and (value.get("format") == FORMAT
                                        or name == STATE and "fingerprint" in value):
            return value
        others = strangers(out)
        if value is not None or others:
            what = f"its {name} was not written by convlab" if value is not None else (
                f"its {name} is unreadable and it holds {others[0]!r}")
            raise ConvlabError(f"output folder '{out}' is not a convlab dataset ({what}); "
                               "convlab deletes nothing there: choose an empty or new folder")
        return {"damaged": name}
    return None


def _claim_output(out: Path, fingerprint: str, overwrite: bool) -> Manifest | None:
    """Make OUT (an existing folder, locked by `_exclusive`) ready for this plan. Returns the
    existing manifest if it is already done. Whose files are in OUT is decided before anything
    is deleted, and only files convlab wrote are: `--overwrite` replaces a convlab dataset,
    never a folder of something else."""
    previous = _previous(out)
    if previous is not None and "damaged" in previous and not overwrite:
        load_json(out / previous["damaged"], (out / previous["damaged"]).read_text(
            errors="replace"))  # raises, naming what is wrong and the fix
    same_plan = previous is not None and previous.get("fingerprint") == fingerprint
    if same_plan and (out / MANIFEST).exists():
        done = Manifest.from_dict(dict(previous, resumed="already complete"))
        damaged = verify_shards(out, done, checksums=True)
        if not damaged:
            return done  # done already, and every shard proved intact
        if not overwrite:
            raise ConvlabError(f"'{out}' holds this dataset but {damaged[0]} ({len(damaged)} "
                               "damaged shard(s)); pass --overwrite to make it again")
        same_plan = False
    if previous is None:
        others = sorted(p.name for p in out.iterdir() if p.name != LOCK)
        if others:
            raise ConvlabError(f"output folder '{out}' is not empty and is not a convlab "
                               f"dataset (has {others[0]!r}); choose an empty or new folder")
    elif not same_plan:  # same plan without a manifest: an interrupted run, resume it
        if not overwrite:
            raise ConvlabError(
                f"'{out}' already holds a different prepared dataset (from "
                f"{previous.get('source')}, size {previous.get('options', {}).get('size')}); "
                "choose another output folder or pass --overwrite"
            )
        for p in out.iterdir():
            if written_by_prepare(p.name):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    try:
        (out / PARTS).mkdir(parents=True, exist_ok=True)
        probe = out / ".convlab-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConvlabError(f"cannot write to output folder '{out}': {err.strerror}") from None
    return None


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


# ---- the whole job ----


def _pool(workers: int | None):
    """Threads, not processes: Pillow releases the GIL while it decodes, resizes and encodes
    and hashlib while it hashes, so threads use every core (benchmarks/ingest_workers.py: 843
    images/s with 2 threads vs 877 with 2 processes, 503 serial), and they work from a
    notebook, stdin or a script without a `__main__` guard, which spawned processes re-run."""
    workers = workers or os.cpu_count() or 1
    return None if workers <= 1 else ThreadPoolExecutor(workers)


def _map(pool, fn, args: list[tuple]):
    if pool is None or not args:
        return (fn(*a) for a in args)
    return pool.map(fn, *zip(*args, strict=True))


def prepare(src: str, out: str | os.PathLike, *, size: int = DEFAULTS["size"],
            shards: int = DEFAULTS["shards"], val_fraction: float = DEFAULTS["val_fraction"],
            test_fraction: float = DEFAULTS["test_fraction"], quality: int = DEFAULTS["quality"],
            seed: int = DEFAULTS["seed"], workers: int | None = DEFAULTS["workers"],
            overwrite: bool = DEFAULTS["overwrite"], progress: bool = True) -> Manifest:
    """Turn photos into sharded TFRecords with a manifest.

    Args:
        src: a folder of class subfolders, a glob or gs:// pattern, or "flowers".
        out: output folder; created if missing. Re-running with the same source and
            options resumes an interrupted run or finds it already done.
        size: output images are size x size (aspect kept, centre-cropped).
        shards: TFRecord files per split (fewer if a split has fewer images).
        val_fraction, test_fraction: stratified by class.
        quality: JPEG quality of the re-encoded images.
        seed: fixes the split and the shuffle.
        workers: threads for reading and decoding (default: one per core).
        overwrite: replace a different dataset already in `out`.
        progress: show progress bars.

    Returns:
        The `Manifest` (also written to `out/manifest.json`).

    Raises:
        ConvlabError: bad path, no images, bad options, or an output folder that holds
            something else.
    """
    opts = PrepareOptions(size, shards, val_fraction, test_fraction, quality, seed)
    opts.validate()
    if workers is not None:
        check_at_least("workers", workers, 1)
    if is_remote(str(out)):
        return _prepare_remote(src, str(out), opts, workers, overwrite, progress)
    out = Path(out)
    started = time.time()
    scan = scan_source(src)
    if Path(scan.source).is_dir() and out.resolve().is_relative_to(scan.source):
        raise ConvlabError(f"output folder '{out}' is inside the photos '{src}'; convlab writes "
                           "nothing into a source folder: prepare into a folder outside it")
    pool = _pool(workers)
    try:
        plan = _plan(src, scan, opts, pool, progress)
        with _exclusive(out):
            done = _claim_output(out, plan.fingerprint, overwrite)
            if done is not None:
                return done
            return _write_dataset(out, plan, opts, pool, progress, started)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


@dataclass(frozen=True)
class _Plan:
    """What a source and the options make, decided before anything is written."""

    scan: Scan
    classes: list[str]
    empty: list[str]  # class folders without a usable image
    shards: dict[str, list[list[dict]]]  # split -> its shards -> their members
    skipped: list[dict]
    duplicates: list[dict]
    fingerprint: str


def _check_files(scan: Scan, pool, progress: bool) -> tuple[list[dict], list[dict]]:
    """Probe every candidate: (the probes of the images, every file skipped and why)."""
    label_of = {c.path: c.label for c in scan.candidates}
    with progress_bar(progress, len(scan.candidates), "checking files", keep=True) as advance:
        probes, skipped = [], list(scan.skipped)
        for result in _map(pool, _probe, [(c.path,) for c in scan.candidates]):
            advance()
            if "reason" in result:
                skipped.append({"path": result["path"], "class": label_of[result["path"]],
                                "reason": result["reason"], "detail": result["detail"]})
            else:
                probes.append(result)
    return probes, skipped


def _plan(src: str, scan: Scan, opts: PrepareOptions, pool, progress: bool) -> _Plan:
    """Check, deduplicate and split the source's files into shards.

    Raises:
        ConvlabError: fewer than 2 classes hold usable images.
    """
    label_of = {c.path: c.label for c in scan.candidates}
    split_of = {c.path: c.split for c in scan.candidates}
    probes, skipped = _check_files(scan, pool, progress)
    kept, dup_skipped, dup_groups = _dedupe(probes, label_of, split_of)
    skipped += dup_skipped
    classes = sorted({label_of[p["path"]] for p in kept})
    empty = sorted(set(scan.empty_classes) | (set(scan.labels) - set(classes)))
    if len(classes) < 2:
        raise ConvlabError(
            f"found {len(kept)} usable images in {len(classes)} class(es) under '{src}' "
            f"({len(skipped)} skipped, {len(scan.ignored)} ignored); a classifier needs "
            "image files in at least 2 class subfolders"
        )
    items = [{"path": p["path"], "class": label_of[p["path"]], "sha256": p["sha256"],
              "split": split_of[p["path"]]} for p in kept]
    shards = _split(items, opts, scan.given_splits)
    return _Plan(scan, classes, empty, shards, skipped, dup_groups,
                 _fingerprint(opts, classes, shards))


def _write_dataset(out: Path, plan: _Plan, opts: PrepareOptions, pool, progress: bool,
                   started: float) -> Manifest:
    """Write the plan's shards, then the manifest, into OUT (claimed and locked); the state
    file written first lets an interrupted job resume."""
    try:
        _write_json(out / STATE, {"fingerprint": plan.fingerprint, "source": plan.scan.source,
                                  "options": asdict(opts), "started": started})
        shard_records = _write_shards(out, plan.shards, plan.classes, opts, pool, progress,
                                      plan.scan.source)
        manifest = new_manifest(plan.scan, asdict(opts), plan.classes, plan.empty,
                                list(plan.shards), shard_records, plan.skipped,
                                plan.duplicates, plan.fingerprint, started)
        write_manifest(out, manifest)
    except OSError as err:  # e.g. the disk filled up (temporary files are removed)
        raise ConvlabError(f"cannot write {err.filename or out}: {err.strerror}; free "
                           "some space and run the same command again: finished "
                           "shards are kept") from None
    (out / STATE).unlink(missing_ok=True)
    shutil.rmtree(out / PARTS, ignore_errors=True)
    return manifest


def record_path(path: str, source: str) -> str:
    """What a record keeps of its photo's path: relative to the source folder when it lies
    in it (portable with the folder), else as given (a pattern's match, a URL)."""
    if is_remote(path) or not os.path.isdir(source):
        return path
    full = os.path.abspath(path)
    return os.path.relpath(full, source) if full.startswith(source.rstrip(os.sep) + os.sep) \
        else full


def _shards_to_write(out: Path, plan: dict) -> tuple[list[dict], list[tuple]]:
    """The records of the shards a previous run of this plan finished, and the (split,
    index, members) of the shards still to write."""
    records, todo = [], []
    for split, shards in plan.items():
        for index, members in enumerate(shards):
            part = out / PARTS / f"{split}{index:02d}.json"
            if part.exists():
                record = json.loads(part.read_text())
                if (out / record["file"]).exists():
                    records.append(record)
                    continue
            for stale in out.glob(f"{split}{index:02d}-*.tfrec"):
                stale.unlink()  # renamed but never recorded: redo it
            todo.append((split, index, members))
    return records, todo


def _write_shards(out, plan, classes, opts, pool, progress, source: str) -> list[dict]:
    records, todo = _shards_to_write(out, plan)
    total = sum(len(m) for _, _, m in todo)
    with progress_bar(progress, total, "writing shards", keep=True) as advance:
        for split, index, members in todo:
            records.append(_write_shard(out, split, index, members, classes, opts, pool,
                                        source, advance))
    order = {s: i for i, s in enumerate(SPLITS)}
    return sorted(records, key=lambda r: (order[r["split"]], r["file"]))


def _write_shard(out, split, index, members, classes, opts, pool, source: str,
                 advance) -> dict:
    """Decode, resize and re-encode one shard's photos into its TFRecord file (written under
    a temporary name, renamed when whole), then record it beside; returns the record."""
    import tensorflow as tf

    from convlab.data.tfrecord import encode_example, shard_name

    class_index = {c: i for i, c in enumerate(classes)}
    tmp = out / f"{split}{index:02d}.tfrec.tmp"
    per_class, failures, count, enlarged = Counter(), [], 0, 0
    args = [(m["path"], opts.size, opts.quality) for m in members]
    by_path = {m["path"]: m for m in members}
    try:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for path, result in _map(pool, _decode, args):
                advance()
                member = by_path[path]
                if isinstance(result, dict):
                    failures.append({"path": path, "class": member["class"], **result})
                    continue
                writer.write(encode_example(result.jpeg, class_index[member["class"]],
                                            member["class"], opts.size, len(classes),
                                            record_path(path, source)))
                per_class[member["class"]] += 1
                count += 1
                member["format"] = result.source_format
                # short side below the output size: upsampled, no detail added
                enlarged += min(result.source_size) < opts.size
    except (OSError, tf.errors.OpError) as err:  # e.g. the disk is full
        tmp.unlink(missing_ok=True)
        why = getattr(err, "strerror", None) or getattr(err, "message", None) or err
        raise ConvlabError(f"cannot write shard '{tmp}': {why}; free some space and "
                           "run the same command again: finished shards are kept") from None
    failed = {f["path"] for f in failures}
    name = shard_name(split, index, count)
    record = {"file": name, "split": split, "count": count,
              "bytes": tmp.stat().st_size, "sha256": file_sha256(tmp),
              "per_class": dict(sorted(per_class.items())), "failures": failures,
              "enlarged": enlarged,
              "members": [{"path": m["path"], "class": m["class"],
                           "sha256": m["sha256"]} for m in members
                          if m["path"] not in failed]}
    os.replace(tmp, out / name)
    _write_json(out / PARTS / f"{split}{index:02d}.json", record)
    return record


def _prepare_remote(src: str, out: str, opts: PrepareOptions, workers, overwrite: bool,
                    progress: bool) -> Manifest:
    """Prepare into a local staging folder, then upload: shards first, the manifest last, so
    a reader never finds a manifest whose shards are not all there."""
    import tensorflow as tf

    staging = cache_dir() / "staging" / hashlib.sha256(out.encode()).hexdigest()[:12]
    manifest = prepare(src, staging, **asdict(opts), workers=workers, overwrite=True,
                       progress=progress)
    target = join(out, MANIFEST)
    if tf.io.gfile.exists(target):
        with tf.io.gfile.GFile(target) as f:
            there = load_json(target, f.read())
        if there.get("format") != FORMAT:
            raise ConvlabError(f"'{target}' was not written by convlab; convlab deletes nothing "
                               "there: choose another folder")
        if there.get("fingerprint") == manifest.fingerprint:
            return Manifest.from_dict(there)  # the same plan was uploaded before
        if not overwrite:
            raise ConvlabError(f"'{out}' already holds a different prepared dataset; choose "
                               "another folder or pass --overwrite")
        tf.io.gfile.remove(target)
    tf.io.gfile.makedirs(out)
    shards = [s.file for s in manifest.shards]
    with progress_bar(progress, len(shards) + 1, f"uploading to {out}", keep=True) as advance:
        for name in shards + [MANIFEST]:
            tf.io.gfile.copy(str(staging / name), join(out, name), overwrite=True)
            advance()
    shutil.rmtree(staging, ignore_errors=True)
    return manifest
