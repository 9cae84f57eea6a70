"""Where photos come from: a folder of class subfolders (optionally inside split folders such
as train/ and test/), a labels file (CSV), a glob, a gs:// pattern, or `flowers`.

A source is scanned into candidates (path + class label, and the split when the source gives
one). Nothing is decoded here; files that are clearly not photos are counted and set aside,
and every other file is a candidate that ingest sniffs by content.
"""

from __future__ import annotations

import csv
import glob as globlib
import hashlib
import os
import stat
import tarfile
import tempfile
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
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


# Split folder names as datasets spell them (any case) -> convlab's split names.
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "validation",
                 "valid": "validation", "validation": "validation", "dev": "validation",
                 "test": "test", "testing": "test"}
# A labels file's columns, as Kaggle-style CSVs name them (any case), first match wins.
PATH_COLUMNS = ("path", "filepath", "file_path", "file", "filename", "file_name", "image",
                "image_path", "image_id", "img", "id")
LABEL_COLUMNS = ("label", "class", "class_name", "category", "target", "labels", "species",
                 "breed")
SPLIT_COLUMNS = ("split", "subset", "set")
# Tried after a labels file's path that names no file, for ids listed without an extension.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".heic",
                  ".heif", ".avif", ".gif")


@dataclass(frozen=True)
class Candidate:
    path: str
    label: str
    split: str | None = None  # train / validation / test when the source gives it


@dataclass
class Scan:
    """The result of listing a source, before anything is decoded."""

    source: str
    candidates: list[Candidate] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # clearly not photos
    skipped: list[dict] = field(default_factory=list)  # {path, class, reason, detail}
    empty_classes: list[str] = field(default_factory=list)
    # split layouts: convlab's split name -> the folder (or labels value) that gave it
    given_splits: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return sorted({c.label for c in self.candidates})


def is_remote(path: str) -> bool:
    return "://" in path


def join(folder: str | os.PathLike, name: str) -> str:
    """`folder/name` for local folders and for URLs (gs://...), which Path would mangle."""
    folder = str(folder)
    return f"{folder.rstrip('/')}/{name}" if is_remote(folder) else str(Path(folder) / name)


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


LINK_ACROSS = "link to another class's folder"


def _overlap(a: str, b: str) -> bool:
    """Whether one real folder is, or is inside, the other."""
    return os.path.commonpath([a, b]) in (a, b)


def walk_files(folder: str | os.PathLike,
               fence: Iterable[str | os.PathLike] = ()) -> Iterator[tuple[str, str | None]]:
    """(path, `file_kind`) of every file under `folder`: sorted, hidden folders skipped.
    Linked folders are followed, each real folder once (a link loop ends there), except a
    link into (or above) a `fence` folder, e.g. the other classes' folders: that link is
    given as (link, LINK_ACROSS), not followed. Ingest and predict walk folders through this."""
    seen = {os.path.realpath(folder)}
    fenced = [os.path.realpath(f) for f in fence]
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            link = os.path.join(dirpath, d)
            real = os.path.realpath(link)
            if d.startswith(".") or real in seen:
                continue
            if os.path.islink(link) and any(_overlap(real, f) for f in fenced):
                yield link, LINK_ACROSS
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            yield path, file_kind(path)


def _add_file(scan: Scan, path: str, label: str, kind: str | None,
              split: str | None = None) -> None:
    if kind == "ignored":
        scan.ignored.append(path)
    elif kind is not None:
        detail = os.readlink(path) if kind in ("broken link", LINK_ACROSS) else ""
        scan.skipped.append({"path": path, "class": label, "reason": kind, "detail": detail})
    else:
        scan.candidates.append(Candidate(path, label, split))


def class_name(name: str, where: str | os.PathLike) -> str:
    """A folder's or a labels file's class name as convlab uses it: Unicode NFC (so `café`
    typed two ways is one class).

    Raises:
        ConvlabError: the name holds control characters (a newline would break labels.txt;
            an escape sequence would act on a terminal).
    """
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        raise ConvlabError(f"class name {name!r} (from {str(where)!r}) holds control "
                           "characters; rename it to plain text")
    return unicodedata.normalize("NFC", name).strip() or name


def _class_labels(dirs: list[Path]) -> dict[str, Path]:
    """{class name: its folder}, each name checked and normalised once (`class_name`).

    Raises:
        ConvlabError: two folders whose names normalise to the same class name.
    """
    seen: dict[str, Path] = {}
    for d in dirs:
        label = class_name(d.name, d)
        if label in seen:
            raise ConvlabError(f"class folders {str(seen[label])!r} and {str(d)!r} have the "
                               "same name written two ways (Unicode normalisation); merge or "
                               "rename one")
        seen[label] = d
    return seen


