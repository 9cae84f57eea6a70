"""Any folder of photos: split folders (train/val/test), labels files, new formats, many and
tiny classes. Tiny generated images; real TensorFlow and files."""

import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from convlab.data import prepare
from convlab.data.synthetic import draw
from convlab.errors import ConvlabError

SHAPES = ("circle", "square", "triangle")


def photo(label, seed, size=24) -> Image.Image:
    return draw(label, size, random.Random(seed))


def class_folders(root, per_class: dict[str, int], seed=0, fmt="PNG", suffix=".png"):
    """root/<class>/<n>.png for each class; returns root."""
    for c, (label, n) in enumerate(per_class.items()):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = SHAPES[c % len(SHAPES)]
            photo(shape, seed * 100_000 + c * 1000 + i).save(folder / f"{i}{suffix}", fmt)
    return root


def split_counts(manifest) -> dict:
    return {c: dict(v) for c, v in manifest["counts"]["per_class"].items()}


@pytest.mark.parametrize("names", [("train", "validation", "test"), ("Train", "Val", "Test"),
                                   ("train", "valid", "test"), ("TRAINING", "dev", "testing")])
def test_split_folders_give_the_classes_inside_and_keep_the_split(tmp_path, names):
    root = tmp_path / "clothes"
    for split, n, seed in zip(names, (6, 2, 3), (0, 1, 2), strict=True):
        class_folders(root / split, {"hat": n, "shoe": n}, seed=seed)
    (root / "README.md").write_text("a dataset")
    manifest = prepare(str(root), tmp_path / "out", size=16, shards=2, progress=False)
    assert manifest["classes"] == ["hat", "shoe"]  # not train / validation / test
    assert split_counts(manifest) == {c: {"train": 6, "validation": 2, "test": 3}
                                      for c in ("hat", "shoe")}
    assert manifest["given_splits"] == dict(zip(("train", "validation", "test"), names,
                                                strict=True))
    assert any("splits given by the source" in n for n in manifest["notes"])
    # every record of the test split comes from the test folder
    tests = [i["path"] for i in manifest["inputs"] if i["split"] == "test"]
    assert len(tests) == 6 and all(f"/{names[2]}/" in p for p in tests)


def test_train_and_test_only_draw_validation_from_train_stratified(tmp_path):
    root = tmp_path / "data"
    class_folders(root / "train", {"a": 10, "b": 20})
    class_folders(root / "test", {"a": 4, "b": 4}, seed=1)
    manifest = prepare(str(root), tmp_path / "out", size=16, val_fraction=0.2, progress=False)
    assert split_counts(manifest) == {"a": {"train": 8, "validation": 2, "test": 4},
                                      "b": {"train": 16, "validation": 4, "test": 4}}
    assert manifest["given_splits"] == {"train": "train", "test": "test"}
    assert any("validation drawn from train" in n for n in manifest["notes"])
    drawn = [i["path"] for i in manifest["inputs"] if i["split"] == "validation"]
    assert drawn and all("/train/" in p for p in drawn)


def test_class_sets_that_differ_between_splits_are_reported(tmp_path):
    root = tmp_path / "data"
    class_folders(root / "train", {"a": 5, "b": 5})
    class_folders(root / "val", {"a": 2, "b": 2, "c": 2}, seed=1)
    manifest = prepare(str(root), tmp_path / "out", size=16, progress=False)
    assert manifest["classes"] == ["a", "b", "c"]
    notes = " | ".join(manifest["notes"])
    assert "have no training photos" in notes and "'c'" in notes


def test_a_duplicate_in_train_and_test_is_kept_in_train_only(tmp_path):
    root = tmp_path / "data"
    class_folders(root / "train", {"a": 4, "b": 4})
    class_folders(root / "test", {"a": 2, "b": 2}, seed=1)
    (root / "test" / "a" / "copy.png").write_bytes((root / "train" / "a" / "0.png").read_bytes())
    manifest = prepare(str(root), tmp_path / "out", size=16, val_fraction=0.0, progress=False)
    dropped = [s for s in manifest["skipped"] if s["reason"] == "duplicate"]
    assert [s["path"] for s in dropped] == [str(root / "test" / "a" / "copy.png")]


