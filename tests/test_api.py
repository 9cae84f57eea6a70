"""The Python API: top-level functions and `convlab.load(RUN)`, equal to the CLI."""

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import convlab
from convlab.data.synthetic import make_folder


@pytest.fixture(scope="module")
def trained(tiny_prepared, tmp_path_factory):
    prepared = tiny_prepared(photo_size=40, size=24)
    run = convlab.train("squeezenet", data=str(prepared), image_size=16, batch_size=8, epochs=1,
                        precision="float32", model_options={"layout": [[8, 16], "pool", [8, 16]]},
                        report=False, runs_dir=str(tmp_path_factory.mktemp("runs")),
                        progress=False)
    photos = make_folder(tmp_path_factory.mktemp("new") / "photos", num_classes=3, per_class=2,
                         size=40, seed=5)
    return run, sorted(str(p) for p in photos.rglob("*.*"))


def test_loaded_model_predicts_paths_pil_and_numpy_like_the_cli(trained):
    run, files = trained
    clf = convlab.load(run)
    assert clf.classes == ["circle", "square", "triangle"] and clf.test_size == 16
    rows, skipped = convlab.predict(run, files, top_k=3)
    assert not skipped
    by_path = clf.predict(files, top_k=3)
    assert len(by_path) == len(files)
    for row, mine in zip(rows, by_path, strict=True):
        assert [p["class"] for p in row["predictions"]] == [p["class"] for p in mine]
        np.testing.assert_allclose([p["probability"] for p in mine],
                                   [p["probability"] for p in row["predictions"]], atol=1e-6)
    # A PIL image and a numpy array of the same photo take the same road as its file.
    with Image.open(files[0]) as img:
        pil = clf.predict(img.copy(), top_k=2)
        array = clf.predict(np.asarray(img.convert("RGB")), top_k=2)
    assert len(pil) == 2 and pil == array
    assert pil[0]["class"] == by_path[0][0]["class"]
    assert pil[0]["probability"] == pytest.approx(by_path[0][0]["probability"], abs=0.02)
    batch = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[:2]])
    assert clf.probabilities(batch).shape == (2, 3)
    np.testing.assert_allclose(clf.probabilities(batch).sum(1), 1, atol=1e-5)


def test_loaded_model_evaluates_like_evaluate_and_rejects_bad_input(trained, tmp_path):
    run, _ = trained
    clf = convlab.load(run, model="final")
    metrics = clf.evaluate()
    assert metrics["model_file"] == "model.keras"
    assert metrics == json.loads((run / "metrics.json").read_text())
    (tmp_path / "notes.txt").write_text("not a photo")
    for bad, message in ((tmp_path / "gone.jpg", "image not found: '.*gone.jpg'"),
                         (tmp_path / "notes.txt", "cannot classify '.*notes.txt': not an image"),
                         (np.zeros((8, 8, 3), np.float32), "must be uint8"),
                         (42, "cannot classify a int")):
        with pytest.raises(convlab.ConvlabError, match=message):
            clf.predict(bad)
    with pytest.raises(convlab.ConvlabError, match="top_k must be a positive integer"):
        clf.predict(np.zeros((8, 8, 3), np.uint8), top_k=0)
    with pytest.raises(convlab.ConvlabError, match="model must be 'best' or 'final'"):
        convlab.load(run, model="last")


def test_top_level_functions_are_not_shadowed_by_submodules():
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(convlab.__path__, "convlab."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)  # importing a submodule sets it on its package
    for name in ("prepare", "train", "resume", "evaluate", "predict", "export", "report",
                 "tune", "lr_find", "review", "load"):
        assert callable(getattr(convlab, name)), f"convlab.{name} is {getattr(convlab, name)}"


def test_python_api_prints_no_tensorflow_start_up_lines_and_says_what_it_wrote(
        trained, tmp_path):
    run, files = trained
    script = textwrap.dedent(f"""
        import convlab
        clf = convlab.load({str(run)!r})
        print(clf.predict({files[0]!r}, top_k=1)[0]["class"])
        clf.export("tflite", out={str(tmp_path / "tflite")!r})
        clf.evaluate()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] in ("circle", "square", "triangle")
    for noise in ("I0000", "oneDNN", "cuda", "absl", "cpu_feature_guard", "XNNPACK", "\x1b"):
        assert noise not in done.stderr, done.stderr
    # long steps say what they do while they do it (stderr), and what they wrote (stdout)
    assert re.search(r"^writing the tflite export of best.keras: done in [\d.]+ s$",
                     done.stderr, re.M), done.stderr
    assert re.search(r"^verifying the export: \d+/\d+ in [\d.]+ s$", done.stderr, re.M)
    assert f"exported {tmp_path / 'tflite' / 'model.tflite'} (" in done.stdout
    assert f"wrote {run / 'metrics.json'} (predictions.npz" in done.stdout


def test_progress_in_jupyter_without_ipywidgets_is_plain_lines(monkeypatch, recwarn,
                                                                capsys):
    import rich.console

    from convlab.progress import live_display_ok, live_output, progress_bar

    assert not live_output()  # pytest captures stdout: a pipe
    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)  # as in a notebook
    monkeypatch.setitem(sys.modules, "ipykernel", sys)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed
    assert live_output() and not live_display_ok()
    with progress_bar(True, 3, "work") as advance:
        advance(3)
    assert not [w for w in recwarn if "ipywidgets" in str(w.message)]
    # plain lines, on stdout: a notebook shows stderr as warnings
    assert re.fullmatch(r"work: 3/3 in \d\.\d s\n", capsys.readouterr().out)
