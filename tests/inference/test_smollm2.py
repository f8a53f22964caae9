"""SmolLM2-135M-Instruct, the real open model: its deterministic import from the packaged GGUF,
the cache that is rebuilt rather than served when it differs, its tokenizer and chat template
(input format 0x01), batched generation, and a verify round trip (honest claims pass, the
demo cheater's variant is caught)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from verinfer.digest import FinishReason, SamplingParams
from verinfer.engines import Job, TransformersEngine
from verinfer.inputs import InputFormatError, encode_chat_input, encode_text_input, tokenize_input
from verinfer.models import LoadedModel, load_model
from verinfer.models.loader import load_impostor
from verinfer.models.manifest import MANIFEST_NAME, Manifest, check_files, sha256_file
from verinfer.models.smollm2 import (
    GGUF_SHA256,
    SMOLLM2_MODEL_ID,
    SMOLLM2_NAME,
    cache_problem,
    ensure_smollm2,
    packaged_gguf,
    smollm2_dir,
    smollm2_without_layer,
)
from verinfer.tokenizers_local import decode_tokens
from verinfer.verifier import Claim, Verdict, verify_batch

IM_START, IM_END = 1, 2
FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    MANIFEST_NAME,
)


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    return load_model(ensure_smollm2())


def _chat(text: str) -> bytes:
    return encode_chat_input([{"role": "user", "content": text}])


def test_packaged_gguf_is_the_pinned_file():
    assert sha256_file(packaged_gguf()) == GGUF_SHA256


def test_changed_and_partial_cache__rebuilt_by_a_second_import__byte_identical_same_id(
    tmp_path: Path,
):
    """A second, independent import (into another directory: a cache under another home) of
    the same GGUF gives the same bytes and the pinned model id; the broken cache it replaces
    (one file changed, one missing) is never returned."""
    first = ensure_smollm2()
    home = tmp_path / "home"
    broken = smollm2_dir(home)
    shutil.copytree(first, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 29}))
    (broken / "tokenizer.json").unlink()
    assert cache_problem(broken, SMOLLM2_MODEL_ID) == (
        f"model files missing from {broken}: tokenizer.json"
    )

    second = ensure_smollm2(home)

    assert second == broken and second != first
    assert sorted(p.name for p in second.iterdir()) == sorted(FILES)
    for name in FILES:
        assert (second / name).read_bytes() == (first / name).read_bytes(), name
    manifest = Manifest.load(second / MANIFEST_NAME)
    check_files(second, manifest)
    assert "0x" + manifest.model_id.hex() == SMOLLM2_MODEL_ID
    assert manifest.name == SMOLLM2_NAME and manifest.dtype == "float32"
    assert not list((home / "models").glob(".build-*"))  # no temporary directory left


def test_cache_with_a_consistent_but_foreign_manifest__rejected(tmp_path: Path):
    """Files and manifest changed together pass the manifest check, but not the pinned id."""
    first = ensure_smollm2()
    fake = tmp_path / "models" / first.name
    fake.mkdir(parents=True)
    for name in FILES[:-1]:
        (fake / name).symlink_to(first / name)
    spec = Manifest.load(first / MANIFEST_NAME)
    Manifest(spec.name, "another-revision", spec.dtype, spec.files).save(fake / MANIFEST_NAME)
    problem = cache_problem(fake, SMOLLM2_MODEL_ID)
    assert problem is not None and problem.endswith(f"is not the pinned {SMOLLM2_MODEL_ID}")
    assert cache_problem(first, SMOLLM2_MODEL_ID) is None


def test_config_and_tokenizer_files_match_the_gguf_metadata(smollm2: LoadedModel):
    path = smollm2.path
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        30,
        576,
        49152,
    )
    assert config["max_position_embeddings"] == 8192 and config["tie_word_embeddings"] is True
    assert "transformers_version" not in config and "_name_or_path" not in config
    assert json.loads((path / "generation_config.json").read_text()) == {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    tok = smollm2.tokenizer
    assert tok.bos_token == "<|im_start|>"
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert smollm2.eos_token_ids == (IM_END,) and smollm2.max_context == 8192
    assert smollm2.vocab_size == 49152


def test_text_prompt__no_bos_added__digits_split_one_by_one(smollm2: LoadedModel):
    tok = smollm2.tokenizer
    ids = tokenize_input(tok, encode_text_input("Hello 2024 world"))
    assert tok.convert_ids_to_tokens(ids) == ["Hello", "Ġ", "2", "0", "2", "4", "Ġworld"]
    assert tok.decode(ids) == "Hello 2024 world"
    # a client decodes with tokenizer.json alone (no transformers): plain byte-level decoder
    text = "Paris, café, ▁x <|im_end|>"
    ids = tokenize_input(tok, encode_text_input(text))
    assert ids[-1] == IM_END
    assert decode_tokens(smollm2.model_id, ids) == "Paris, café, ▁x "


def test_chat_input__the_models_own_template__default_system_prompt(smollm2: LoadedModel):
    tok = smollm2.tokenizer
    ids = tokenize_input(tok, _chat("What is 2+2?"))
    assert tok.decode(ids) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ids[0] == IM_START and ids.count(IM_END) == 2
    own_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.decode(tokenize_input(tok, encode_chat_input(own_system))) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with pytest.raises(InputFormatError, match=r"^chat message 0 has an unknown role 'robot'"):
        tokenize_input(tok, b'\x01[{"role":"robot","content":"hi"}]')


def test_batched_chat_generation__real_answer__im_end_stops__same_as_alone(
    smollm2: LoadedModel,
):
    engine = TransformersEngine(smollm2, max_batch_size=8)
    jobs = [
        Job(smollm2.model_id, SamplingParams(max_tokens=24), input_data=_chat(q))
        for q in (
            "What is the capital of France? Answer in one sentence.",
            "Name three primary colors.",
        )
    ]
    batch = engine.generate(jobs)  # two prompts of different lengths: left padding + masks
    paris = batch[0]
    assert paris.finish_reason == FinishReason.STOP and paris.token_ids[-1] == IM_END
    text = smollm2.tokenizer.decode(paris.token_ids, skip_special_tokens=True)
    assert text == "The capital of France is Paris."
    assert [r.token_ids for r in batch] == [engine.generate([j])[0].token_ids for j in jobs]


def test_context_limit__prompt_plus_max_tokens(smollm2: LoadedModel):
    engine = TransformersEngine(smollm2, max_output_tokens=8192)
    prompt = encode_chat_input([{"role": "user", "content": "hi"}])
    n = len(tokenize_input(smollm2.tokenizer, prompt))
    (result,) = engine.generate([Job(smollm2.model_id, SamplingParams(8193 - n), prompt)])
    assert result.error == (
        f"prompt of {n} tokens + max_tokens {8193 - n} exceeds the model context of 8192 tokens"
    )


def test_verify_round_trip__honest_claims_valid__dropped_layer_variant_caught(
    smollm2: LoadedModel,
):
    """Greedy and sampled chat jobs generated in one batch verify as valid on their own; the
    demo cheater's variant (SmolLM2 without decoder layer 15, under SmolLM2's id) is caught."""
    questions = ("What is a GPU?", "Write one sentence about the sea.", "What is 17 times 3?")
    jobs = [
        Job(
            smollm2.model_id,
            SamplingParams(max_tokens=16, temperature_milli=(0, 700, 1000)[i], seed=11 + i),
            input_data=_chat(q),
        )
        for i, q in enumerate(questions)
    ]
    honest = TransformersEngine(smollm2, max_batch_size=8).generate(jobs)
    cheater = load_impostor(smollm2_without_layer(), smollm2.path)
    assert cheater.model_id == smollm2.model_id
    cheats = TransformersEngine(cheater, max_batch_size=8).generate(jobs)
    claims = [
        Claim(j, r.token_ids, int(r.finish_reason)) for j, r in zip(jobs, honest, strict=True)
    ]
    cheat_claims = [
        Claim(j, r.token_ids, int(r.finish_reason))
        for j, r, h in zip(jobs, cheats, honest, strict=True)
        if r.token_ids != h.token_ids
    ]
    assert len(cheat_claims) >= 2  # outputs identical to the honest ones are no cheat
    verdicts = verify_batch(smollm2, claims + cheat_claims, batch_size=1)
    valid = [v.valid if isinstance(v, Verdict) else v for v in verdicts]
    assert valid == [True] * len(claims) + [False] * len(cheat_claims)