def test_classes_really_named_train_and_test_stay_classes(tmp_path):
    # photos directly inside: a two-class dataset whose classes happen to be called so
    class_folders(tmp_path / "src", {"train": 5, "test": 5})
    manifest = prepare(str(tmp_path / "src"), tmp_path / "out", size=16, progress=False)
    assert manifest["classes"] == ["test", "train"] and manifest["given_splits"] == {}


def labels_folder(tmp_path, header="filename,label", rows=None):
    images = tmp_path / "kaggle" / "images"
    images.mkdir(parents=True)
    lines = [header]
    for i in range(12):
        label = SHAPES[i % 2]
        photo(label, i).save(images / f"img{i}.jpg", "JPEG")
        lines.append(f"images/img{i}.jpg,{label}")
    lines += rows or []
    csv = tmp_path / "kaggle" / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def test_labels_file_is_a_source(tmp_path):
    csv = labels_folder(tmp_path, rows=["images/img0,circle"])  # an id without extension
    manifest = prepare(str(csv), tmp_path / "out", size=16, val_fraction=0.25, progress=False)
    assert manifest["classes"] == ["circle", "square"]
    # img0 listed twice (once without its extension): the same bytes, kept once
    assert manifest["counts"]["total"] == 12
    assert Counter(i["split"] for i in manifest["inputs"]) == {"train": 8, "validation": 4}


def test_labels_file_with_a_split_column(tmp_path):
    images = tmp_path / "k"
    images.mkdir()
    lines = ["Image,Class,Split"]
    for i in range(16):
        label = SHAPES[i % 2]
        photo(label, i).save(images / f"{i}.png", "PNG")
        lines.append(f"{i}.png,{label},{'test' if i >= 12 else 'train'}")
    (images / "l.csv").write_text("\n".join(lines))
    manifest = prepare(str(images / "l.csv"), tmp_path / "out", size=16, val_fraction=0.25,
                       progress=False)
    assert manifest["counts"]["per_split"] == {"train": 8, "validation": 4, "test": 4}


def test_labels_file_missing_files_are_reported_and_all_missing_refused(tmp_path):
    csv = labels_folder(tmp_path, rows=["images/gone.jpg,circle"])
    manifest = prepare(str(csv), tmp_path / "out", size=16, progress=False)
    missing = [s for s in manifest["skipped"] if s["reason"] == "listed but missing"]
    assert len(missing) == 1 and missing[0]["path"].endswith("gone.jpg")
    empty = tmp_path / "none.csv"
    empty.write_text("path,label\nnowhere/a.jpg,x\nnowhere/b.jpg,y\n")
    with pytest.raises(ConvlabError, match="none names an existing file.*'nowhere/a.jpg'"):
        prepare(str(empty), tmp_path / "out2", size=16, progress=False)


def test_labels_file_with_unknown_columns_gets_one_line_naming_them(tmp_path):
    csv = labels_folder(tmp_path, header="picture,kind")
    with pytest.raises(ConvlabError) as err:
        prepare(str(csv), tmp_path / "out", size=16, progress=False)
    message = str(err.value)
    assert "\n" not in message and "'picture', 'kind'" in message and "path column" in message


def test_every_new_format_is_prepared(tmp_path):
    pytest.importorskip("pillow_heif")
    root = tmp_path / "src"
    for c, label in enumerate(("circle", "square")):
        (root / label).mkdir(parents=True)
        for i, (fmt, suffix, kw) in enumerate([("TIFF", ".tif", {"compression": "tiff_lzw"}),
                                               ("HEIF", ".heic", {"quality": 90}),
                                               ("AVIF", ".avif", {"quality": 90}),
                                               ("JPEG", ".jpg", {})]):
            photo(label, c * 10 + i, size=32).save(root / label / f"{i}{suffix}", fmt, **kw)
    # a 16-bit grey TIFF and a 5-band one
    Image.fromarray(np.full((24, 24), 50000, np.uint16)).save(root / "circle" / "g16.tif")
    from test_decode import tiff_bytes

    five = np.full((6, 8, 5), 100, np.uint8)
    (root / "square" / "multispectral.tif").write_bytes(tiff_bytes(
        [(258, 3, 5, [8] * 5), (259, 3, 1, [1]), (262, 3, 1, [2]), (277, 3, 1, [5]),
         (338, 3, 2, [0, 0])], five.tobytes(), 8, 6))
    manifest = prepare(str(root), tmp_path / "out", size=16, progress=False)
    assert manifest["counts"]["total"] == 9
    assert manifest["skipped_by_reason"] == {"too many bands": 1}


