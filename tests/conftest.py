"""Shared fixtures. Tests that need the real flower photos go through `flower_photos`."""

from __future__ import annotations

import os
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
