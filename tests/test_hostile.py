"""A hostile user's inputs (issue 13): each is refused with one line, or handled, never a
traceback. User errors run as real `convlab` processes; odd files are real files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from convlab.cli import main
from convlab.data import prepare, read_manifest
from convlab.data.synthetic import make_folder
from convlab.errors import ConvlabError

TINY = ["--image-size", "16", "--batch-size", "8", "--epochs", "1", "--precision", "float32",
        "--no-report", "--quiet"]
# A layout small enough for 16 px images.
LAYOUT = ["--set", 'model_options.layout=[[8, 16], "pool", [8, 16]]']


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Photos whose class names are rich markup, matplotlib mathtext and a spreadsheet
    formula, prepared, plus one tiny run trained on them."""
    root = tmp_path_factory.mktemp("hostile")
    photos = make_folder(root / "photos", num_classes=3, per_class=16, size=24)
    for old, new in zip(sorted(p.name for p in photos.iterdir()), ["[bold]x", "$\\frac$",
                                                                    "=1+2"], strict=True):
        (photos / old).rename(photos / new)
    prepare(str(photos), root / "data", size=16, shards=2, progress=False)
    runs = root / "runs"
    assert main(["train", "squeezenet", "--data", str(root / "data"), "--runs-dir", str(runs),
                 *TINY, *LAYOUT]) == 0
    (run,) = runs.iterdir()
    return {"root": root, "photos": photos, "data": root / "data", "run": run}


def convlab(*args, env=None):
    return subprocess.run([sys.executable, "-m", "convlab", *map(str, args)], text=True,
                          capture_output=True, timeout=300, env={**os.environ, **(env or {})})


def user_errors(h) -> list[tuple[list, dict | None, str]]:
    """(arguments, extra environment, what the one line must say) of each user error."""
    data, run, root = h["data"], h["run"], h["root"]
    train = ["train", "squeezenet", "--data", data, *TINY, *LAYOUT,
             "--runs-dir", root / "unused"]
    (root / "a-file").write_text("x")
    cluster = {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}
    deep = root / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    foreign = root / "their-export"
    foreign.mkdir(exist_ok=True)
    (foreign / "labels.txt").write_text("theirs\n")
    photos = h["photos"]
    return [
        # one check of every image size: training, test and prepared
        ([*train, "--image-size", "0"], None,
         "--image-size must be a whole number of pixels between 8 and 4096 (or omitted for "
         "the model's own), received: 0"),
        (["evaluate", run, "--image-size", "5"], None,
         "--image-size must be a whole number of pixels between 8 and 4096 (or omitted for "
         "the run's own), received: 5"),
        (["data", "prepare", photos, root / "size-5", "--size", "5"], None,
         "--size must be a whole number of pixels between 8 and 4096, received: 5"),
        ([*train, "--image-size", "-5"], None, "received: -5"),
        ([*train, "--image-size", "10000"], None, "received: 10000"),
        (["train", "convnet", "--data", data, "--weights", "imagenet", *TINY], None,
         "'convnet' has no option 'weights'"),
        ([*train[:-2], "--runs-dir", root / "a-file"], None, "cannot use --runs-dir"),
        ([*train, "--name", "../../../x"], None, "--name must be one plain folder name"),
        ([*train, "--name", "a/b"], None, "received: 'a/b'"),
        ([*train, "--set", "epochs=ten"], None, "epochs must be int, received: 'ten'"),
        (["data", "inspect", data, "--count", "0"], None, "--count must be at least 1"),
        (["data", "inspect", data, "--count", "-5"], None, "received: -5"),
        (["data", "bench", data, "--batch-size", "0"], None, "--batch-size must be at least 1"),
        (["data", "bench", data, "--rounds", "0"], None, "--rounds must be at least 1"),
        (train, {"TF_CONFIG": "[1,2,3]"}, 'TF_CONFIG needs a "cluster"'),
        (train, {"TF_CONFIG": '{"cluster": [1], "task": {}}'}, "received: '{\"cluster\": [1]"),
        (train, {"TF_CONFIG": json.dumps(cluster)}, '"index": 3'),
        (train, {"TF_CONFIG": "{not json"}, "TF_CONFIG is not valid JSON"),
        (["launch", "--workers", "100", "--", *train], None, "--workers 100 on a machine"),
        (["predict", run, root / "a-file"], None, "none of the 1 input file(s)"),
        # issue "Reliability, round 2"
        (["data", "prepare", photos, root / "w0", "--workers", "0"], None,
         "--workers must be at least 1, received: 0"),
        (["data", "prepare", photos, root / "w3", "--workers", "-3"], None, "received: -3"),
        ([*train, "--name", "nl\nname"], None, "control characters), received: 'nl\\nname'"),
        ([*train, "--set", "schedule=5"], None, "config field schedule must be an object"),
        ([*train, "--set", "augment=5"], None, "config field augment must be an object"),
        ([*train, "--set", "model_options=[1,2]"], None, "received: [1, 2]"),
        ([*train, "--set", "augment.saturation=5"], None, "must be [float, float] or null"),
        (["train", "--config", deep], None, "is nested too deep"),
        ([*train, "--lr", "inf"], None, "--lr (schedule.learning_rate) must be a positive "
                                        "number, received: inf"),
        ([*train, "--lr", "nan"], None, "received: nan"),
        ([*train, "--set", "weight_decay=NaN"], None, "weight_decay must be a number >= 0"),
        (["export", run, "--format", "keras", "--out", "/proc/convlab-export"], None,
         "cannot make the export folder '/proc/convlab-export'"),
        (["export", run, "--format", "keras", "--out", root / "a-file" / "x"], None,
         "cannot make the export folder"),
        (["export", run, "--format", "keras", "--out", foreign], None,
         "already holds labels.txt and is not a convlab export folder"),
        (["data", "prepare", photos, photos / "prepared"], None,
         "is inside the photos"),
        ([*train, "--set", "seed=-1"], None, "--seed must be between 0 and 4294967295"),
        (["data", "bench", data, "--latency-ms", "nan"], None, "received: nan"),
        (["review", run, "--top", "-1"], None, "--top must be at least 0, received: -1"),
    ]


