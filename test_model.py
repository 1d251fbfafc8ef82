"""model.py against the reference: Hugging Face transformers on the same checkpoints, the real MiniLM
checkpoint, loading errors, tokenizer fallbacks, and the hub download against a loopback server."""

from __future__ import annotations

import http.server
import json
import logging
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model as M

transformers = pytest.importorskip("transformers", reason="parity tests compare against transformers")

TINY = dict(vocab_size=99, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
            max_position_embeddings=40)


def save_reference(cls_name: str, folder: Path, **config) -> torch.nn.Module:
    """A random transformers model saved as safetensors; returns it in eval mode."""
    model_type = "roberta" if cls_name.startswith("Roberta") else "bert"
    config_cls = transformers.RobertaConfig if model_type == "roberta" else transformers.BertConfig
    torch.manual_seed(0)
    reference = getattr(transformers, cls_name)(config_cls(**{**TINY, **config})).eval()
    reference.save_pretrained(folder, safe_serialization=True)
    return reference


def padded_batch(pad_id: int, vocab_size: int = 99) -> dict[str, torch.Tensor]:
    """Three sequences of lengths 12, 7 and 3 padded to 12, with two segments each."""
    g = torch.Generator().manual_seed(1)
    lengths = [12, 7, 3]
    input_ids = torch.randint(3, vocab_size, (3, 12), generator=g)
    attention_mask = torch.zeros(3, 12, dtype=torch.long)
    token_type_ids = torch.zeros(3, 12, dtype=torch.long)
    for row, n in enumerate(lengths):
        attention_mask[row, :n] = 1
        input_ids[row, n:] = pad_id
        token_type_ids[row, n // 2:n] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


# ---------------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("cls_name", ["BertModel", "RobertaModel"])
def test_hidden_states_match_transformers(tmp_path, cls_name):
    roberta = cls_name.startswith("Roberta")
    extra = dict(type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1) if roberta else {}
    reference = save_reference(cls_name, tmp_path, **extra)
    ours = M.from_pretrained(tmp_path).eval()
    batch = padded_batch(pad_id=1 if roberta else 0)
    if roberta:
        batch["token_type_ids"].zero_()  # RoBERTa has a single token type
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        got = ours(**batch)
    assert got.shape == (3, 12, 64)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls_name", ["BertForSequenceClassification", "RobertaForSequenceClassification"])
@pytest.mark.parametrize("num_labels", [3, 1])
def test_classification_logits_match_transformers(tmp_path, cls_name, num_labels):
    roberta = cls_name.startswith("Roberta")
    extra = dict(type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1) if roberta else {}
    reference = save_reference(cls_name, tmp_path, num_labels=num_labels, **extra)
    ours = M.from_pretrained(tmp_path, head="classification", num_labels=num_labels).eval()
    batch = padded_batch(pad_id=1 if roberta else 0)
    if roberta:
        batch["token_type_ids"].zero_()
    with torch.no_grad():
        expected = reference(**batch).logits
        got = ours(**batch)
    assert got.shape == (3, num_labels)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_span_logits_match_transformers(tmp_path):
    reference = save_reference("BertForQuestionAnswering", tmp_path)
    ours = M.from_pretrained(tmp_path, head="span").eval()
    batch = padded_batch(pad_id=0)
    with torch.no_grad():
        expected = reference(**batch)
        start, end = ours(**batch)
    torch.testing.assert_close(start, expected.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(end, expected.end_logits, atol=1e-5, rtol=0)


def test_roberta_positions_skip_padding(tmp_path):
    """Left padding must not shift RoBERTa's positions: the same tokens give the same hidden states."""
    save_reference("RobertaModel", tmp_path, type_vocab_size=1, pad_token_id=1)
    ours = M.from_pretrained(tmp_path).eval()
    tokens = torch.tensor([[0, 5, 6, 7, 2]])
    left_padded = torch.tensor([[1, 1, 0, 5, 6, 7, 2]])
    with torch.no_grad():
        plain = ours(tokens)
        padded = ours(left_padded, attention_mask=left_padded.ne(1).long())
    torch.testing.assert_close(padded[:, 2:], plain, atol=1e-5, rtol=0)


def test_dropout_is_active_in_training_and_off_in_eval(tmp_path):
    save_reference("BertModel", tmp_path)
    ours = M.from_pretrained(tmp_path)
    batch = padded_batch(pad_id=0)
    ours.train()
    assert not torch.equal(ours(**batch), ours(**batch))
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(**batch), ours(**batch))


# ------------------------------------------------------------------------------------- real MiniLM

SENTENCES = [
    ("The cat sat on the mat.", "A feline rested on a rug."),
    ("Progressive fine-tuning freezes the lower blocks early.", "Is that right?"),
    ("Beyoncé Giselle Knowles-Carter (born September 4, 1981) is an American singer.", "Who is she?"),
    ("short", "an unusually long second sentence that keeps going so that padding is needed elsewhere"),
]


def test_minilm_hidden_states_match_transformers(minilm_dir):
    tokenizer = M.load_tokenizer(minilm_dir)
    encodings = tokenizer.encode_batch([a for a, _ in SENTENCES], [b for _, b in SENTENCES], max_length=64)
    width = max(len(e.ids) for e in encodings)
    batch = {k: torch.zeros(len(encodings), width, dtype=torch.long)
             for k in ("input_ids", "attention_mask", "token_type_ids")}
    for row, e in enumerate(encodings):
        batch["input_ids"][row, :len(e.ids)] = torch.tensor(e.ids)
        batch["attention_mask"][row, :len(e.ids)] = 1
        batch["token_type_ids"][row, :len(e.ids)] = torch.tensor(e.type_ids)
    reference = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    ours = M.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        got = ours(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


def test_minilm_token_ids_match_transformers(minilm_dir):
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    ours = M.load_tokenizer(minilm_dir)
    firsts, seconds = [a for a, _ in SENTENCES], [b for _, b in SENTENCES]
    for max_length in (512, 16):
        expected = reference(firsts, seconds, truncation=True, max_length=max_length)
        got = ours.encode_batch(firsts, seconds, max_length=max_length)
        assert [e.ids for e in got] == expected["input_ids"]
        assert [e.type_ids for e in got] == expected["token_type_ids"]
    single = ours.encode_batch(firsts, max_length=512)
    assert [e.ids for e in single] == reference(firsts)["input_ids"]


def test_tokenizer_offsets_point_into_the_text(minilm_dir):
    tokenizer = M.load_tokenizer(minilm_dir)
    question, context = "Where was she born?", "Beyoncé was born in Houston, Texas."
    (e,) = tokenizer.encode_batch([question], [context], max_length=64)
    context_tokens = [(tok, off) for tok, off, seq in zip(e.tokens, e.offsets, e.sequence_ids) if seq == 1]
    assert [context[s:t].lower() for tok, (s, t) in context_tokens if tok == "houston"] == ["houston"]
    assert e.ids[0] == tokenizer.cls_token_id


def test_vocab_txt_fallback_matches_transformers(tmp_path, minilm_dir):
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    ours = M.load_tokenizer(tmp_path)
    assert ours.source.endswith("vocab.txt")
    reference = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=True)
    firsts, seconds = [a for a, _ in SENTENCES], [b for _, b in SENTENCES]
    expected = reference(firsts, seconds, truncation=True, max_length=20)
    got = ours.encode_batch(firsts, seconds, max_length=20)
    assert [e.ids for e in got] == expected["input_ids"]
    assert [e.type_ids for e in got] == expected["token_type_ids"]


def test_roberta_bpe_fallback_matches_transformers(tmp_path):
    from tokenizers.implementations import ByteLevelBPETokenizer

    corpus = [a + " " + b for a, b in SENTENCES] * 20
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(corpus, vocab_size=300, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    trainer.save_model(str(tmp_path))
    config = transformers.RobertaConfig(**{**TINY, "vocab_size": 300}, type_vocab_size=1)
    config.save_pretrained(tmp_path)
    ours = M.load_tokenizer(tmp_path)
    assert ours.source.endswith("vocab.json + merges.txt") and ours.pad_token_id == 1
    reference = transformers.RobertaTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    firsts, seconds = [a for a, _ in SENTENCES], [b for _, b in SENTENCES]
    for max_length in (512, 24):
        expected = reference(firsts, seconds, truncation=True, max_length=max_length)["input_ids"]
        assert [e.ids for e in ours.encode_batch(firsts, seconds, max_length=max_length)] == expected


def test_truncation_respects_max_length(minilm_dir):
    tokenizer = M.load_tokenizer(minilm_dir)
    long = "word " * 300
    for encoding in tokenizer.encode_batch([long, "a"], [long, long], max_length=128):
        assert len(encoding.ids) == 128
    (single,) = tokenizer.encode_batch([long], max_length=10)
    assert len(single.ids) == 10 and single.tokens[-1] == "[SEP]"


# ---------------------------------------------------------------------------------------- loading

@pytest.fixture()
def bert_folder(tmp_path) -> Path:
    save_reference("BertModel", tmp_path)
    return tmp_path


def rewrite_weights(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_missing_key_is_named(bert_folder):
    rewrite_weights(bert_folder, lambda t: t.pop("encoder.layer.1.attention.self.key.weight"))
    with pytest.raises(M.CheckpointError, match=r"missing key\(s\) \['encoder\.layer\.1\.attention\.self\.key\.weight'\]"):
        M.from_pretrained(bert_folder)


def test_unexpected_key_is_named(bert_folder):
    rewrite_weights(bert_folder, lambda t: t.update({"encoder.layer.0.attention.self.rotary": torch.zeros(3)}))
    with pytest.raises(M.CheckpointError, match=r"unexpected key\(s\) \['encoder\.layer\.0\.attention\.self\.rotary'\]"):
        M.from_pretrained(bert_folder)


def test_more_blocks_in_checkpoint_than_config_is_an_error(bert_folder):
    config = json.loads((bert_folder / "config.json").read_text())
    config["num_hidden_layers"] = 2
    (bert_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(M.CheckpointError, match=r"unexpected key\(s\) \[.*encoder\.layer\.2\."):
        M.from_pretrained(bert_folder)


def test_wrong_shape_is_named(bert_folder):
    rewrite_weights(bert_folder, lambda t: t.update({"encoder.layer.0.output.dense.bias": torch.zeros(65)}))
    with pytest.raises(M.CheckpointError, match=r"shape mismatch: encoder\.layer\.0\.output\.dense\.bias: "
                                                r"checkpoint \(65,\), model \(64,\)"):
        M.from_pretrained(bert_folder)


def test_pickled_checkpoint_is_refused(bert_folder):
    (bert_folder / "model.safetensors").unlink()
    (bert_folder / "pytorch_model.bin").write_bytes(b"not loaded: progtuning never unpickles")
    with pytest.raises(M.CheckpointError, match=r"only pickled weights \(pytorch_model\.bin\).*safetensors only"):
        M.from_pretrained(bert_folder)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such model folder"):
        M.from_pretrained(tmp_path / "does" / "not" / "exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: folder has no config\.json"):
        M.from_pretrained(tmp_path / "empty")


def test_bad_config_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 5, "hidden_size": 8,
                                                      "num_hidden_layers": 1, "num_attention_heads": 2,
                                                      "intermediate_size": 8}))
    with pytest.raises(ValueError, match=r"config\.json: model_type 'gpt2' is not supported"):
        M.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 5}))
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['hidden_size'"):
        M.from_pretrained(tmp_path)


def test_legacy_gamma_beta_and_dropped_heads(tmp_path):
    """Old BERT checkpoints name LayerNorm parameters gamma/beta and carry pre-training heads."""
    reference = save_reference("BertForPreTraining", tmp_path)

    def to_legacy(tensors):
        for key in [k for k in tensors if k.endswith("LayerNorm.weight") or k.endswith("LayerNorm.bias")]:
            tensors[key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")] = tensors.pop(key)
        tensors["bert.embeddings.position_ids"] = torch.arange(40)[None]

    rewrite_weights(tmp_path, to_legacy)
    ours = M.from_pretrained(tmp_path).eval()
    batch = padded_batch(pad_id=0)
    with torch.no_grad():
        expected = reference.bert(**batch).last_hidden_state
        torch.testing.assert_close(ours(**batch), expected, atol=1e-5, rtol=0)


def test_new_head_is_initialised_as_bert(bert_folder, caplog):
    with caplog.at_level(logging.INFO, logger="progtuning"):
        ours = M.from_pretrained(bert_folder, head="classification", num_labels=2)
    assert "new head weights" in caplog.text and "classifier.weight" in caplog.text
    assert torch.count_nonzero(ours.classifier.bias) == 0
    assert 0.01 < ours.classifier.weight.std().item() < 0.03  # std = initializer_range = 0.02
    # the pooler was in the checkpoint, so it was loaded, not re-drawn
    reference = load_file(bert_folder / "model.safetensors")
    assert torch.equal(ours.pooler.dense.weight, reference["pooler.dense.weight"])


def test_config_only_folder_gives_random_model(tmp_path, caplog):
    save_reference("BertModel", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="progtuning"):
        ours = M.from_pretrained(tmp_path, head="span")
    assert "RANDOMLY INITIALISED" in caplog.text
    assert len(ours.blocks) == 3


def test_parts_are_named():
    config = M.ModelConfig(model_type="bert", **TINY)
    ours = M.Transformer(config, head="classification", num_labels=2)
    parts = {name: M.part_of(name) for name, _ in ours.named_parameters()}
    assert parts["embeddings.word_embeddings.weight"] == ("embeddings", None)
    assert parts["encoder.layer.2.output.LayerNorm.bias"] == ("block", 2)
    assert parts["pooler.dense.weight"] == ("head", None) and parts["classifier.bias"] == ("head", None)
    assert sorted({i for kind, i in parts.values() if kind == "block"}) == [0, 1, 2]
    assert [id(b) for b in ours.blocks] == [id(b) for b in ours.encoder.layer]
    with pytest.raises(ValueError, match="belongs to no part"):
        M.part_of("mystery.weight")


def test_too_long_input_is_an_error():
    ours = M.Transformer(M.ModelConfig(model_type="bert", **TINY))
    with pytest.raises(ValueError, match=r"input length 41 exceeds the model's 40 positions"):
        ours(torch.zeros(1, 41, dtype=torch.long))


# --------------------------------------------------------------------------------- hub download

class HubHandler(http.server.BaseHTTPRequestHandler):
    """Serves files at the hub's layout: /<owner>/<name>/resolve/<revision>/<file>."""
    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self):
        self._answer(body=True)

    def do_HEAD(self):
        self._answer(body=False)

    def _answer(self, body: bool):
        type(self).requests.append(self.path)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    HubHandler.files, HubHandler.requests = {}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("PROGTUNING_OFFLINE", raising=False)
    yield server
    server.shutdown()
    server.server_close()


def serve_folder(folder: Path, repo: str) -> None:
    for path in folder.iterdir():
        HubHandler.files[f"/{repo}/resolve/main/{path.name}"] = path.read_bytes()


def test_hub_download_then_cache(tmp_path, hub, minilm_dir):
    source = tmp_path / "source"
    reference = save_reference("BertModel", source)
    shutil.copy(minilm_dir / "tokenizer.json", source / "tokenizer.json")
    serve_folder(source, "test-org/tiny-bert")

    ours = M.from_pretrained("test-org/tiny-bert").eval()
    snapshot = (tmp_path / "hf_home" / "hub" / "models--test-org--tiny-bert" / "snapshots"
                / "0123456789abcdef0123456789abcdef01234567")
    assert (snapshot / "model.safetensors").is_file() and (snapshot / "tokenizer.json").is_file()
    assert (snapshot.parent.parent / "refs" / "main").read_text() == snapshot.name
    assert not list(snapshot.glob("*.incomplete"))
    batch = padded_batch(pad_id=0)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch), reference(**batch).last_hidden_state, atol=1e-5, rtol=0)

    hub.shutdown()  # a second load must not need the server
    hub.server_close()
    requests_before = len(HubHandler.requests)
    again = M.from_pretrained("test-org/tiny-bert").eval()
    assert len(HubHandler.requests) == requests_before
    with torch.no_grad():
        assert torch.equal(again(**batch), ours(**batch))
    assert M.load_tokenizer("test-org/tiny-bert").source.endswith("tokenizer.json")


