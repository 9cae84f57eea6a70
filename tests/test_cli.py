"""The `convlab` command as a user runs it: outputs, files written, and clean errors."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from convlab.cli import main
from convlab.data.synthetic import make_folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("cli") / "photos", num_classes=3, per_class=24,
                       size=40)


@pytest.fixture(scope="module")
def prepared(photos):
    out = photos.parent / "prepared"
    assert main(["data", "prepare", str(photos), str(out), "--size", "24", "--shards", "3",
                 "--quiet"]) == 0
    return out


def run_cli(*args, env=None):
    """Run `python -m convlab` in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "convlab", *map(str, args)], text=True,
                          capture_output=True, env={**os.environ, **(env or {})}, timeout=300)


def test_prepare_prints_a_summary_table(photos, tmp_path, capsys):
    (photos.parent / "notes.txt").write_text("x")
    assert main(["data", "prepare", str(photos), str(tmp_path / "o"), "--size", "16",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # rich wraps the table's title where the path is long
    assert "72 images, 16 px" in flat and "circle" in out and "train" in out
    assert "kept 72 of 72 candidate files; skipped 0" in flat


@pytest.mark.parametrize("make_bad, message", [
    (lambda p: p / "missing", "data folder not found"),
    (lambda p: p / "circle" / "circle_00000.jpg", "is a file, not a folder"),
    (lambda p: p / "circle", "no class subfolders"),
])
def test_bad_source_exits_2_with_one_line(photos, tmp_path, capsys, make_bad, message):
    assert main(["data", "prepare", str(make_bad(photos)), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convlab: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_folder_without_images_and_unwritable_output(tmp_path, photos, capsys):
    junk = tmp_path / "junk" / "a"
    junk.mkdir(parents=True)
    (junk / "x.jpg").write_text("not an image")
    (tmp_path / "junk" / "b").mkdir()
    assert main(["data", "prepare", str(tmp_path / "junk"), str(tmp_path / "o")]) == 2
    assert "found 0 usable images" in capsys.readouterr().err
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    assert main(["data", "prepare", str(photos), str(blocker / "out"), "--quiet"]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err
    assert main(["data", "prepare", str(photos), str(blocker), "--quiet"]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def test_user_error_in_a_fresh_process_has_no_traceback(tmp_path):
    result = run_cli("data", "prepare", tmp_path / "nope", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"convlab: error: data folder not found: '{tmp_path / 'nope'}'; check the path"]


def test_inspect_prints_counts_and_writes_a_grid(prepared, tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert main(["data", "inspect", str(prepared), "--out", str(png), "--count", "6"]) == 0
    out = capsys.readouterr().out
    assert "circle" in out and "validation" in out
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 200


def test_bench_compares_per_file_and_tfrecord(prepared, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal, as far as the progress bar knows
    assert main(["data", "bench", str(prepared), "--rounds", "1", "--batch-size", "8"]) == 0
    out, err = capsys.readouterr()
    assert "round 1/1: per-file, cache none" in err  # progress, on stderr
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 7 and "memory (2nd epoch)" in out and "1.00x" in out
    assert "decode only" in rows[0] and "bytes in memory" in rows[0]


def test_bench_with_simulated_storage_latency(prepared, capsys):
    assert main(["data", "bench", str(prepared), "--rounds", "1", "--batch-size", "8",
                 "--latency-ms", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert "2 ms per file" in out
    assert len(rows) == 5 and "memory" not in out.split("decode only")[1]
    assert main(["data", "bench", str(prepared), "--latency-ms", "-1"]) == 2
    assert "--latency-ms must be between 0 and 60000, received: -1" in capsys.readouterr().err


def test_train_squeezenet_end_to_end(prepared, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    assert main(["train", "squeezenet", "--data", str(prepared), "--epochs", "2",
                 "--batch-size", "8", "--image-size", "24", "--runs-dir", str(runs),
                 "--quiet"]) == 0
    (run,) = runs.iterdir()
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert [int(h["epoch"]) for h in history] == [0, 1]
    assert {"accuracy", "val_accuracy", "loss"} <= set(history[0])
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["model"] == "squeezenet"
    assert saved["derived"]["classes"] == ["circle", "square", "triangle"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-001.keras",
                                                                        "epoch-002.keras"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_images_per_second"] > 0 and summary["epochs"] == 2
    text = (run / "summary.txt").read_text()  # read by people: no private names or reprs
    assert "strategy: the default strategy (1 replica(s) on CPU)" in text
    assert re.search(r"^images: train \d+, validation \d+$", text, re.M) and "recipe: -" in text
    assert not any(bad in text for bad in ("_Default", "{", "None"))
    assert (run / "model.keras").stat().st_size > 0
    assert (run / "report.html").exists() and (run / "metrics.json").exists()
    out = capsys.readouterr().out
    assert f"run folder: {run}" in out
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert main(["evaluate", str(run)]) == 0
    assert "evaluating" in capsys.readouterr().err  # a progress bar, on stderr
    monkeypatch.delenv("FORCE_COLOR")
    assert "training squeezenet at 24 px from 24 px images: 2 epoch(s), adam at 0.001" in out
    assert "enlarged" not in out
    # trained larger than stored: said at the start
    assert main(["train", "squeezenet", "--data", str(prepared), "--epochs", "1", "--batch-size",
                 "8", "--image-size", "32", "--runs-dir", str(runs), "--name", "big",
                 "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "the prepared images are 24 px and are enlarged to 32 px" in out
    # One definition of speed: the bar's last img/s is the epoch's images_per_second.
    (big,) = runs.glob("*-big")
    with open(big / "history.csv") as f:
        (epoch,) = csv.DictReader(f)
    shown = [s.replace(",", "") for s in re.findall(r"([\d,.]+) img/s", out)]
    assert shown and float(shown[-1]) == pytest.approx(float(epoch["images_per_second"]),
                                                       rel=1e-3, abs=0.1)
    assert float(epoch["elapsed_seconds"]) > 0 and "wall_seconds" not in epoch
    text = (big / "summary.txt").read_text()
    assert "train_images_per_second: training steps only" in text


def test_train_rejects_bad_values(prepared, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "squeezenet", "--data", str(prepared), "--precision", "fp8"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
    assert main(["train", "nosuchnet", "--data", str(prepared)]) == 2
    assert "unknown model or recipe 'nosuchnet'" in capsys.readouterr().err
    assert main(["train", "squeezenet", "--data", str(prepared), "--fine-tune-epochs", "2"]) == 2
    assert "needs a pretrained backbone" in capsys.readouterr().err
    assert main(["train", "squeezenet", "--data", str(prepared), "--set", "epochs=ten"]) == 2
    assert "config field epochs must be int, received: 'ten'" in capsys.readouterr().err


def test_models_lists_the_zoo_and_shows_one_summary(capsys):
    from convlab.models import list_models

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for info in list_models():
        assert info.name in out
    assert "119,957" in out  # squeezenet, 5 classes
    assert main(["models", "squeezenet", "--image-size", "32"]) == 0
    assert "fire" in capsys.readouterr().out


def test_recipes_are_listed(capsys):
    from convlab.config import RECIPES

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES)


def test_listing_recipes_and_help_do_not_load_tensorflow():
    code = ("import sys; from convlab.cli import main; main(['recipes']); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "efficientnet-lite0-transfer" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "False False"


def test_a_mistyped_model_is_refused_before_tensorflow_loads(tmp_path):
    code = ("import sys; from convlab.cli import main; "
            "codes = [main(['train', 'convent', '--data', 'nowhere']), "
            "main(['lr-find', 'squeezenet-plsu', '--data', 'nowhere']), main(['tune', 'xyz'])]; "
            "print(codes, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.stdout.strip() == "[2, 2, 2] False False", done.stderr
    assert done.stderr.splitlines() == [
        "convlab: error: unknown model or recipe 'convent'; did you mean 'convnet' or "
        "'convnet-plus'? see `convlab models` and `convlab recipes`",
        "convlab: error: unknown model or recipe 'squeezenet-plsu'; did you mean "
        "'squeezenet-plus' or 'squeezenet' or 'codelab-squeezenet'? see `convlab models` and "
        "`convlab recipes`",
        "convlab: error: unknown model or recipe 'xyz'; see `convlab models` and `convlab "
        "recipes`"]


def test_one_recipe_in_full_and_bare_convlab_prints_help(capsys):
    assert main(["recipes", "efficientnet-lite0-transfer"]) == 0
    out = capsys.readouterr().out
    assert "image_size = 300" in out and "schedule.learning_rate = 0.002" in out
    assert "measured: 93.9% final validation accuracy" in out
    assert main(["recipes", "nosuch"]) == 2
    assert "unknown recipe 'nosuch'" in capsys.readouterr().err
    bare = run_cli()
    assert bare.returncode == 0 and "usage: convlab" in bare.stdout and "recipes" in bare.stdout


def test_prepare_counts_and_says_which_photos_it_enlarged(photos, tmp_path, capsys):
    assert main(["data", "prepare", str(photos), str(tmp_path / "big"), "--size", "48",
                 "--quiet"]) == 0  # the photos are 40 px
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / "big" / "manifest.json").read_text())
    total = manifest["counts"]["total"]
    assert manifest["counts"]["enlarged"] == total == 72
    assert f"{total} of {total} photos are smaller than 48 px" in " ".join(out.split())


def test_help_shows_every_default():
    import argparse
    import subprocess
    import sys

    from convlab.cli.main import build_parser

    def parsers(parser, name="convlab"):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child_name, child in action.choices.items():
                    yield from parsers(child, f"{name} {child_name}")

    for name, parser in parsers(build_parser()):
        whole = parser.format_help()
        text = whole.split("\noptions:", 1)[-1]
        # every argument says what it is, and no help says its default twice
        assert not re.search(r"\((\S+)\) \(default: \1\)", " ".join(whole.split())), name
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{name} {action.dest}: no help"
            has_value = action.default not in (None, False, argparse.SUPPRESS)
            if action.option_strings and has_value and action.dest != "help":
                flag = action.option_strings[-1]
                block = text.split(flag, 1)[1].split("\n  -", 1)[0]
                assert "default" in block, f"{name} {flag}: no default in --help"
    done = subprocess.run([sys.executable, "-m", "convlab", "train", "--help"],
                          capture_output=True, text=True, timeout=60)
    for flag, value in (("--epochs", "5"), ("--batch-size", "32"), ("--lr", "0.001"),
                        ("--optimizer", "adam"), ("--precision", "auto"), ("--seed", "42")):
        block = done.stdout.split("\noptions:")[1].split(flag, 1)[1].split("\n  -", 1)[0]
        assert f"default: {value}" in " ".join(block.split()), (flag, block)
    assert done.stderr == ""


def test_ctrl_c_stops_training_within_seconds_and_names_the_resume_command(prepared,
                                                                           tmp_path):
    import signal
    import time

    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "convlab", "train", "squeezenet", "--data", str(prepared),
         "--epochs", "200", "--batch-size", "8", "--image-size", "16", "--runs-dir", str(runs),
         "--quiet", "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell without job control starts background jobs with SIGINT ignored, and a
        # Python started so never raises KeyboardInterrupt: give the child Ctrl-C back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 180
    while time.time() < deadline and not list(runs.glob("*/state.json")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, err = proc.communicate(timeout=60)
    stopped = time.monotonic() - sent
    (run,) = runs.iterdir()
    assert proc.returncode == 130 and stopped < 10, (stopped, err)
    assert f"continue with: convlab train --resume {run}" in out
    # piped, as into a log file: one plain line per epoch, no terminal codes
    assert re.search(r"^epoch 1/200: accuracy \d\.?\d*, loss \d\.?\d*(e-?\d+)?, "
                     r"val_accuracy [\d.]+, val_loss [\d.e-]+; [\d,.]+ img/s, [\d.]+ s$", out,
                     re.M), out
    assert not re.search("[\x1b\x08\r]", out + err), (out + err)[:2000]
    assert "Traceback" not in err and "convlab train --resume RUN" in err
