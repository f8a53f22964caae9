"""Tiny model determinism, manifests and the loader refusing files that do not match."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from verinfer.digest import model_id as digest_model_id
from verinfer.models import (
    MANIFEST_NAME,
    Manifest,
    ModelFileError,
    TinyConfig,
    build_manifest,
    build_tiny_model,
    load_model,
    resolve_model_path,
    tiny_model_path,
)

SMALL = TinyConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1)


@pytest.fixture
def small_model(tmp_path: Path) -> Path:
    """A throw-away copy of a very small model directory the test may damage."""
    build_tiny_model(tmp_path / "m", seed=5, config=SMALL)
    return tmp_path / "m"


def test_build_tiny_model__same_seed__byte_identical_files_and_model_id(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=3, config=SMALL)
    b = build_tiny_model(tmp_path / "b", seed=3, config=SMALL)
    c = build_tiny_model(tmp_path / "c", seed=4, config=SMALL)
    assert a.files == b.files
    for rel in a.files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert a.model_id == b.model_id
    assert c.model_id != a.model_id
    assert c.files["model.safetensors"] != a.files["model.safetensors"]
    assert c.files["tokenizer.json"] == a.files["tokenizer.json"]


def test_manifest__model_id_is_keccak_of_name_revision_manifest_hash(small_model):
    manifest = Manifest.load(small_model / MANIFEST_NAME)
    assert manifest.model_id == digest_model_id(
        manifest.name, manifest.revision, manifest.manifest_hash
    )
    assert build_manifest(small_model, manifest.name, manifest.revision) == manifest
    assert len(manifest.manifest_hash) == 32
    assert sorted(manifest.files) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_manifest__dtype_changes_the_model_id(small_model):
    manifest = Manifest.load(small_model / MANIFEST_NAME)
    bf16 = Manifest(manifest.name, manifest.revision, "bfloat16", manifest.files)
    assert bf16.model_id != manifest.model_id


def test_load_model__changed_weight_file__refused(small_model):
    weights = small_model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"model file model.safetensors does not match"):
        load_model(small_model)


def test_load_model__changed_chat_template__refused(small_model):
    cfg = small_model / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace("assistant", "assistent"))
    with pytest.raises(ModelFileError, match=r"tokenizer_config.json does not match"):
        load_model(small_model)


def test_load_model__missing_file__refused(small_model):
    (small_model / "tokenizer.json").unlink()
    with pytest.raises(ModelFileError, match=r"model files missing from .*tokenizer.json"):
        load_model(small_model)


def test_load_model__extra_file__refused(small_model):
    shutil.copy(small_model / "model.safetensors", small_model / "model-extra.safetensors")
    with pytest.raises(ModelFileError, match=r"files not in the manifest .*model-extra"):
        load_model(small_model)


def test_load_model__missing_manifest_or_directory__refused(small_model, tmp_path):
    (small_model / MANIFEST_NAME).unlink()
    with pytest.raises(ModelFileError, match=r"manifest .* not found"):
        load_model(small_model)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nowhere", Manifest("x", "y", "float32", {}))


def test_load_model__corrupt_files_with_matching_manifest__clear_error(small_model):
    (small_model / "model.safetensors").write_bytes(b"not a safetensors file")
    manifest = build_manifest(small_model, "corrupt", "r1")
    with pytest.raises(ModelFileError, match="do not load"):
        load_model(small_model, manifest)


def test_tiny_model__loads_with_tokenizer_chat_template_and_eos(tiny):
    assert tiny.vocab_size == 512
    assert tiny.eos_token_ids == (2, 4)
    ids = tiny.tokenizer("The capital of France is Paris.")["input_ids"]
    assert ids[0] == 1  # BOS
    assert tiny.tokenizer.decode(ids, skip_special_tokens=True) == "The capital of France is Paris."
    chat = tiny.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|bos|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_model__logits_have_realistic_spread_and_few_near_ties(tiny):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 512, (8, 64), generator=gen)
    with torch.inference_mode():
        logits = tiny.model(ids).logits.double()
    std = logits.std(-1).mean().item()
    top2 = logits.topk(2, -1).values
    gaps = (top2[..., 0] - top2[..., 1]).flatten()
    assert 3.0 < std < 5.0
    assert gaps.median().item() > 0.3
    assert (gaps < 1e-3).double().mean().item() < 0.01


def test_tiny_model_path__cached_by_config(tmp_path):
    first = tiny_model_path(9, SMALL, cache_dir=tmp_path)
    again = tiny_model_path(9, SMALL, cache_dir=tmp_path)
    other = tiny_model_path(10, SMALL, cache_dir=tmp_path)
    assert first == again != other
    assert (first / MANIFEST_NAME).is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".build")] == []


def test_resolve_model_path__directory_or_cached_repo_only(small_model, tmp_path, monkeypatch):
    assert resolve_model_path(small_model) == small_model
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelFileError, match="neither a directory nor cached"):
        resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct")
