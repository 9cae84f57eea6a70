"""`convlab data prepare`: messy folders, duplicates, splits, shards, resume and refusal."""

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from convlab.data import prepare, read_manifest
from convlab.data.synthetic import draw, make_folder
from convlab.data.tfrecord import SHARD_NAME, parse_example
from convlab.errors import ConvlabError


def photo(label="circle", size=40, seed=0, mode="RGB") -> Image.Image:
    return draw(label, size, random.Random(seed)).convert(mode)


def save(path, img, fmt, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


@pytest.fixture
def messy(tmp_path):
    """Every kind of input a real photo folder holds. Returns (root, expected outcome)."""
    root = tmp_path / "photos"
    kept = {}  # path -> class, the images that must be kept

    def keep(path, label):
        kept[str(path)] = label

    for i in range(6):  # plain JPEGs, enough for a split
        keep(save(root / "circle" / f"c{i}.jpg", photo("circle", seed=i), "JPEG"), "circle")
        keep(save(root / "square" / f"s{i}.jpg", photo("square", seed=i), "JPEG"), "square")
    keep(save(root / "circle" / "nested" / "deeper" / "c_nested.jpg", photo(seed=50), "JPEG"),
         "circle")
    keep(save(root / "circle" / "png_named.jpg", photo(seed=51), "PNG"), "circle")
    keep(save(root / "circle" / "cmyk.jpg", photo(seed=52, mode="CMYK"), "JPEG"), "circle")
    img16 = Image.fromarray(np.asarray(photo(seed=53, mode="L"), np.uint16) * 257)
    keep(save(root / "circle" / "sixteen.png", img16, "PNG"), "circle")
    exif = Image.Exif()
    exif[0x0112] = 6
    keep(save(root / "square" / "rotated.jpg", photo("square", seed=54), "JPEG",
              exif=exif.tobytes()), "square")
    keep(save(root / "square" / "anim.gif", photo("square", seed=55), "GIF"), "square")
    keep(save(root / "square" / "pic.bmp", photo("square", seed=56), "BMP"), "square")
    keep(save(root / "square" / "pic.webp", photo("square", seed=57), "WEBP"), "square")
    keep(save(root / "square" / "alpha.png", photo("square", seed=58, mode="RGBA"), "PNG"),
         "square")
    keep(save(root / "square" / "palette.png", photo("square", seed=59, mode="P"), "PNG"),
         "square")
    keep(save(root / "square" / "grey.jpg", photo("square", seed=60, mode="L"), "JPEG"),
         "square")

    full = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(full, "JPEG")
    (root / "circle" / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (root / "circle" / "empty.jpg").write_bytes(b"")
    (root / "circle" / "text.jpg").write_text("this is not a photo")
    os.symlink(root / "circle" / "gone.jpg", root / "circle" / "broken_link.jpg")
    # A byte-identical copy in the same class, and one file under two classes.
    (root / "square" / "s0_copy.jpg").write_bytes((root / "square" / "s0.jpg").read_bytes())
    (root / "circle" / "c0_also_square.jpg").write_bytes((root / "circle" / "c0.jpg").read_bytes())
    (root / "square" / "c0_in_square.jpg").write_bytes((root / "circle" / "c0.jpg").read_bytes())
    del kept[str(root / "circle" / "c0.jpg")]
    # Clearly not photos: ignored quietly, counted.
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "README.txt").write_text("my flowers")
    (root / "square" / "labels.csv").write_text("a,b\n")
    (root / "empty_class").mkdir()
    skipped = {
        "truncated": ["circle/truncated.jpg"], "empty": ["circle/empty.jpg"],
        "not an image": ["circle/text.jpg"], "broken link": ["circle/broken_link.jpg"],
        "duplicate": ["square/s0_copy.jpg"],
        "ambiguous duplicate": ["circle/c0.jpg", "circle/c0_also_square.jpg",
                                "square/c0_in_square.jpg"],
    }
    return root, kept, skipped


def read_records(out, manifest):
    records = []
    for shard in manifest["shards"]:
        for raw in tf.data.TFRecordDataset(str(out / shard["file"])):
            ex = parse_example(raw)
            records.append({
                "split": shard["split"],
                "image": tf.io.decode_jpeg(ex["image"]).numpy(),
                "class": int(ex["class"]),
                "label": ex["label"].numpy().decode(),
                "size": ex["size"].numpy().tolist(),
                "one_hot": ex["one_hot_class"].numpy(),
            })
    return records


def test_messy_folder_keeps_every_decodable_image_and_accounts_for_the_rest(messy, tmp_path):
    root, kept, skipped = messy
    out = tmp_path / "out"
    manifest = prepare(str(root), out, size=24, shards=2, val_fraction=0.25, progress=False)

    assert manifest["classes"] == ["circle", "square"]
    assert manifest["empty_classes"] == ["empty_class"]
    used = {i["path"]: i["class"] for i in manifest["inputs"]}
    assert used == kept
    by_reason = {}
    for s in manifest["skipped"]:
        by_reason.setdefault(s["reason"], []).append(os.path.relpath(s["path"], root))
    assert {r: sorted(p) for r, p in by_reason.items()} == {r: sorted(p) for r, p in
                                                             skipped.items()}
    assert sorted(os.path.relpath(p, root) for p in manifest["ignored"]) == [
        ".DS_Store", "README.txt", "square/labels.csv"]
    # Every file under root is kept, skipped or ignored: nothing silently dropped.
    all_files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    assert len(all_files) == len(kept) + sum(map(len, skipped.values())) + 3
    kinds = Counter(g["kind"] for g in manifest["duplicates"])
    assert kinds == {"same class": 1, "ambiguous": 1}

    records = read_records(out, manifest)
    assert len(records) == manifest["counts"]["total"] == len(kept)
    assert {r["image"].shape for r in records} == {(24, 24, 3)}


def test_prepared_flower_photos_shards_agree_with_manifest(flower_photos, tmp_path):
    # All 3,453 full-resolution photos, at a small size: JPEG draft decoding keeps it fast.
    out = tmp_path / "flowers"
    manifest = prepare(str(flower_photos), out, size=32, shards=4, progress=False)

    assert manifest["classes"] == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    assert manifest["counts"]["candidates"] == 3453
    assert set(manifest["counts"]["per_split"]) == {"train", "validation"}
    # The folder holds byte-identical copies within a class and across two classes.
    kinds = Counter(g["kind"] for g in manifest["duplicates"])
    assert kinds["same class"] >= 1 and kinds["ambiguous"] >= 1
    ambiguous = [s for s in manifest["skipped"] if s["reason"] == "ambiguous duplicate"]
    assert len(ambiguous) == 2 * kinds["ambiguous"]
    assert manifest["counts"]["total"] + manifest["counts"]["skipped"] == 3453

    records = read_records(out, manifest)
    for shard in manifest["shards"]:
        assert int(SHARD_NAME.match(shard["file"])["count"]) == shard["count"]
    assert len(records) == manifest["counts"]["total"]
    per_split = Counter(r["split"] for r in records)
    assert dict(per_split) == manifest["counts"]["per_split"]
    for r in records[::50]:
        assert r["image"].shape == (32, 32, 3)
        assert r["size"] == [32, 32]
        assert manifest["classes"][r["class"]] == r["label"]
        assert int(np.argmax(r["one_hot"])) == r["class"] and r["one_hot"].sum() == 1
    # Stratified: each class's validation share is close to 20%.
    for label, counts in manifest["counts"]["per_class"].items():
        assert abs(counts["validation"] / sum(counts.values()) - 0.2) < 0.01, label


def test_same_plan_is_found_complete_and_a_different_one_refused(tmp_path):
    src = make_folder(tmp_path / "src", num_classes=2, per_class=10, size=24)
    out = tmp_path / "out"
    first = prepare(str(src), out, size=16, shards=2, progress=False)
    again = prepare(str(src), out, size=16, shards=2, progress=False)
    assert again["fingerprint"] == first["fingerprint"]
    assert again["resumed"] == "already complete"
    with pytest.raises(ConvlabError, match="different prepared dataset.*--overwrite"):
        prepare(str(src), out, size=20, shards=2, progress=False)
    replaced = prepare(str(src), out, size=20, shards=2, overwrite=True, progress=False)
    assert replaced["image_size"] == [20, 20]
    assert sorted(p.name for p in out.iterdir()) == sorted(  # the lock went with the job
        ["manifest.json"] + [s["file"] for s in replaced["shards"]])


def test_the_manifest_reads_as_attributes_and_older_manifests_still_read(tmp_path):
    src = make_folder(tmp_path / "src", num_classes=3, per_class=10, size=24)
    out = tmp_path / "out"
    prepare(str(src), out, size=16, shards=2, test_fraction=0.2, quality=80, progress=False)
    raw = json.loads((out / "manifest.json").read_text())
    manifest = read_manifest(out)
    assert manifest.raw == raw and dict(manifest) == raw  # the JSON, also as a mapping
    assert (manifest.classes, manifest.num_classes, manifest.stored_size, manifest.quality,
            manifest.total) == (tuple(raw["classes"]), 3, 16, 80, 30)
    assert {s: manifest.count(s) for s in ("train", "validation", "test")} == raw["counts"][
        "per_split"]
    assert [s.file for s in manifest.shards_of("test")] == [
        s["file"] for s in raw["shards"] if s["split"] == "test"]
    assert manifest.count("nonesuch") == 0 and not manifest.has_split("nonesuch")
    # written before the manifest had notes, given splits and the count of enlarged photos
    for key in ("notes", "given_splits"):
        del raw[key]
    del raw["counts"]["enlarged"]
    (out / "manifest.json").write_text(json.dumps(raw))
    older = read_manifest(out)
    assert (older.notes, older.given_splits, older.enlarged) == ((), {}, 0)
    assert older.per_split == manifest.per_split
    del raw["shards"]
    (out / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ConvlabError, match="not a complete convlab manifest"):
        read_manifest(out)


def test_the_same_photos_give_byte_identical_shards_in_every_process(tmp_path):
    src = make_folder(tmp_path / "src", num_classes=3, per_class=12, size=24)
    sums = []
    for name in ("a", "b"):  # two processes: protobuf map order and thread order differ
        subprocess.run([sys.executable, "-m", "convlab", "data", "prepare", str(src),
                        str(tmp_path / name), "--size", "16", "--shards", "2", "--quiet"],
                       check=True, capture_output=True, timeout=300)
        sums.append({s["file"]: s["sha256"] for s in read_manifest(tmp_path / name)["shards"]})
    assert sums[0] == sums[1] and len(sums[0]) == 4


def test_killed_run_leaves_no_whole_looking_shard_and_resumes(tmp_path):
    src = make_folder(tmp_path / "src", num_classes=4, per_class=600, size=64)
    out = tmp_path / "out"
    code = ("import sys; from convlab.data import prepare; "
            f"prepare({str(src)!r}, {str(out)!r}, size=48, shards=8, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    parts = out / ".convlab-parts"

    def recorded():  # finished part records; `train00.tmp123.json` is one being written
        return [p for p in parts.glob("*.json") if ".tmp" not in p.name] \
            if parts.exists() else []

    while time.time() < deadline and not recorded():
        assert proc.poll() is None, "prepare finished before it could be interrupted"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert not (out / "manifest.json").exists()
    done = {json.loads(p.read_text())["file"] for p in recorded()}
    whole_looking = {p.name for p in out.glob("*.tfrec")}
    # Anything else is still under a .tmp name, except at most the one shard renamed in
    # the instant before its record was: the resumed run redoes that one.
    assert done <= whole_looking and len(whole_looking - done) <= 1
    assert 1 <= len(done) < 16
    with pytest.raises(ConvlabError, match="interrupted"):
        read_manifest(out)
    mtimes = {name: (out / name).stat().st_mtime_ns for name in done}

    manifest = prepare(str(src), out, size=48, shards=8, progress=False)
    assert manifest["counts"]["total"] == 2400
    assert {name: (out / name).stat().st_mtime_ns for name in done} == mtimes  # reused
    assert sum(1 for _ in tf.data.TFRecordDataset(
        [str(out / s["file"]) for s in manifest["shards"]])) == 2400
    assert not list(out.glob("*.tmp")) and not parts.exists()


def test_test_split_and_glob_source(tmp_path):
    src = make_folder(tmp_path / "src", num_classes=3, per_class=20, size=24)
    manifest = prepare(str(src / "*" / "*.jpg"), tmp_path / "out", size=16, shards=3,
                       val_fraction=0.2, test_fraction=0.1, progress=False)
    assert manifest["counts"]["per_split"] == {"train": 42, "validation": 12, "test": 6}
    assert manifest["classes"] == ["circle", "square", "triangle"]


@pytest.mark.parametrize("bad, message", [
    ({"size": 4}, "--size"), ({"val_fraction": 1.5}, "--val-fraction"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, "leave images for training"),
    ({"shards": 0}, "--shards"), ({"quality": 0}, "--quality"),
])
def test_bad_options_are_refused(tmp_path, bad, message):
    src = make_folder(tmp_path / "src", num_classes=2, per_class=3, size=16)
    with pytest.raises(ConvlabError, match=message):
        prepare(str(src), tmp_path / "out", progress=False, **bad)



def test_each_prepare_flag_sets_its_argument_and_names_its_default(monkeypatch, capsys):
    """prepare's options are defined once (ingest.PREPARE_OPTIONS): each flag of `convlab data
    prepare` sets the prepare() argument it names, unset it passes prepare()'s own default,
    and its help names that default."""
    import inspect

    from convlab.cli import data as cli_data
    from convlab.cli.main import build_parser
    from convlab.data import ingest

    defaults = {name: p.default for name, p in inspect.signature(ingest.prepare).parameters.items()
                if p.kind is p.KEYWORD_ONLY}
    given = {"size": 64, "shards": 3, "val_fraction": 0.25, "test_fraction": 0.1, "quality": 77,
             "seed": 7, "workers": 2, "overwrite": True}
    # every option of prepare() is a flag (but `progress`: --quiet), and has a value here
    assert [o.name for o in ingest.PREPARE_OPTIONS] == list(given) == list(defaults)[:-1]
    received = []
    monkeypatch.setattr(ingest, "prepare", lambda src, out, **kw: received.append(kw))
    monkeypatch.setattr(cli_data, "print_prepare_summary", lambda manifest, out: None)
    flags = [a for o in ingest.PREPARE_OPTIONS for a in (
        [o.flag] if o.type is bool else [o.flag, str(given[o.name])])]
    for argv in (["photos", "out"], ["photos", "out", *flags, "--quiet"]):
        args = build_parser().parse_args(["data", "prepare", *argv])
        assert args.func(args) == 0
    assert received[0] == defaults
    assert received[1] == {**given, "progress": False}
    assert all(type(received[1][k]) is type(v) for k, v in given.items())
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "prepare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for option in ingest.PREPARE_OPTIONS:
        value = "" if option.type is bool else " " + option.name.upper()
        # an option off or unset by default (None, False, 0) names no default
        shown = f" (default: {option.default})" if option.default else ""
        assert f"{option.flag}{value} {option.help}{shown}" in help_text, option.flag
    assert "--size SIZE output image size in px (default: 192)" in help_text

def test_remote_pattern_is_read_through_tf_io_gfile(tmp_path):
    # TensorFlow's in-memory filesystem stands in for gs://: same tf.io.gfile code path.
    root = f"ram://convlab-test-{os.getpid()}"
    for label in ("circle", "square"):
        tf.io.gfile.makedirs(f"{root}/{label}/nested")
        for i in range(4):
            buf = io.BytesIO()
            photo(label, seed=i).save(buf, "PNG")
            with tf.io.gfile.GFile(f"{root}/{label}/{i}.jpg", "wb") as f:
                f.write(buf.getvalue())
    with tf.io.gfile.GFile(f"{root}/circle/notes.txt", "wb") as f:
        f.write(b"not a photo")
    manifest = prepare(f"{root}/*/*", tmp_path / "out", size=16, shards=1, progress=False)
    assert manifest["classes"] == ["circle", "square"]
    assert manifest["counts"]["total"] == 8
    assert manifest["ignored"] == [f"{root}/circle/notes.txt"]
    assert {i["path"] for i in manifest["inputs"]} == {
        f"{root}/{c}/{i}.jpg" for c in ("circle", "square") for i in range(4)}
