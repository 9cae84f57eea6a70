"""Where photos come from: a folder of class subfolders, a glob, a gs:// pattern, or `flowers`.

A source is scanned into candidates (path + class label from the folder name). Nothing is
decoded here; files that are clearly not photos are counted and set aside, and every other
file is a candidate that ingest sniffs by content.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from convlab.errors import ConvlabError
from convlab.files import cache_dir

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
# From TensorFlow Datasets' url_checksums/tf_flowers.txt.
FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
FLOWERS_BYTES = 228_813_984

# Files that are clearly not photos: ignored quietly, but counted and listed in the manifest.
# Anything else is sniffed by content, so a text file named .jpg is reported, not ignored.
NOT_PHOTO_NAMES = frozenset({"thumbs.db", "desktop.ini", "license", "readme"})
NOT_PHOTO_SUFFIXES = frozenset(
    ".txt .csv .tsv .md .rst .json .jsonl .xml .yaml .yml .html .htm .pdf .doc .docx .py .ipynb"
    " .ini .log .db .sqlite .zip .tar .gz .tgz .7z .rar .mp4 .mov .avi .mp3 .wav .xmp .aae".split()
)


@dataclass(frozen=True)
class Candidate:
    path: str
    label: str


@dataclass
class Scan:
    """The result of listing a source, before anything is decoded."""

    source: str
    candidates: list[Candidate] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # clearly not photos
    skipped: list[dict] = field(default_factory=list)  # {path, class, reason, detail}
    empty_classes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return sorted({c.label for c in self.candidates})


def is_remote(path: str) -> bool:
    return "://" in path


def clearly_not_photo(name: str) -> bool:
    lower = name.lower()
    stem, suffix = os.path.splitext(lower)
    return lower.startswith(".") or lower in NOT_PHOTO_NAMES or stem in NOT_PHOTO_NAMES or (
        suffix in NOT_PHOTO_SUFFIXES
    )


def file_kind(path: str) -> str | None:
    """None for a local file to try as an image, "ignored" for one that is clearly not a
    photo (`.txt`, `.DS_Store`, ...), "broken link" for a link to nothing, "not a regular
    file" for a FIFO, socket or device (reading one could block forever)."""
    if clearly_not_photo(os.path.basename(path)):
        return "ignored"
    try:
        mode = os.stat(path).st_mode  # follows links; never opens the file
    except OSError:
        return "broken link" if os.path.islink(path) else "unreadable"
    return None if stat.S_ISREG(mode) else "not a regular file"


def walk_files(folder: str | os.PathLike) -> Iterator[tuple[str, str | None]]:
    """(path, `file_kind`) of every file under `folder`: sorted, hidden folders skipped.
    Linked folders are followed, each real folder once (a link loop ends there). Ingest and
    predict walk folders through this."""
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if not d.startswith(".") and real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            yield path, file_kind(path)


def _add_file(scan: Scan, path: str, label: str, kind: str | None) -> None:
    if kind == "ignored":
        scan.ignored.append(path)
    elif kind is not None:
        detail = os.readlink(path) if kind == "broken link" else ""
        scan.skipped.append({"path": path, "class": label, "reason": kind, "detail": detail})
    else:
        scan.candidates.append(Candidate(path, label))


def scan_folder(root: str | os.PathLike) -> Scan:
    """List a folder of class subfolders; files in nested folders count for their class.

    Raises:
        ConvlabError: the path is missing, is a file, or has no class subfolders.
    """
    root = Path(root)
    if not root.exists():
        raise ConvlabError(f"data folder not found: '{root}'; check the path")
    if not root.is_dir():
        raise ConvlabError(
            f"'{root}' is a file, not a folder; give a folder with one subfolder per class"
        )
    scan = Scan(source=str(root.resolve()))
    class_dirs = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            class_dirs.append(entry)
        elif not entry.is_dir():
            if clearly_not_photo(entry.name):
                scan.ignored.append(str(entry))
            else:
                scan.skipped.append(
                    {"path": str(entry), "class": None, "reason": "outside class folders",
                     "detail": "put each image in a subfolder named after its class"}
                )
    if not class_dirs:
        raise ConvlabError(
            f"no class subfolders in '{root}'; expected one folder per class, e.g. "
            f"{root}/daisy/*.jpg, {root}/tulip/*.jpg"
        )
    for class_dir in class_dirs:
        before = len(scan.candidates)
        for path, kind in walk_files(class_dir):
            _add_file(scan, path, class_dir.name, kind)
        if len(scan.candidates) == before:
            scan.empty_classes.append(class_dir.name)
    return scan