def _subfolders(folder: Path, scan: Scan, where: str) -> list[Path]:
    """The visible subfolders of `folder`; its loose files are ignored or reported, and so
    are hidden folders other than tools' own (a class named `...` is not dropped unsaid)."""
    dirs = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and entry.name.startswith("."):
            if entry.name.strip(".") == "" or not entry.name[1:2].isalpha():
                scan.skipped.append({"path": str(entry), "class": None,
                                     "reason": "hidden folder",
                                     "detail": "names starting with '.' are skipped; rename "
                                               "it to use it as a class"})
        elif entry.is_dir():
            dirs.append(entry)
        elif clearly_not_photo(entry.name):
            scan.ignored.append(str(entry))
        else:
            scan.skipped.append(
                {"path": str(entry), "class": None, "reason": f"outside {where}",
                 "detail": "put each image in a subfolder named after its class"})
    return dirs


def split_layout(root: Path) -> dict[str, Path] | None:
    """{split: folder} when `root`'s subfolders are all split folders (train/, val/, test/
    ..., any case) and the train one holds class subfolders; else None (plain class folders).
    A dataset with classes really named 'train' and 'test' has photos directly inside them,
    so it stays a folder of classes."""
    dirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if not dirs or any(d.name.lower() not in SPLIT_FOLDERS for d in dirs):
        return None
    found: dict[str, Path] = {}
    for d in sorted(dirs):
        split = SPLIT_FOLDERS[d.name.lower()]
        if split in found:
            raise ConvlabError(f"'{root}' has two {split} folders, {found[split].name!r} and "
                               f"{d.name!r}; keep one")
        found[split] = d
    if "train" not in found or not any(
            c.is_dir() and not c.name.startswith(".") for c in found["train"].iterdir()):
        return None
    return found


