"""A small Llama-architecture model built deterministically from a seed.

Nothing here may download from a model hub, so tests, benchmarks and the demo use a model the
project builds itself: random weights drawn from per-tensor PCG64 streams keyed by
``(seed, tensor name)``, and a byte-level BPE tokenizer whose merges are learnt by a small
deterministic routine from a corpus embedded below. Every file is written with sorted keys and
no version stamps, so the same seed and config give byte-identical files and the same model_id.

Weights are scaled so the model behaves like a trained one where verification cares: the final
logits have a standard deviation of about ``logit_scale`` (4 by default), so top-1/top-2 gaps
are usually O(1) and near-ties (gap < 1e-3) are rare, instead of the near-flat logits of the
stock 0.02-std initialisation.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from verinfer.models.manifest import MANIFEST_NAME, Manifest, build_manifest

TINY_NAME = "verinfer-tiny-llama"
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>")
PAD_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = range(len(SPECIAL_TOKENS))
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = """
Clients submit jobs as transactions and pay from a prepaid balance. Staked nodes run open
models and publish result commitments. Disputes are settled by teacher-forced re-execution on a
second randomly chosen staked node; random audits keep everyone honest, and fraud is slashed.
The quick brown fox jumps over the lazy dog. What is the capital of France? The capital of
France is Paris. Write a short poem about the sea. The sea is wide and the waves are blue.
Explain how a transformer model works: tokens are embedded, attention mixes information between
positions, and a final projection gives the logits of the next token. Please summarise the
following text in one sentence. Thank you! Here is the answer, step by step: first, second,
third. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. def main(): return 42  # code
{"role": "user", "content": "hello"} Hello, how can I help you today? I am a helpful assistant.
"""
_PRETOKENIZE = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+""")


@dataclass(frozen=True)
class TinyConfig:
    """Shape of the tiny model; part of the cache key and of the revision string."""

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    logit_scale: float = 4.0
    dtype: str = "float32"  # float32 for CPU tests; bfloat16 for the GPU calibration

    def key(self, seed: int) -> str:
        """Short stable hash of (seed, config) used as cache key and revision suffix."""
        blob = json.dumps({"seed": seed, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _bytes_to_unicode() -> list[str]:
    """GPT-2 byte-level alphabet, indexed by byte value."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table: dict[int, int] = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    return [chr(table[b]) for b in range(256)]


def _learn_merges(n_merges: int) -> list[tuple[str, str]]:
    """Deterministic BPE: merge the most frequent pair, ties broken by the pair itself."""
    alphabet = _bytes_to_unicode()
    words = Counter(
        tuple(alphabet[b] for b in piece.encode()) for piece in _PRETOKENIZE.findall(_CORPUS)
    )
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    # pad with deterministic digit-pair merges if the corpus ran out of pairs
    digits = [alphabet[b] for b in b"0123456789"]
    filler = ((a, b) for a in digits for b in digits)
    seen = set(merges)
    while len(merges) < n_merges:
        pair = next(filler)
        if pair not in seen:
            merges.append(pair)
            seen.add(pair)
    return merges


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """Byte-level BPE tokenizer: 5 special tokens, 256 bytes, then learnt merges."""
    n_merges = vocab_size - len(SPECIAL_TOKENS) - 256
    if n_merges < 0:
        raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 256}")
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in _bytes_to_unicode():
        vocab[ch] = len(vocab)
    merges = _learn_merges(n_merges)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", BOS_ID)]
    )
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens, wanted {vocab_size}")
    return tokenizer


def _hf_config(cfg: TinyConfig) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": [EOS_ID, IM_END_ID],
        "head_dim": cfg.hidden_size // cfg.num_attention_heads,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads,
        "pad_token_id": PAD_ID,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": cfg.dtype,
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
    }


def _tensor_shapes(cfg: TinyConfig) -> dict[str, tuple[int, ...]]:
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    head_dim = d // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (v, d),
        "model.norm.weight": (d,),
        "lm_head.weight": (v, d),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (d, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        }
    return shapes


def tiny_weights(cfg: TinyConfig, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic weights: one PCG64 stream per tensor, keyed by (seed, name)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in sorted(_tensor_shapes(cfg).items()):
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=torch.float32)
            continue
        key = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:16], "big")
        rng = np.random.Generator(np.random.PCG64(key))
        if name == "model.embed_tokens.weight":
            std = 1.0
        elif name == "lm_head.weight":
            std = cfg.logit_scale / np.sqrt(shape[1])
        else:
            std = 1.0 / np.sqrt(shape[1])
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(values))
    return tensors


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=2) + "\n")


def build_tiny_model(path: Path, seed: int = 0, config: TinyConfig | None = None) -> Manifest:
    """Write the tiny model (HF directory + ``verinfer-manifest.json``) and return its manifest."""
    cfg = config or TinyConfig()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / "config.json", _hf_config(cfg))
    _write_json(
        path / "generation_config.json",
        {"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, IM_END_ID], "pad_token_id": PAD_ID},
    )
    (path / "tokenizer.json").write_text(build_tokenizer(cfg.vocab_size).to_str(pretty=True) + "\n")
    _write_json(
        path / "tokenizer_config.json",
        {
            "bos_token": SPECIAL_TOKENS[BOS_ID],
            "chat_template": CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": SPECIAL_TOKENS[EOS_ID],
            "model_max_length": cfg.max_position_embeddings,
            "pad_token": SPECIAL_TOKENS[PAD_ID],
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )
    weights = {k: v.to(getattr(torch, cfg.dtype)) for k, v in tiny_weights(cfg, seed).items()}
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    manifest = build_manifest(path, TINY_NAME, f"seed-{seed}-{cfg.key(seed)}", cfg.dtype)
    manifest.save(path / MANIFEST_NAME)
    return manifest


def default_cache_dir() -> Path:
    """``$VERINFER_CACHE_DIR/models`` or ``<repo>/.cache/models``."""
    env = os.environ.get("VERINFER_CACHE_DIR")
    if env:
        return Path(env) / "models"
    return Path(__file__).resolve().parents[3] / ".cache" / "models"


def tiny_model_path(
    seed: int = 0, config: TinyConfig | None = None, cache_dir: Path | None = None
) -> Path:
    """Path of the cached tiny model for (seed, config), building it on first use."""
    cfg = config or TinyConfig()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / f"tiny-{cfg.key(seed)}"
    if (target / MANIFEST_NAME).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        build_tiny_model(tmp, seed, cfg)
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            tmp.rename(target)
        except OSError:  # built concurrently by another process: keep theirs
            if not (target / MANIFEST_NAME).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
