"""Shared by every test suite: import paths, offline settings, small helpers. No torch here:
the device suite (tests/device) runs on Jetson-like Pythons without it.

Suites: tests/device (device-side code: numpy, tokenizers, onnxruntime, polygraphy; the tiny
models are committed files under tests/fixtures), tests/host (torch, train/, export/; tiny
checkpoints made in the test), tests/serving (a real tritonserver).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# No folder under tests/ may be named like an importable package: pytest puts tests/ on
# sys.path for this conftest, and a tests/triton would shadow OpenAI Triton for torch._dynamo.
for path in (ROOT, TESTS / "fixtures"):  # the packages; tiny_data, make_fixtures
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# Fixtures shared by two suites live in tests/fixtures modules, loaded once for all of them.
pytest_plugins = ["calib_fixtures"]

os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def copy_of(tmp_path):
    """Copy a file into this test's tmp dir (to corrupt it without touching the fixture)."""

    def _copy(path: Path) -> Path:
        dst = tmp_path / Path(path).name
        shutil.copy(path, dst)
        return dst

    return _copy
