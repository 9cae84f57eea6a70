"""`convlab review`: mislabelled photos are found and traced to their files."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

import convlab
from convlab.cli.main import main
from convlab.errors import ConvlabError

COLOURS = {"blue": (30, 60, 200), "green": (40, 170, 60), "red": (200, 40, 40)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Solid-colour photos with noise, one class per colour, and three put in the wrong
    class folder: a red photo in green/ twice, a blue one in red/."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(3)
    wrong = {("red", "green", 0), ("red", "green", 1), ("blue", "red", 0)}

    def save(colour, folder, name):
        pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 25, (40, 40, 3)), 0, 255)
        (root / "src" / folder).mkdir(parents=True, exist_ok=True)
        path = root / "src" / folder / name
        Image.fromarray(pixels.astype(np.uint8)).save(path, "PNG")
        return path

    for colour in COLOURS:
        for i in range(14):
            save(colour, colour, f"{colour}-{i:02d}.png")
    planted = {str(save(c, f, f"oops-{c}-{i}.png")) for c, f, i in wrong}
    convlab.prepare(str(root / "src"), root / "data", size=32, shards=2, progress=False)
    return root, planted


def test_review_finds_the_planted_label_errors_with_their_files(photos, capsys):
    root, planted = photos
    run = convlab.train("efficientnet_lite0", data=str(root / "data"), image_size=32,
                        batch_size=8, epochs=1, precision="float32",
                        model_options={"weights": None}, report=False,
                        runs_dir=str(root / "runs"), progress=False)
    assert main(["review", str(run), "--folds", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run / "review" / "review.json").read_text())
    assert result["photos"] == 14 * 3 + 3 and result["splits"] == ["train", "validation"]
    top = {issue["path"] for issue in result["issues"][:3]}
    assert top == planted, result["issues"][:5]
    assert result["flagged"] < 10  # the clean photos are left alone
    first = result["issues"][0]
    assert first["suggested"] in ("red", "blue") and first["label"] in ("green", "red")
    with open(run / "review" / "label_issues.csv", newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == [i["path"] for i in result["issues"]]
    page = (run / "review" / "review.html").read_text()
    assert all(p in page for p in planted) and page.count("data:image/jpeg;base64,") >= 3
    assert f"{result['flagged']} suspected label error(s)" in out and first["path"] in out


def test_review_of_a_model_from_scratch_reads_only_its_validation_split(photos):
    from convlab import review

    root, _ = photos
    run = convlab.train("convnet", data=str(root / "data"), image_size=16, batch_size=8,
                        epochs=1, precision="float32", report=False,
                        runs_dir=str(root / "runs"), progress=False)
    result = review(run, progress=False)
    validation = convlab.data.read_manifest(root / "data")["counts"]["per_split"]["validation"]
    assert result["splits"] == ["validation"] and result["photos"] == validation
    assert "validation split" in result["method"]
    with pytest.raises(ConvlabError, match="--folds must be at least 2"):
        review(run, folds=1)