def scan_folder(root: str | os.PathLike) -> Scan:
    """List a folder of class subfolders, or of split folders (train/, val/ or validation/,
    test/) each holding the same class subfolders; files in nested folders count for their
    class.

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
    splits = split_layout(root)
    if splits is None:
        _scan_classes(scan, root, _subfolders(root, scan, "class folders"), None)
        return scan
    _subfolders(root, scan, "split folders")  # README, LICENSE beside train/ and test/
    for split, folder in splits.items():
        scan.given_splits[split] = folder.name
        _scan_classes(scan, folder, _subfolders(folder, scan, "class folders"), split)
    return scan


def _scan_classes(scan: Scan, root: Path, class_dirs: list[Path], split: str | None) -> None:
    if not class_dirs:
        raise ConvlabError(
            f"no class subfolders in '{root}'; expected one folder per class, e.g. "
            f"{root}/daisy/*.jpg, {root}/tulip/*.jpg"
        )
    for label, class_dir in _class_labels(class_dirs).items():
        before = len(scan.candidates)
        # a link in one class's folder must not pull in another class's photos
        for path, kind in walk_files(class_dir, [d for d in class_dirs if d != class_dir]):
            _add_file(scan, path, label, kind, split)
        if len(scan.candidates) == before and split in (None, "train"):
            scan.empty_classes.append(label)


def _column(header: list[str], choices: tuple[str, ...]) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    return next((lower[c] for c in choices if c in lower), None)


def scan_labels(file: str | os.PathLike) -> Scan:
    """List the photos of a labels file: a CSV (or TSV) with a path column and a label column
    (and optionally a split column: train / val / test), paths relative to the file's folder
    (the Kaggle layout). Ids listed without an extension are matched to an image file.

    Raises:
        ConvlabError: unreadable, no recognisable columns, or no listed file found.
    """
    file = Path(file)
    rows, columns = _labels_table(file)
    base = file.resolve().parent
    scan = Scan(source=str(file.resolve()))
    missing = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        name, label, split = _labels_row(file, row, number, columns, len(rows[0]), scan)
        if not label:
            scan.skipped.append({"path": name, "class": None, "reason": "no label",
                                 "detail": f"line {number} of {file.name}"})
            continue
        path = _listed_file(base, name)
        if path is None:
            missing.append(name)
            scan.skipped.append({"path": str(base / name), "class": label,
                                 "reason": "listed but missing",
                                 "detail": f"line {number} of {file.name}"})
            continue
        _add_file(scan, str(path), label, file_kind(str(path)), split)
    if not scan.candidates:
        raise ConvlabError(
            f"labels file '{file}' lists {len(rows) - 1} row(s) but none names an existing "
            f"file (e.g. {missing[0]!r} under '{base}')" if missing else
            f"labels file '{file}' lists no photos")
    return scan


def _labels_table(file: Path) -> tuple[list[list[str]], dict[str, int]]:
    """A labels file's rows (the header first) and where its columns are: {"path": i,
    "label": j}, and "split" when it has one.

    Raises:
        ConvlabError: unreadable, or no path or no label column.
    """
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConvlabError(f"cannot read labels file '{file}': "
                           f"{getattr(err, 'strerror', None) or err}") from None
    delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    header = rows[0] if rows else []
    path_col, label_col = _column(header, PATH_COLUMNS), _column(header, LABEL_COLUMNS)
    if path_col is None or label_col is None:
        raise ConvlabError(
            f"labels file '{file}' has columns {', '.join(map(repr, header)) or 'none'}; "
            f"it needs a path column ({', '.join(PATH_COLUMNS[:5])}, ...) and a label column "
            f"({', '.join(LABEL_COLUMNS[:4])}, ...): rename its header")
    split_col = _column(header, SPLIT_COLUMNS)
    found = {"path": path_col, "label": label_col, "split": split_col}
    return rows, {key: header.index(name) for key, name in found.items() if name}


def _labels_row(file: Path, row: list[str], number: int, columns: dict[str, int], width: int,
                scan: Scan) -> tuple[str, str, str | None]:
    """(path, class name, split) of a labels file's line `number`; a split it names is
    recorded in `scan.given_splits` as written.

    Raises:
        ConvlabError: the line has too few columns, or names an unknown split.
    """
    if len(row) < width:
        raise ConvlabError(f"labels file '{file}' line {number} has {len(row)} of "
                           f"{width} columns; fix or remove that line")
    name = row[columns["path"]].strip()
    label = class_name(row[columns["label"]].strip(), f"{file.name} line {number}")
    split = None
    if "split" in columns:
        value = row[columns["split"]].strip()
        split = SPLIT_FOLDERS.get(value.lower())
        if split is None:
            raise ConvlabError(f"labels file '{file}' line {number}: split {value!r} is "
                               f"not one of {', '.join(sorted(SPLIT_FOLDERS))}")
        scan.given_splits.setdefault(split, value)
    return name, label, split


def _listed_file(base: Path, name: str) -> Path | None:
    path = base / name
    if path.is_file():
        return path
    if not path.suffix:
        for suffix in IMAGE_SUFFIXES:
            for spelled in (suffix, suffix.upper()):
                if (found := path.with_name(path.name + spelled)).is_file():
                    return found
    return None


def is_labels_file(src: str) -> bool:
    return src.lower().endswith((".csv", ".tsv")) and not is_remote(src) and os.path.isfile(src)


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
        label = class_name(os.path.basename(os.path.dirname(path.rstrip("/"))), path)
        remote = "ignored" if clearly_not_photo(os.path.basename(path)) else None
        _add_file(scan, path, label, remote if is_remote(path) else file_kind(path))
    if not scan.candidates and not scan.skipped:
        raise ConvlabError(f"no files match '{pattern}'; check the pattern")
    return scan


def scan_source(src: str) -> Scan:
    """Scan a named source (`NAMED_SOURCES`: `flowers`, `synthetic`), a folder of class (or
    split) subfolders, a labels file, or a glob / gs:// pattern (a path that exists is a path,
    even with `[` or `?` in it)."""
    if src in NAMED_SOURCES:
        return scan_folder(NAMED_SOURCES[src]())
    if is_labels_file(src):
        return scan_labels(src)
    if is_remote(src) or (not os.path.exists(src) and any(ch in src for ch in "*?[")):
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


def _synthetic_folder() -> Path:
    from convlab.data import synthetic

    return synthetic.make_folder(cache_dir() / "datasets" / "synthetic")


# The photos convlab knows by name (`--data NAME`, `convlab data prepare NAME`): each one's
# folder of class subfolders, fetched or made once.
NAMED_SOURCES: dict[str, Callable[[], Path]] = {
    "flowers": fetch_flowers,  # the public 5-class set, downloaded once
    "synthetic": _synthetic_folder,  # generated shapes, for offline demos
}
