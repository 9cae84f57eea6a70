"""Shared fixtures. Tests that need the real flower photos go through `flowers128`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

FLOWERS128 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flowers128"


@pytest.fixture(scope="session")
def flowers128() -> Path:
    """../shared/data/flowers128 (read-only); skips cleanly on a checkout without it."""
    if not FLOWERS128.is_dir():
        pytest.skip(f"real flower photos not found at {FLOWERS128}")
    return FLOWERS128
