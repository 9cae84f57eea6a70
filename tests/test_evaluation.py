"""Evaluation: metrics against hand-checkable counts, plots, the HTML report, in a browser."""

import argparse
import base64
import csv
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlab.cli.results import register
from convlab.config import TrainConfig
from convlab.data import load, read_manifest
from convlab.data.synthetic import make_folder
from convlab.errors import ConvlabError
from convlab.evaluation import evaluate, format_metrics, make_plots
from convlab.evaluation.report import CAPTIONS
from convlab.runs import PLOTS, RunFolder
from convlab.workflow import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tiny_prepared):
    """One tiny run (3 classes, 16 px, 2 epochs), trained once for the whole module."""
    prepared = tiny_prepared(shards=2)
    root = prepared.parent
    run = train(TrainConfig(), data=str(prepared), model="squeezenet", image_size=16,
                batch_size=8, epochs=2, precision="float32",
                model_options={"layout": [[8, 16], "pool", [8, 16]]},
                runs_dir=str(root / "runs"), progress=False)
    return run, prepared


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the run: tests write metrics, plots and reports into it."""
    return shutil.copytree(trained[0], tmp_path / trained[0].name)


def cli(argv):
    parser = argparse.ArgumentParser(prog="convlab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_evaluate_own_validation_split_agrees_with_manifest_and_training(run, trained):
    metrics = evaluate(run)
    manifest = read_manifest(trained[1])
    counts = np.array(metrics["confusion_matrix"])
    assert metrics["split"] == "validation" and metrics["model_file"] == "best.keras"
    assert counts.sum() == manifest["counts"]["per_split"]["validation"] == metrics["images"]
    assert metrics["accuracy"] == pytest.approx(np.trace(counts) / counts.sum())
    for i, name in enumerate(metrics["classes"]):
        row = metrics["per_class"][name]
        assert row["support"] == manifest["counts"]["per_class"][name]["validation"]
        assert row["support"] == counts[i].sum()
        assert row["recall"] == pytest.approx(counts[i, i] / counts[i].sum())
    np.testing.assert_allclose(np.array(metrics["confusion_matrix_normalized"]).sum(1), 1,
                               atol=1e-3)
    assert metrics["top_k"] == 2 and metrics["top_k_accuracy"] >= metrics["accuracy"]
    # best.keras is the epoch with the best val_accuracy: Keras measured the same numbers.
    best = json.loads((run / "summary.json").read_text())["best"]
    assert metrics["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)
    # Keras' val_loss is the model's own probabilities' NLL; the loss shown is the calibrated one
    assert metrics["calibration"]["nll"] == pytest.approx(best["val_loss"], rel=1e-4)
    assert metrics["loss"] == pytest.approx(metrics["calibration"]["nll_calibrated"], rel=1e-4)
    assert metrics["loss"] <= metrics["calibration"]["nll"] + 1e-6
    assert json.loads((run / "metrics.json").read_text()) == metrics
    # The plots' pixels are the evaluated images, in the evaluated order.
    with np.load(run / "predictions.npz") as saved:
        assert saved["labels"].shape == (metrics["images"],)
        assert (saved["probabilities"].argmax(1) == saved["labels"]).mean() == pytest.approx(
            metrics["accuracy"])
        first, _ = next(iter(load(trained[1], "validation", batch_size=5, training=False)))
        np.testing.assert_array_equal(saved["images"][:5], np.round(first.numpy() * 255))
        assert saved["image_index"][:5].tolist() == list(range(5))
    text = format_metrics(metrics)
    assert "macro avg" in text and all(c in text for c in metrics["classes"])


def test_mistakes_are_listed_with_their_files(run, capsys):
    import csv

    assert cli(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "mistakes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with np.load(run / "predictions.npz") as saved:
        wrong = saved["probabilities"].argmax(1) != saved["labels"]
        paths = [str(p) for p in saved["paths"]]
    assert len(rows) == metrics["mistakes"] == int(wrong.sum()) > 0
    confidence = [float(r["p_predicted"]) for r in rows]
    assert confidence == sorted(confidence, reverse=True)
    assert sorted(r["path"] for r in rows) == sorted(np.array(paths)[wrong].tolist())
    for r in rows:  # each is a real file, in its label's folder, and was mispredicted
        assert os.path.isfile(r["path"]) and os.path.basename(os.path.dirname(r["path"])) \
            == r["label"] != r["predicted"]
    assert f"{len(rows)} mistakes" in out and rows[0]["path"] in out
    from convlab.evaluation.report import report

    page = report(run).read_text()
    assert "Mistakes, with their files" in page and rows[0]["path"] in page


def test_flip_tta_evaluates_the_mean_of_image_and_mirror(run, trained):
    from convlab.runs import load_run_model

    metrics = evaluate(run, tta="flip")
    assert metrics["tta"] == "flip" and "test-time augmentation: flip" in format_metrics(metrics)
    model = load_run_model(run)[0]
    hits = 0
    for x, y in load(trained[1], "validation", batch_size=64, training=False):
        x = x.numpy()
        mean = (model.predict_on_batch(x) + model.predict_on_batch(x[:, :, ::-1])) / 2
        hits += int(np.sum(mean.argmax(axis=1) == y.numpy()))
    assert metrics["accuracy"] == pytest.approx(hits / metrics["images"])
    with pytest.raises(ConvlabError, match="--tta must be one of none, flip"):
        evaluate(run, tta="five-crop")


def test_cli_evaluate_final_model_with_top_1(run, capsys):
    assert cli(["evaluate", str(run), "--model", "final", "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    final = json.loads((run / "summary.json").read_text())["final"]
    assert metrics["model_file"] == "model.keras" and metrics["top_k"] == 1
    assert metrics["top_k_accuracy"] == metrics["accuracy"]
    assert metrics["accuracy"] == pytest.approx(final["val_accuracy"], abs=1e-6)
    assert f"accuracy {metrics['accuracy']:.4f}" in out and "weighted avg" in out
    with pytest.raises(ConvlabError, match="received: 5"):
        evaluate(run, top_k=5)


def test_photo_folder_classes_are_matched_by_name(run, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLAB_CACHE", str(tmp_path / "cache"))
    photos = make_folder(tmp_path / "photos", num_classes=3, per_class=5, size=24, seed=7)
    shutil.rmtree(photos / "circle")  # its classes are now indices 0, 1; the model's 1, 2
    metrics = evaluate(run, data=photos)
    assert metrics["split"] == "all" and metrics["images"] == 10
    supports = {c: r["support"] for c, r in metrics["per_class"].items()}
    assert supports == {"circle": 0, "square": 5, "triangle": 5}
    assert sum(metrics["confusion_matrix"][0]) == 0


def test_evaluations_on_other_data_go_beside_the_runs_own_and_the_report_labels_them(
        run, tmp_path, monkeypatch, capsys):
    from convlab.evaluation.report import report

    monkeypatch.setenv("CONVLAB_CACHE", str(tmp_path / "cache"))
    own = evaluate(run)
    photos = make_folder(tmp_path / "phone", num_classes=3, per_class=4, size=24, seed=9)
    assert cli(["evaluate", str(run), "--data", str(photos)]) == 0
    other = run / "evaluations" / "phone-all"
    assert f"wrote {other / 'metrics.json'} (predictions.npz" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text()) == own  # the run's own is kept
    saved = json.loads((other / "metrics.json").read_text())
    assert saved["evaluation"] == "phone-all" and saved["images"] == 12
    with np.load(other / "predictions.npz") as predictions:
        assert predictions["labels"].shape == (12,)
    evaluate(run, split="train")
    assert (run / "evaluations" / f"{trained_name(run)}-train" / "metrics.json").exists()
    assert json.loads((run / "metrics.json").read_text()) == own
    # another test size or test-time augmentation of the run's own split goes beside it too
    flipped = evaluate(run, tta="flip", image_size=20)
    assert flipped["evaluation"] == f"{trained_name(run)}-validation-20px-flip"
    assert json.loads((run / "metrics.json").read_text()) == own
    assert Path(flipped["metrics_file"]).parent.parent == run / "evaluations"
    assert "best.keras + tta flip at 20 px" in report(run).read_text()
    page = report(run).read_text()
    assert "Other evaluations" in page and "phone-all" in page
    assert f"{saved['accuracy']:.4f}" in page and f"{own['accuracy']:.4f}" in page


def trained_name(run):
    """The folder name of the run's own prepared data."""
    from convlab.runs import read_record

    return read_record(run).prepared_data.rstrip("/").rsplit("/", 1)[-1]