def test_100_classes_of_2_photos_and_a_class_of_1(tmp_path):
    per_class = {f"class{i:03d}": 2 for i in range(100)}
    per_class["lonely"] = 1
    root = class_folders(tmp_path / "many", per_class, fmt="JPEG", suffix=".jpg")
    manifest = prepare(str(root), tmp_path / "out", size=8, shards=4, progress=False)
    counts = split_counts(manifest)
    assert manifest["num_classes"] == 101
    assert counts["lonely"] == {"train": 1, "validation": 0}
    assert all(counts[c] == {"train": 1, "validation": 1} for c in per_class if c != "lonely")
    notes = " | ".join(manifest["notes"])
    assert "101 class(es) have fewer than 4 photos" in notes
    assert "1 of 101 classes have no validation photos: 'lonely'" in notes


def test_many_classes_stay_readable_and_a_split_folder_run_scores_its_test_split(
        tmp_path, monkeypatch):
    """40 classes in train/ and test/ folders (one class with a single photo): the run
    trains, its report scores the given test split, shows the top confusions instead of a
    40 x 40 matrix, and puts balanced accuracy and macro F1 beside accuracy; the terminal
    table shows the extremes."""
    import json

    from convlab.evaluation.metrics import format_metrics, other_evaluations
    from convlab.workflow import train

    monkeypatch.setenv("CONVLAB_CACHE", str(tmp_path / "cache"))  # not the user's cache
    per_class = {f"kind{i:02d}": 4 for i in range(39)}
    per_class["single"] = 1
    root = tmp_path / "many"
    class_folders(root / "train", per_class, fmt="JPEG", suffix=".jpg")
    class_folders(root / "test", {c: 1 for c in per_class}, seed=9, fmt="JPEG", suffix=".jpg")
    run = train("squeezenet", data=str(root), image_size=16, batch_size=8, epochs=1,
                precision="float32", runs_dir=str(tmp_path / "runs"), progress=False,
                model_options={"layout": [[8, 16], "pool", [8, 16]]})
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["classes"]) == 40
    assert metrics["absent_classes"] == ["single"]  # its one photo is in train
    assert 0 <= metrics["balanced_accuracy"] <= 1 and "macro_f1" in metrics
    assert (run / "plots" / "top_confusions.png").exists()
    assert not (run / "plots" / "confusion_matrix.png").exists()
    html = (run / "report.html").read_text()
    assert "balanced accuracy" in html and "top_confusions.png" in html
    tests = [m for m in other_evaluations(run) if m["split"] == "test"]
    assert len(tests) == 1 and tests[0]["images"] == 40
    text = format_metrics(metrics)
    assert "balanced accuracy" in text and "... 20 more" in text
    assert len(text.splitlines()) < 40


def test_inspect_counts_a_split_folder_per_split(tmp_path):
    from convlab.data.inspect import counts

    root = tmp_path / "d"
    class_folders(root / "train", {"a": 3, "b": 2})
    class_folders(root / "test", {"a": 1, "b": 1}, seed=1)
    info = counts(root)
    assert info["classes"] == ["a", "b"] and info["splits"] == ["train", "test"]
    assert info["per_class"] == {"a": {"train": 3, "test": 1}, "b": {"train": 2, "test": 1}}


def test_prepare_takes_a_labels_file_as_a_flag_and_refuses_two_sources(tmp_path, capsys):
    import json

    from convlab.cli import main

    csv = labels_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["data", "prepare", "--labels", str(csv), str(out), "--size", "16",
                 "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["counts"]["total"] == 12
    assert main(["data", "prepare", str(tmp_path), str(tmp_path / "o2"), "--labels", str(csv),
                 "--quiet"]) == 2
    assert "one of the two" in capsys.readouterr().err
