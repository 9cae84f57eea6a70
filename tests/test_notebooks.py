"""The tutorial notebooks (notebooks/NN_*.ipynb): each runs top to bottom with papermill on
tiny parameters, and the committed copies carry their outputs and no path of the machine that
ran them (scripts/notebooks.sh writes them)."""

from __future__ import annotations

import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
FLOWER_PHOTOS = ROOT.parent / "shared" / "data" / "flower_photos"
KERNEL = "convlab-tests"  # a kernelspec of this interpreter, written for the tests
# A few photos per class, 16-32 px, one epoch: seconds per notebook (beside a kernel's start-up).
TINY = {
    "01_data": {"PER_CLASS": 6, "IMAGE_SIZE": 32, "BENCH_ROUNDS": 1, "LATENCY_MS": 1},
    "02_transfer_learning": {"PER_CLASS": 6, "IMAGE_SIZE": 32, "EPOCHS": 1,
                             "FEATURE_VIEWS": 1, "BATCH_SIZE": 8},
    # one recipe: the other three take the same road (tests/test_models.py covers the models)
    "03_convnets_from_scratch": {"PER_CLASS": 6, "PREPARED_SIZE": 32, "IMAGE_SIZE": 16,
                                 "EPOCHS": 1, "BATCH_SIZE": 8, "RECIPE_NAMES": ["squeezenet-plus"]},
    "04_fine_tuning": {"PER_CLASS": 6, "IMAGE_SIZE": 32, "HEAD_EPOCHS": 1,
                       "FINE_TUNE_EPOCHS": 1, "FEATURE_VIEWS": 1, "BATCH_SIZE": 8},
    # 10 validation photos: batches of 8 and 2, which split evenly over the 2 mirrored replicas;
    # the plain convnet for the two workers (EfficientNet's synchronised batch norm and 14 MB
    # checkpoints cost a minute more there, for the same code path)
    "05_going_bigger": {"PER_CLASS": 10, "IMAGE_SIZE": 32, "EPOCHS": 1, "BATCH_SIZE": 8,
                        "STEPS": 1, "LAUNCH": "convnet"},
}
# What each notebook must show beyond running: a pattern in its text outputs.
SHOWS = {
    "01_data": r"kept 30 of 30 files",
    "02_transfer_learning": r"validation accuracy \d+\.\d%",
    "03_convnets_from_scratch": r"squeezenet-plus +[\d,]+ +\w+ +\d+\.\d%",
    "04_fine_tuning": r"accuracy \d+\.\d% on \d+ validation photos",
    "05_going_bigger": r"all 2 workers finished with identical weights",
}
# Absolute paths of this machine or any other; sources and text outputs must hold none.
ABSOLUTE = re.compile(r"(?<![\w.~])/(?:work|root|tmp|home|Users|private|var|mnt|opt)/")


def test_every_notebook_has_tiny_parameters():
    assert [nb.stem for nb in NOTEBOOKS] == sorted(TINY)


def _texts(nb) -> list[str]:
    """The notebook's sources and text outputs (not images, whose base64 could hold anything)."""
    found = [json.dumps(nb.metadata)]
    for cell in nb.cells:
        found.append(cell.source)
        for out in cell.get("outputs", []):
            found.append(out.get("text", "") + out.get("ename", "") + out.get("evalue", ""))
            data = out.get("data", {})
            found += [data[k] for k in ("text/plain", "text/html") if k in data]
    return found


def _empty_outputs(nb) -> list[dict]:
    """Outputs that show nothing (e.g. an empty <pre> a rich console displayed)."""
    return [out for cell in nb.cells for out in cell.get("outputs", [])
            if out.get("output_type") == "display_data" and not any(
                re.sub(r"<[^>]*>", "", str(v)).strip() for v in out.get("data", {}).values())]


def _images(nb) -> int:
    return sum(bool({"image/png", "image/jpeg"} & set(out.get("data", {}))) for cell in nb.cells
               for out in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_outputs_and_no_machine_paths(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell: parameters"
    assert re.search(r'^DATA = "\.\./\.\./shared/data/flower_photos"', code[0].source, re.M)
    assert all(c.get("execution_count") for c in code), "every code cell executed"
    assert _images(nb) >= 1 and "notebook ran in" in "".join(_texts(nb))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not _empty_outputs(nb), f"{path.name} has outputs that show nothing"
    papermill = nb.metadata.get("papermill", {})
    assert papermill and "input_path" not in papermill and "output_path" not in papermill
    assert not papermill.get("parameters"), "committed at the default parameters"
    leaks = [m.group(0) for text in _texts(nb) for m in ABSOLUTE.finditer(text)]
    assert not leaks, f"absolute paths in {path.name}: {leaks[:5]}"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Every notebook run once with papermill on its tiny parameters, three at a time: {name:
    (executed notebook, its work folder) or the exception it raised}.

    The kernel is this interpreter (the venv's), through a kernelspec in a temporary
    JUPYTER_PATH, whatever other kernels the machine has."""
    import papermill

    root = tmp_path_factory.mktemp("notebooks")
    spec = root / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "convlab tests", "language": "python"}))
    data = str(FLOWER_PHOTOS) if FLOWER_PHOTOS.is_dir() else str(root / "no-photos-here")

    def run(path: Path):
        name = path.stem
        where = root / name
        where.mkdir()
        params = {"DATA": data, "WORK": str(where / "work"), **TINY[name]}
        try:
            # The kernel's working folder through nbclient's resources: papermill's own `cwd`
            # changes the working folder of this whole process, which the threads share.
            papermill.execute_notebook(str(path), str(where / path.name), parameters=params,
                                       kernel_name=KERNEL, progress_bar=False,
                                       execution_timeout=240,
                                       resources={"metadata": {"path": str(where)}})
        except Exception as err:  # reported by the notebook's own test
            return name, err
        return name, (nbformat.read(where / path.name, as_version=4), where / "work")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root / "jupyter"))
        mp.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        # The longest first, so that the threads end at about the same time.
        with ThreadPoolExecutor(3) as pool:
            return dict(pool.map(run, sorted(NOTEBOOKS, reverse=True)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(executed, path):
    result = executed[path.stem]
    if isinstance(result, Exception):
        raise result
    nb, work = result
    text = "\n".join(_texts(nb))
    assert re.search(SHOWS[path.stem], text), f"{path.name} does not show {SHOWS[path.stem]!r}"
    assert _images(nb) >= 1, "no plot or image in the outputs"
    assert "notebook ran in" in text
    # clean outputs: no warnings, no C++ start-up lines, no stray progress bars
    stderr = [o["text"] for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not stderr, f"{path.name} wrote to stderr: {stderr[:3]}"
    assert not _empty_outputs(nb), f"{path.name} has outputs that show nothing"
    if path.stem != "01_data":
        assert list((work / "runs").glob("*/summary.json")), "no finished run folder"
