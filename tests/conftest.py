"""Shared fixtures: tiny synthetic prepared datasets (`tiny_prepared`), and the real flower
photos (`flower_photos`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

FLOWER_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flower_photos"


@pytest.fixture(scope="session")
def flower_photos() -> Path:
    """../shared/data/flower_photos, full-resolution photos (read-only); skips cleanly on a
    checkout without it."""
    if not FLOWER_PHOTOS.is_dir():
        pytest.skip(f"real flower photos not found at {FLOWER_PHOTOS}")
    return FLOWER_PHOTOS


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """A factory of tiny prepared datasets: synthetic photos (coloured shapes, one class per
    shape) in ROOT/src, prepared by `convlab.data.prepare` into ROOT/data, which it returns.
    Every call makes a fresh one, so a module may change its copy."""
    from convlab.data import prepare
    from convlab.data.synthetic import make_folder

    def make(*, classes: int = 3, per_class: int = 30, photo_size: int = 24, size: int = 16,
             shards: int = 3, image_format: str = "JPEG", **options) -> Path:
        root = tmp_path_factory.mktemp("tiny")
        src = make_folder(root / "src", num_classes=classes, per_class=per_class,
                          size=photo_size, image_format=image_format)
        prepare(str(src), root / "data", size=size, shards=shards, progress=False, **options)
        return root / "data"

    return make


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's, driven by Playwright) for the page tests; they skip
    where it is not installed."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield browser
        browser.close()