def scan_pattern(pattern: str) -> Scan:
    """List files matching a glob (local or gs://); the class is each file's parent folder."""
    if is_remote(pattern):
        import tensorflow as tf

        try:
            paths = sorted(tf.io.gfile.glob(pattern))
        except tf.errors.OpError as err:
            raise ConvlabError(f"cannot list '{pattern}': {err.message}") from None
        isdir = tf.io.gfile.isdir
    else:
        paths = sorted(globlib.glob(os.path.expanduser(pattern), recursive=True))
        isdir = os.path.isdir
    scan = Scan(source=pattern)
    for path in paths:
        if isdir(path):
            continue
        label = os.path.basename(os.path.dirname(path.rstrip("/")))
        remote = "ignored" if clearly_not_photo(os.path.basename(path)) else None
        _add_file(scan, path, label, remote if is_remote(path) else file_kind(path))
    if not scan.candidates and not scan.skipped:
        raise ConvlabError(f"no files match '{pattern}'; check the pattern")
    return scan


def scan_source(src: str) -> Scan:
    """Scan `flowers`, `synthetic`, a folder of class subfolders, or a glob / gs:// pattern."""
    if src == "flowers":
        return scan_folder(fetch_flowers())
    if src == "synthetic":
        from convlab.data import synthetic

        return scan_folder(synthetic.make_folder(cache_dir() / "datasets" / "synthetic"))
    if is_remote(src) or any(ch in src for ch in "*?["):
        return scan_pattern(src)
    return scan_folder(src)


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_flowers(root: Path | None = None, *, url: str = FLOWERS_URL,
                  sha256: str = FLOWERS_SHA256, expected_bytes: int = FLOWERS_BYTES) -> Path:
    """Download the public 5-class flowers photos once, verify the checksum, extract, cache.

    Returns:
        The folder of class subfolders (daisy, dandelion, roses, sunflowers, tulips).

    Raises:
        ConvlabError: offline, or the download does not match the published checksum.
    """
    root = Path(root or cache_dir() / "datasets")
    folder = root / "flower_photos"
    complete = root / "flower_photos.complete"  # beside, not inside: it is not a photo
    if complete.exists() and folder.is_dir():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "flower_photos.tgz"
    if not (archive.exists() and file_sha256(archive) == sha256):
        _download(url, archive, expected_bytes)
        if file_sha256(archive) != sha256:
            archive.unlink()
            raise ConvlabError(
                f"downloaded {url} but its sha256 does not match {sha256}; "
                "the file was removed, try again"
            )
    with tempfile.TemporaryDirectory(dir=root) as tmp, tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, filter="data")
        else:  # Python < 3.11.4 has no extraction filters: refuse what "data" would
            inside = Path(tmp).resolve()
            for member in tar.getmembers():
                if not (member.isfile() or member.isdir()) or not (
                        inside / member.name).resolve().is_relative_to(inside):
                    raise ConvlabError(f"{archive}: refusing archive member {member.name!r} "
                                       "(a link, a device or a path outside the archive)")
            tar.extractall(tmp)
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        os.replace(Path(tmp) / "flower_photos", folder)
    complete.touch()
    return folder


def _download(url: str, dest: Path, expected_bytes: int) -> None:
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from convlab.progress import live_display_ok

    partial = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or expected_bytes)
            with Progress(
                *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                disable=not live_display_ok()
            ) as bar:
                task = bar.add_task(f"downloading {os.path.basename(url)}", total=total)
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(task, advance=len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise ConvlabError(
            f"cannot download the flowers dataset from {url} ({reason}); offline? "
            "use a local folder of class subfolders instead, "
            "e.g. --data ../shared/data/flower_photos (or as SRC of `convlab data prepare`)"
        ) from None
    os.replace(partial, dest)