def test_unknown_class_in_photo_folder_is_named(run, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLAB_CACHE", str(tmp_path / "cache"))
    photos = make_folder(tmp_path / "photos", num_classes=4, per_class=5, size=24)
    with pytest.raises(ConvlabError, match="'stripes'") as err:
        evaluate(run, data=photos)
    assert "\n" not in str(err.value) and "circle, square, triangle" in str(err.value)


def test_plots_are_valid_pngs(run):
    evaluate(run)
    made = make_plots(run)
    assert sorted(made) == sorted(["training_curves.png", "confusion_matrix.png",
                                   "predictions.png", "mistakes.png", "mistakes_gradcam.png",
                                   "augmentation.png", "reliability.png"])
    with np.load(run / "predictions.npz") as pred:  # one heat map per mistake shown
        assert pred["mistake_heat"].shape[0] == len(pred["mistakes"])
        assert pred["mistake_heat"].min() >= 0 and pred["mistake_heat"].max() <= 1
    for path in made.values():
        assert path.parent == run / "plots" and path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) >= 300
            im.verify()


def test_run_plots_are_named_once_each_with_a_caption(tmp_path):
    folder = RunFolder(tmp_path)
    assert list(CAPTIONS) == list(PLOTS)  # the report shows them in this order
    assert folder.plot("confusion_matrix") == tmp_path / "plots" / "confusion_matrix.png"
    with pytest.raises(ValueError, match="'confusion'.*confusion_matrix"):
        folder.plot("confusion")


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def reported(trained, tmp_path_factory):
    """A report made by the CLI from a copy of the run whose name needs escaping."""
    run = shutil.copytree(trained[0], tmp_path_factory.mktemp("report") / "run")
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["name"] = "<script>alert('x')</script>"
    (run / "config.json").write_text(json.dumps(saved))
    # a photo folder deep enough to overflow the mistakes table if its paths did not wrap
    with open(run / "mistakes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    deep = "/" + "a_long_folder_name_without_any_spaces_" * 8
    with open(run / "mistakes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "path": deep + r["path"]} for r in rows)
    parser = argparse.ArgumentParser(prog="convlab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", str(run)])
    assert args.func(args) == 0
    return run / "report.html"


def test_report_is_self_contained_escaped_and_has_the_numbers(reported):
    page = reported.read_text()
    parser = _Tags()
    parser.feed(page)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    # 7 plots (mistakes_gradcam.png, reliability.png among them) + the trainer's lr_schedule.png
    assert len(images) == 8
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        data = base64.b64decode(attrs["src"].split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG"
    for _, attrs in parser.tags:
        for key in ("src", "href"):
            assert not str(attrs.get(key, "")).startswith(("http:", "https:", "//"))
    assert not any(tag in ("script", "link", "iframe") for tag, _ in parser.tags)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    metrics = json.loads((reported.parent / "metrics.json").read_text())
    for number in (metrics["accuracy"], metrics["top_k_accuracy"], metrics["loss"]):
        assert f"{number:.4f}" in page
    assert all(f"<td>{c}</td>" in page for c in metrics["classes"])
    assert "Total params" in page
    # the headline says what each number is: the calibrated cross-entropy, the speed of which
    # steps, the training losses' objective; the mistakes table lists the gallery's photos
    summary = json.loads((reported.parent / "summary.json").read_text())
    assert f"{metrics['loss']:.4f}</div><div class=\"k\">cross-entropy (calibrated)" in page
    assert (f"{summary['train_images_per_second']:,.1f}</div><div class=\"k\">training "
            "images/s (the whole network)") in page
    assert f"{summary['wall_seconds']:.0f} s</div><div class=\"k\">training wall time<" in page
    assert "loss and val_loss: Keras&#x27; training loss" in page
    shown = min(metrics["mistakes"], 16)
    assert f"the {shown} most confident below (the photos of the mistakes plots)" in page


def _chromium(*args, profile):
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)


def test_report_renders_in_chromium(reported, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,3000", reported.as_uri(),
              profile=tmp_path / "profile")
    with Image.open(shot) as im:
        # Text alone gives ~1.5k colours; the plots, drawn, add thousands more.
        assert len(im.convert("RGB").getcolors(1 << 24)) > 4000

    # A copy of the page that records, once loaded, whether each image decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(reported.read_text().replace("</body>", (
        "<script>addEventListener('load', () => {document.body.setAttribute('data-decoded', "
        "[...document.images].map(i => i.complete && i.naturalWidth > 0).join());"
        "document.body.setAttribute('data-overflowing', [...document.querySelectorAll("
        "'section')].filter(s => s.scrollWidth > s.clientWidth).length)})"
        "</script></body>")))
    dom = _chromium("--dump-dom", "--virtual-time-budget=5000", probe.as_uri(),
                    profile=tmp_path / "profile").stdout
    assert f'data-decoded="{",".join(["true"] * 8)}"' in dom
    assert 'data-overflowing="0"' in dom  # no table wider than its card
    metrics = json.loads((reported.parent / "metrics.json").read_text())
    assert f"{metrics['accuracy']:.4f}" in dom and dom.count("<img") == 8
