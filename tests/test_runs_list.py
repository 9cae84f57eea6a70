"""`convlab runs` and `convlab compare`: every run at a glance, and runs side by side.

One runs folder for the module: a finished run and a live `convlab train` (listed while it
runs, then stopped with Ctrl-C), trained for real; copies of the finished run made into an
older version's run, a damaged one and one whose name holds markup; a folder that is no run.
"""

import base64
import csv
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from convlab.cli.main import main
from convlab.config import TrainConfig
from convlab.errors import ConvlabError
from convlab.evaluation.compare import compare_runs, write_html
from convlab.runlist import RunRow, list_runs, sort_rows
from convlab.usertext import from_csv_cell

TINY = {"model": "squeezenet", "image_size": 16, "batch_size": 8, "precision": "float32",
        "model_options": {"layout": [[8, 16], "pool", [8, 16]]}, "report": False}
HOSTILE = "=cmd[bold]<b>x\x1b[31m"  # a formula, rich markup, HTML and an escape sequence


def _listing(root) -> dict:
    """`convlab runs ROOT --format json` in a fresh process, which must not load TensorFlow."""
    script = ("import json, sys; from convlab.cli.main import main; rc = main(['runs', "
              f"{str(root)!r}, '--format', 'json']); sys.stdout.flush(); "
              "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
              "sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return {r["name"]: r for r in json.loads(done.stdout)["runs"]}


def _epochs(root, name: str) -> int:
    from convlab.runs import read_state

    state = next((read_state(p) for p in root.glob(f"*-{name}")), None)
    return state["epoch"] if state else 0


@pytest.fixture(scope="module")
def runs(tiny_prepared, tmp_path_factory):
    from convlab.training.trainer import train

    data = tiny_prepared()
    root = tmp_path_factory.mktemp("runs")
    live = subprocess.Popen(
        [sys.executable, "-m", "convlab", "train", "squeezenet", "--data", str(data),
         "--image-size", "16", "--batch-size", "8", "--precision", "float32",
         "--epochs", "500", "--name", "live", "--runs-dir", str(root), "--no-report",
         "--quiet", "--set", 'model_options.layout=[[8, 16], "pool", [8, 16]]'],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # a shell without job control starts background jobs with SIGINT ignored: give the
        # child Ctrl-C back (as test_cli does)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        finished = train(TrainConfig(**TINY), data=str(data), epochs=2, runs_dir=str(root),
                         name="done", progress=False)
        from convlab.evaluation.metrics import evaluate

        evaluate(finished, split="train")  # an evaluation on other data: evaluations/LABEL
        deadline = time.time() + 120
        while _epochs(root, "live") < 3:  # more than the finished run's 2
            assert live.poll() is None, live.stderr.read()
            assert time.time() < deadline, "the live training did not do 3 epochs in 120 s"
            time.sleep(0.1)
        while_running = _listing(root)
    finally:
        live.send_signal(signal.SIGINT)  # Ctrl-C: the run stays, to be resumed
        try:
            live.wait(timeout=60)
        finally:
            live.kill()  # (a no-op once it has ended)
    (old := root / "20200101-000000-old").mkdir()
    for name in ("history.csv", "summary.json"):
        shutil.copy(finished / name, old / name)
    # An older version's run: fewer settings, nothing derived, a shorter summary.
    (old / "config.json").write_text(json.dumps({"config": {"model": "convnet", "epochs": 2}}))
    (old / "summary.json").write_text(json.dumps({"epochs": 2}))
    damaged = shutil.copytree(finished, root / "20990101-000000-damaged")
    (damaged / "config.json").write_text('{"config": {"model": "squ')
    shutil.copytree(finished, root / HOSTILE)
    (root / "notes").mkdir()
    (root / "README.txt").write_text("not a folder")
    return SimpleNamespace(root=root, data=data, finished=finished, live=next(root.glob("*-live")),
                           while_running=while_running)


def test_each_run_is_one_row_with_its_state(runs):
    listing = list_runs(runs.root)
    rows = {r.name: r for r in listing.rows}
    assert listing.not_runs == ["notes"]  # README.txt is no folder: not counted
    assert set(rows) == {runs.finished.name, runs.live.name, "20200101-000000-old",
                         "20990101-000000-damaged", HOSTILE}

    done = rows[runs.finished.name]
    assert (done.state, done.model, done.image_size, done.epochs_done, done.epochs_total) == (
        "finished", "squeezenet", 16, 2, 2)
    assert done.val_accuracy_from == "training" and 0 <= done.val_accuracy <= 1
    assert done.data == str(runs.data)  # as given (made absolute by train)
    assert done.seconds > 0 and done.started is not None
    (label,) = done.evaluations  # the train split of its own data
    assert label.endswith("-train") and 0 <= done.evaluations[label] <= 1

    stopped = rows[runs.live.name]
    assert stopped.state == "interrupted" and stopped.epochs_total == 500
    assert 3 <= stopped.epochs_done < 500 and stopped.seconds is None

    old = rows["20200101-000000-old"]
    assert (old.state, old.model, old.epochs_done, old.epochs_total) == ("finished", "convnet",
                                                                        2, 2)
    assert old.data is None and old.image_size is None and old.seconds is None
    assert old.val_accuracy == done.val_accuracy  # from its history.csv

    broken = rows["20990101-000000-damaged"]
    assert broken.state == "damaged" and broken.model is None
    assert "config.json" in broken.problem and "damaged" in broken.problem


def test_a_live_training_lists_as_running_without_loading_tensorflow(runs):
    # Listed (in a process that never imported TensorFlow) while `convlab train` ran.
    assert runs.while_running[runs.live.name]["state"] == "running"
    assert runs.while_running[runs.live.name]["epochs_done"] >= 3
    assert runs.while_running[runs.finished.name]["state"] == "finished"


def test_orders(runs):
    rows = list_runs(runs.root).rows
    names = lambda by: [r.name for r in sort_rows(rows, by)]  # noqa: E731
    by_time = names("time")  # newest first: the name's time, else config.json's
    assert by_time[0] == "20990101-000000-damaged" and by_time[-1] == "20200101-000000-old"
    by_accuracy = sort_rows(rows, "accuracy")
    known = [r.val_accuracy for r in by_accuracy if r.val_accuracy is not None]
    assert known == sorted(known, reverse=True) and by_accuracy[-1].val_accuracy is None
    assert names("name") == sorted(r.name for r in rows)
    assert names("epochs")[0] == runs.live.name  # the most epochs done (2 for the others)
    assert names("state")[-1] == "20990101-000000-damaged"
    with pytest.raises(ConvlabError, match="--sort must be one of .* received: 'size'"):
        sort_rows(rows, "size")


def test_table_shows_user_text_as_typed(runs, capsys):
    assert main(["runs", str(runs.root)]) == 0
    out = capsys.readouterr().out
    assert "=cmd[bold]<b>x\\x1b[31m" in out and "\x1b" not in out  # no markup, no escapes
    for said in ("finished", "interrupted", "damaged", "500", "~", "squeezenet", "convnet",
                 "1 folder(s) here are not runs (no config.json): notes"):
        assert said in out
    old = next(line for line in out.splitlines() if line.startswith("20200101-000000-old"))
    assert old.split()[3:5] == ["-", "-"]  # data and px: not recorded by that version
    assert "is damaged" in out  # why, under the table


def test_csv_and_json_give_full_values(runs, capsys):
    assert main(["runs", str(runs.root), "--format", "csv", "--sort", "name"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    header, rows = table[0], {from_csv_cell(r[0]): r for r in table[1:]}
    assert header[:3] == ["name", "path", "state"] and len(header) == len(
        RunRow.__dataclass_fields__)
    assert rows[HOSTILE][0] == "'" + HOSTILE  # shown, not run, by a spreadsheet
    assert rows["20200101-000000-old"][header.index("data")] == ""
    assert main(["runs", str(runs.root), "--format", "json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    done = next(r for r in listing["runs"] if r["name"] == runs.finished.name)
    assert done["path"] == str(runs.finished) and done["prepared_data"]
    assert listing["not_runs"] == ["notes"]


def test_compare_in_the_terminal_and_as_html(runs, capsys, tmp_path):
    out = tmp_path / "compare.html"
    assert main(["compare", runs.finished.name, str(runs.live), HOSTILE, "--runs-dir",
                 str(runs.root), "--html", str(out)]) == 0
    said = capsys.readouterr().out
    assert "epochs" in said and "500" in said and "name" in said  # the settings that differ
    assert "\x1b" not in said and "[bold]" in said
    assert said.count("▁") + said.count("█") >= 3  # validation accuracy per epoch

    comparison = compare_runs([runs.finished, runs.live, runs.root / HOSTILE])
    assert dict(comparison.settings)["epochs"] == [2, 500, 2]
    assert "model" not in dict(comparison.settings) and comparison.same > 20
    page = out.read_text()
    assert "<td>500</td>" in page and "<th>epochs</th>" in page
    assert "&lt;b&gt;x" in page and "<b>x" not in page
    assert "http://" not in page and "https://" not in page  # nothing fetched
    png = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(png).startswith(b"\x89PNG")
    assert write_html(comparison, tmp_path / "again.html").read_text().count("<img") == 1


def test_bad_input_is_one_line_naming_it(runs, tmp_path, capsys):
    with pytest.raises(ConvlabError, match="at least 2 runs, received 1"):
        compare_runs([runs.finished])
    with pytest.raises(ConvlabError, match="'nowhere' is not a run folder"):
        compare_runs([runs.finished, "nowhere"], runs_dir=runs.root)
    with pytest.raises(ConvlabError, match="damaged"):
        compare_runs([runs.finished, runs.root / "20990101-000000-damaged"])
    assert main(["runs", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convlab: error: ") and "missing' is not a folder of runs" in err
    assert err.count("\n") == 1
    assert main(["compare", str(runs.finished), str(runs.root / "notes")]) == 2
    assert "notes' is not a run folder" in capsys.readouterr().err