def test_hub_sharded_checkpoint(tmp_path, hub):
    source = tmp_path / "source"
    reference = save_reference("BertModel", source)
    tensors = load_file(source / "model.safetensors")
    (source / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, source / shard)
    (source / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    serve_folder(source, "sharded")
    ours = M.from_pretrained("sharded").eval()
    batch = padded_batch(pad_id=0)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch), reference(**batch).last_hidden_state, atol=1e-5, rtol=0)


def test_hub_errors(tmp_path, hub, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"nobody/nothing: not found at http://127\.0\.0\.1"):
        M.from_pretrained("nobody/nothing")
    source = tmp_path / "source"
    save_reference("BertModel", source)
    (source / "model.safetensors").rename(source / "pytorch_model.bin")
    serve_folder(source, "old/pickled")
    with pytest.raises(M.CheckpointError, match=r"old/pickled: the hub has only pytorch_model\.bin"):
        M.from_pretrained("old/pickled")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE is set"):
        M.from_pretrained("bert-base-uncased")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("PROGTUNING_OFFLINE", "1")  # one rule: either variable stops every download
    with pytest.raises(FileNotFoundError, match=r"PROGTUNING_OFFLINE is set"):
        M.from_pretrained("bert-base-uncased")


def test_unreachable_hub_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("PROGTUNING_OFFLINE", raising=False)
    with pytest.raises(ConnectionError, match=r"bert-base-uncased/resolve/main/config\.json: cannot download"):
        M.from_pretrained("bert-base-uncased")