# Cases that also run as real `convlab` processes (the entry point, the environment read at
# start-up); every case runs in-process through `main`, the same code minus the start-up.
AS_PROCESSES = (0, 14, 18)


def test_every_user_error_is_one_line_naming_the_value_and_no_traceback(hostile, capsys,
                                                                        monkeypatch):
    cases = user_errors(hostile)
    with ThreadPoolExecutor(2) as pool:  # two processes at a time: one per core
        processes = list(pool.map(lambda i: convlab(*cases[i][0], env=cases[i][1]),
                                  AS_PROCESSES))
    for i, result in zip(AS_PROCESSES, processes, strict=True):
        args, _, message = cases[i]
        errors = [line for line in result.stderr.splitlines() if line.startswith("convlab:")]
        assert result.returncode != 0, (args, result.stdout[-500:])
        assert "Traceback" not in result.stderr, (args, result.stderr[-2000:])
        assert len(errors) == 1 and message in errors[0], (args, result.stderr[-1000:])
    for args, env, message in cases:
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            try:  # an exception escaping main() fails the test: that would be a traceback
                code = main([str(a) for a in args])
            except SystemExit as stop:  # argparse's own errors
                code = stop.code
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("convlab:")]
        assert code != 0, args
        assert len(errors) == 1 and message in errors[0], (args, err[-1000:])
    assert not (hostile["root"] / "unused").exists() or not any(
        (hostile["root"] / "unused").iterdir())  # no half-made run folder anywhere
    assert len(cases) == 38
    assert not (hostile["photos"] / "prepared").exists()
    assert (hostile["root"] / "their-export" / "labels.txt").read_text() == "theirs\n"
    assert not (hostile["root"] / "w0").exists() and not (hostile["root"] / "w3").exists()


def test_markup_and_mathtext_in_class_and_file_names_are_shown_literally(hostile, capsys,
                                                                         tmp_path, monkeypatch):
    from PIL import Image

    # prepare and inspect print the class names as they are
    assert main(["data", "prepare", str(hostile["photos"]), str(tmp_path / "p"), "--size",
                 "16", "--quiet"]) == 0
    assert "[bold]x" in capsys.readouterr().out
    # predict a file whose path closes a markup tag it never opened: x[/bold]y.jpg
    odd = tmp_path / "x[" / "bold]y.jpg"
    odd.parent.mkdir()
    Image.new("RGB", (24, 24), (200, 30, 30)).save(odd)
    monkeypatch.chdir(tmp_path)  # a short relative path: the table prints it on one line
    assert main(["predict", str(hostile["run"]), "x[/bold]y.jpg"]) == 0
    assert "x[/bold]y.jpg" in capsys.readouterr().out
    # the report's plots draw "$\frac$" as text (mathtext would fail on it)
    assert main(["report", str(hostile["run"])]) == 0
    assert (hostile["run"] / "plots" / "confusion_matrix.png").stat().st_size > 0


def test_fifos_are_skipped_with_a_reason_and_linked_folders_followed(tmp_path):
    photos = make_folder(tmp_path / "photos", num_classes=2, per_class=6, size=24)
    label = sorted(p.name for p in photos.iterdir())[0]
    os.mkfifo(photos / label / "pipe.jpg")  # reading it would block forever
    extra = make_folder(tmp_path / "elsewhere", num_classes=2, per_class=3, size=24, seed=7)
    (photos / label / "linked").symlink_to(extra / label, target_is_directory=True)
    (photos / label / "loop").symlink_to(photos / label, target_is_directory=True)
    manifest = prepare(str(photos), tmp_path / "out", size=16, progress=False)
    assert manifest["skipped_by_reason"].get("not a regular file") == 1
    kept = {Path(i["path"]).parent.name for i in read_manifest(tmp_path / "out")["inputs"]}
    assert "linked" in kept  # the linked folder's 3 photos are in, each once
    assert manifest["counts"]["per_class"][label]["train"] + manifest["counts"]["per_class"][
        label].get("validation", 0) == 6 + 3

    from convlab.inference import collect

    paths, skipped = collect([photos / label])
    assert [s["reason"] for s in skipped] == ["not a regular file"]
    assert len(paths) == 9


def test_run_folders_started_in_the_same_second_never_collide(tmp_path):
    from convlab.runs import new_run_folder

    folders = [new_run_folder(tmp_path, "same") for _ in range(5)]
    assert len(set(folders)) == 5 and all(f.is_dir() for f in folders)


def test_a_prepare_into_a_folder_another_prepare_is_writing_stops_at_once(tmp_path):
    from convlab.data.ingest import _exclusive, verify_shards

    src = make_folder(tmp_path / "src", num_classes=2, per_class=20, size=24)
    out = tmp_path / "out"
    with _exclusive(out):  # what a running `prepare` holds (a real flock on OUT)
        second = convlab("data", "prepare", src, out, "--size", "16", "--quiet")
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert "another `convlab data prepare` is writing" in second.stderr
        assert not (out / "manifest.json").exists()
    # once it is done, the same command prepares the folder, and every shard verifies
    assert convlab("data", "prepare", src, out, "--size", "16", "--quiet").returncode == 0
    assert verify_shards(out, read_manifest(out), checksums=True) == []


def test_damaged_shards_and_manifests_are_named_and_overwrite_repairs_them(tmp_path):
    from convlab.data.ingest import verify_shards

    src = make_folder(tmp_path / "src", num_classes=2, per_class=20, size=24)
    out = tmp_path / "out"
    manifest = prepare(str(src), out, size=16, shards=2, progress=False)
    shard = out / manifest["shards"][0]["file"]
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    # training stops before it starts, naming the shard and the fix
    result = convlab("train", "squeezenet", "--data", out, *TINY, "--runs-dir", tmp_path / "r")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"shard {shard.name} has {size // 2:,} bytes" in result.stderr
    assert "--overwrite" in result.stderr and not (tmp_path / "r").exists()
    # a re-run of prepare does not call it "unchanged"
    with pytest.raises(ConvlabError, match=f"{shard.name} has .* pass --overwrite"):
        prepare(str(src), out, size=16, shards=2, progress=False)
    # same size, other bytes: only the checksum sees it
    repaired = prepare(str(src), out, size=16, shards=2, overwrite=True, progress=False)
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert "does not match its sha256" in verify_shards(out, repaired, checksums=True)[0]
    prepare(str(src), out, size=16, shards=2, overwrite=True, progress=False)

    (out / "manifest.json").write_text('{"shards": [')  # cut short
    for args in (["train", "squeezenet", "--data", out, *TINY], ["data", "prepare", src, out,
                                                                "--size", "16", "--shards", "2"]):
        result = convlab(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "manifest.json' is damaged (not valid JSON" in result.stderr
    fixed = convlab("data", "prepare", src, out, "--size", "16", "--shards", "2", "--overwrite",
                    "--quiet")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert verify_shards(out, read_manifest(out), checksums=True) == []


@pytest.fixture(scope="module")
def three_epochs(hostile):
    runs = hostile["root"] / "three"
    assert main(["train", "squeezenet", "--data", str(hostile["data"]), "--runs-dir",
                 str(runs), *TINY, *LAYOUT, "--epochs", "3"]) == 0
    (run,) = runs.iterdir()
    return run


@pytest.fixture
def interrupted(three_epochs, tmp_path):
    """A 4-epoch run as it is left when killed after its 3rd epoch: a copy of a 3-epoch run,
    its config then set to 4 and the files only a finished run has removed."""
    run = Path(shutil.copytree(three_epochs, tmp_path / three_epochs.name))
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["epochs"] = 4
    (run / "config.json").write_text(json.dumps(saved))
    for name in ("model.keras", "summary.json", "summary.txt", "history.json"):
        (run / name).unlink()
    return run


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(interrupted):
    run = interrupted
    (run / "state.json").write_text('{"epoch": 3, "be')  # cut short
    newest = run / "checkpoints" / "epoch-003.keras"
    os.truncate(newest, newest.stat().st_size // 3)
    result = convlab("train", "--resume", run, "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "epoch-003.keras cannot be loaded" in result.stdout
    assert "resuming after epoch 2: epoch(s) 3-3 are trained again" in result.stdout
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]  # epoch 3 once, from the retrain


def test_damaged_config_and_model_files_are_one_line_errors(interrupted):
    run = interrupted
    best = run / "best.keras"
    os.truncate(best, 100)
    result = convlab("evaluate", run)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "best.keras': the file is damaged" in result.stderr and "--model final" in (
        result.stderr)
    (run / "config.json").write_text("{")
    for args in (["train", "--resume", run], ["evaluate", run], ["predict", run, run]):
        result = convlab(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "config.json' is damaged" in result.stderr


@contextlib.contextmanager
def _tmpfs(disk: Path, size: str):
    """A real filesystem of `size` mounted on `disk` (tmpfs; needs root: the test skips
    elsewhere), unmounted afterwards."""
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()[:80]})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 2 MiB filesystem."""
    with _tmpfs(tmp_path / "disk", "2m") as disk:
        yield disk


def _fill(disk: Path, leave: int) -> Path:
    """Fill `disk` up to `leave` free bytes with one file; returns it (delete it to free)."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_stops_prepare_and_train_cleanly_and_both_resume(hostile, tiny_disk):
    # prepare: the shards do not fit
    filler = _fill(tiny_disk, 12_000)
    out = tiny_disk / "data"
    result = convlab("data", "prepare", hostile["photos"], out, "--size", "16", "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "cannot write" in result.stderr and "run the same command again" in result.stderr
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.tfrec.tmp"))
    filler.unlink()
    assert convlab("data", "prepare", hostile["photos"], out, "--size", "16",
                   "--quiet").returncode == 0
    # train: the run folder fills the disk after its first epochs
    runs = tiny_disk / "runs"
    filler = _fill(tiny_disk, 400_000)
    result = convlab("train", "squeezenet", "--data", out, *TINY, *LAYOUT, "--epochs", "20",
                     "--runs-dir", runs)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "No space left on device" in result.stderr and "--resume" in result.stderr
    (run,) = runs.iterdir()
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]  # no half-written files
    filler.unlink()
    result = convlab("train", "--resume", run, "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(json.loads((run / "history.json").read_text())) == 20


def test_resuming_a_run_that_is_being_trained_is_refused(interrupted):
    from convlab.files import locked

    with locked(interrupted, "held by the test"):  # what the training process holds
        result = convlab("train", "--resume", interrupted, "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is being trained by another process right now" in result.stderr


# ---- class names that would break outputs (issue "Reliability, round 2", items 2-4) ----


def _two_classes(root, names):
    import random

    from convlab.data.synthetic import draw

    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(4):
            draw("circle", 16, random.Random(100 * k + i)).save(root / name / f"{i}.png")
    return root


def test_a_class_name_with_a_newline_is_refused_with_one_line(tmp_path):
    src = _two_classes(tmp_path / "src", ["daisy", "tu\nlip"])
    result = convlab("data", "prepare", src, tmp_path / "out", "--size", "16", "--quiet")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("convlab")]
    assert "'tu\\nlip'" in line and "control characters" in line
    assert not (tmp_path / "out").exists()


def test_one_name_written_two_ways_is_one_clash_naming_both_folders(tmp_path):
    src = _two_classes(tmp_path / "src", ["caf\u00e9", "cafe\u0301", "tea"])
    with pytest.raises(ConvlabError, match="same name written two ways") as err:
        prepare(str(src), tmp_path / "out", size=16, progress=False)
    assert "caf\u00e9" in str(err.value) and "cafe\u0301" in str(err.value)


def test_a_hidden_class_folder_is_reported_not_dropped_unsaid(tmp_path):
    src = _two_classes(tmp_path / "src", ["rose", "tulip", "..."])
    manifest = prepare(str(src), tmp_path / "out", size=16, progress=False)
    assert manifest["classes"] == ["rose", "tulip"]
    assert manifest["skipped_by_reason"] == {"hidden folder": 1}


# ---- issue "Reliability, round 2": files lost or silently wrong, output that can be abused ----


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_overwrite_deletes_only_what_convlab_wrote(tmp_path, capsys):
    src = make_folder(tmp_path / "src", num_classes=2, per_class=6, size=24)
    theirs = tmp_path / "theirs"  # another tool's folder: a manifest, shards, a README
    theirs.mkdir()
    (theirs / "README.txt").write_text("mine")
    (theirs / "manifest.json").write_text('{"tool": "other", "shards": ["a.tfrec"]}')
    (theirs / "a.tfrec").write_bytes(b"their records")
    (theirs / "train00-5.tfrec").write_bytes(b"named like ours")
    before = _snapshot(theirs)
    for flags in ([], ["--overwrite"]):
        assert main(["data", "prepare", str(src), str(theirs), "--size", "16", "--quiet",
                     *flags]) == 2
        err = capsys.readouterr().err
        assert "is not a convlab dataset" in err and "--overwrite" not in err, err
        assert _snapshot(theirs) == before and not (theirs / ".convlab.lock").exists()
    (theirs / "manifest.json").write_text('{"shards": [')  # unreadable, beside a README
    assert main(["data", "prepare", str(src), str(theirs), "--size", "16", "--quiet",
                 "--overwrite"]) == 2
    assert "unreadable and it holds 'README.txt'" in capsys.readouterr().err
    assert (theirs / "a.tfrec").exists() and (theirs / "README.txt").exists()
    # training on it names the foreign manifest and advises nothing destructive
    (theirs / "manifest.json").write_text('{"tool": "other"}')
    assert main(["train", "squeezenet", "--data", str(theirs), *TINY]) == 2
    err = capsys.readouterr().err
    assert "was not written by convlab" in err and "--overwrite" not in err

    # convlab's own dataset with the user's notes beside it: --overwrite replaces the
    # dataset's files, and only those
    ours = tmp_path / "ours"
    prepare(str(src), ours, size=16, shards=2, progress=False)
    (ours / "notes.txt").write_text("keep me")
    replaced = prepare(str(src), ours, size=20, shards=3, overwrite=True, progress=False)
    assert sorted(p.name for p in ours.iterdir()) == sorted(
        ["manifest.json", "notes.txt"] + [s["file"] for s in replaced["shards"]])
    # a refused prepare into a new folder leaves no folder behind
    assert main(["data", "prepare", str(tmp_path / "nothing-here"), str(tmp_path / "new"),
                 "--quiet"]) == 2
    assert not (tmp_path / "new").exists()


def test_tune_overwrite_never_empties_a_folder_it_did_not_make(tmp_path, capsys):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    result = convlab("tune", "squeezenet", "--data", tmp_path, "--out", folder, "--overwrite",
                     "--trials", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds no search of convlab's" in result.stderr
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_a_run_without_a_validation_split_trains_and_says_what_is_not_measured(hostile, capsys,
                                                                              tmp_path):
    data = tmp_path / "no-val"
    prepare(str(hostile["photos"]), data, size=16, val_fraction=0, progress=False)
    flags = [a for a in TINY if a != "--no-report"]
    assert main(["train", "squeezenet", "--data", str(data), "--runs-dir", str(tmp_path / "r"),
                 *flags, *LAYOUT]) == 0
    out = capsys.readouterr().out
    assert "no validation split: nothing measures the model" in out
    assert "report: not written, as the data has no validation split" in out
    assert "best: epoch 1, accuracy" in out  # the summary, from the training accuracy
    # nearly everything in validation: every class still keeps a photo to train on
    most = prepare(str(hostile["photos"]), tmp_path / "v99", size=16, val_fraction=0.99,
                   progress=False)
    assert all(c["train"] >= 1 for c in most["counts"]["per_class"].values())


def test_a_loss_that_is_not_finite_stops_the_run_and_no_nan_model_is_saved(hostile, tmp_path):
    runs = tmp_path / "r"
    result = convlab("train", "squeezenet", "--data", hostile["data"], "--runs-dir", runs,
                     *TINY, *LAYOUT, "--epochs", "3", "--lr", "1e30")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("convlab:")]
    assert "the loss became nan in epoch 1" in line and "(1e+30) is likely too high" in line
    (run,) = runs.iterdir()
    assert not (run / "best.keras").exists() and not (run / "model.keras").exists()
    assert not list((run / "checkpoints").iterdir())


def test_inspect_writes_nothing_into_a_photo_folder(hostile, tmp_path, monkeypatch, capsys):
    before = _snapshot(hostile["photos"])
    monkeypatch.chdir(tmp_path)
    assert main(["data", "inspect", str(hostile["photos"]), "--count", "4"]) == 0
    assert _snapshot(hostile["photos"]) == before
    assert (tmp_path / "samples-photos.png").stat().st_size > 0
    assert "samples-photos.png" in capsys.readouterr().out


FORMULAS = ["=cmd|' -c calc'!A0.png", "@SUM(1).png", "+1+2.png", "-2.png", "'=x.png"]


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(hostile, tmp_path, capsys):
    import csv
    import io

    from PIL import Image

    from convlab.usertext import csv_cell, from_csv_cell

    for name in FORMULAS:
        Image.new("RGB", (24, 24), (20, 200, 30)).save(tmp_path / name)
    assert main(["predict", str(hostile["run"]), str(tmp_path), "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))[1:]
    cells = [c for row in rows for c in [row[0], *row[3::2]]]  # paths and class names
    assert len(rows) == len(FORMULAS)
    assert not [c for c in cells if c[:1] in "=+-@\t\r"], cells
    assert {from_csv_cell(r[0]) for r in rows} == {str(tmp_path / n) for n in FORMULAS}
    assert "'=1+2" in cells  # the class named =1+2
    # mistakes.csv: the class name quoted in the file, given back as it is where shown
    assert main(["evaluate", str(hostile["run"])]) == 0
    out = capsys.readouterr().out
    mistakes = (hostile["run"] / "mistakes.csv").read_text()
    assert "'=1+2" in mistakes and not any(
        c.startswith("=") for line in mistakes.splitlines() for c in line.split(","))
    assert "labelled =1+2" in out or "predicted =1+2" in out
    for text in ("=1", "'=1", "''=1", "'x", "plain", "-", "'", "\t1"):
        assert from_csv_cell(csv_cell(text)) == text


def test_control_characters_in_file_names_are_printed_visibly(hostile, tmp_path, capsys):
    from PIL import Image

    evil = tmp_path / "a\x1b[2Jb\x1b]0;title\x07.png"
    Image.new("RGB", (24, 24), (200, 30, 30)).save(evil)
    assert main(["predict", str(hostile["run"]), str(evil)]) == 0
    out = capsys.readouterr().out
    assert "\x1b[2J" not in out and "\x07" not in out and "\\x1b[2J" in out
    (tmp_path / "empty.png").write_bytes(b"")
    assert main(["predict", str(hostile["run"]), str(tmp_path / "empty.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no empty table before the error
    assert main(["data", "inspect", str(tmp_path / "no\x1b[31mwhere")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "no\\x1b[31mwhere" in err


def test_a_crafted_model_file_is_refused_as_unsafe_not_called_damaged(interrupted):
    import keras

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(
        interrupted / "best.keras")
    result = convlab("evaluate", interrupted)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds Python code (a Lambda layer)" in result.stderr
    assert "damaged" not in result.stderr


def test_a_link_to_another_class_folder_is_reported_not_followed(tmp_path):
    src = _two_classes(tmp_path / "src", ["daisy", "rose"])
    (src / "daisy" / "loop").symlink_to("..", target_is_directory=True)
    manifest = prepare(str(src), tmp_path / "out", size=16, progress=False)
    assert manifest["skipped_by_reason"] == {"link to another class's folder": 1}
    (skip,) = manifest["skipped"]
    assert skip["path"].endswith("daisy/loop") and skip["detail"] == ".."
    assert manifest["counts"]["total"] == 8 and not manifest["duplicates"]


def test_export_after_the_data_moved_names_where_it_was(hostile, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(hostile["run"], moved)
    config = json.loads((moved / "config.json").read_text())
    config["derived"]["prepared_data"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    result = convlab("export", moved, "--format", "keras")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"prepared data ('{tmp_path / 'gone'}') is not there any more" in result.stderr


def test_emoji_and_cjk_class_names_draw_without_boxes_or_warnings():
    import warnings

    from convlab.files import figure, literal

    assert literal("\N{ROSE} rose") == "[rose] rose" and literal("\u82b1") == "U+82B1"
    assert literal("caf\u00e9 $x$") == "caf\u00e9 \\$x\\$" and literal("a\nb") == "a\\nb"
    fig = figure(figsize=(2, 1))
    fig.add_subplot().set_title(literal("\N{ROSE}\ufe0f \u82b1 rose"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font" would raise
        fig.savefig(io.BytesIO(), format="png")


@pytest.fixture
def read_only(tmp_path):
    """A tmpfs mounted read-only once filled: yields a function that copies a folder in and
    remounts read-only."""
    with _tmpfs(tmp_path / "ro", "64m") as disk:
        def freeze(folder: Path) -> Path:
            copy = Path(shutil.copytree(folder, disk / folder.name))
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            return copy

        yield freeze


def test_a_read_only_run_gets_one_line_from_evaluate_report_and_export(hostile, read_only):
    run = read_only(hostile["run"])
    for args in (["evaluate", run, "--split", "train"], ["report", run],
                 ["export", run, "--format", "keras"]):
        result = convlab(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("convlab:")]
        assert "Read-only file system" in line and str(run) in line, line
