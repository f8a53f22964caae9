"""Turn output token ids back into text with a local copy of the model's tokenizer.

A client needs only ``tokenizer.json`` (no torch, no transformers). Model directories are
found through their manifests in ``$VERINFER_MODEL_DIRS`` (path-separated) and in the model
cache (``$VERINFER_CACHE_DIR/models`` or ``<repo>/.cache/models``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from verinfer.models.manifest import MANIFEST_NAME, Manifest, ModelFileError


def model_search_dirs() -> list[Path]:
    """Directories holding model directories, or model directories themselves."""
    dirs = [Path(p) for p in os.environ.get("VERINFER_MODEL_DIRS", "").split(os.pathsep) if p]
    cache_root = os.environ.get("VERINFER_CACHE_DIR")
    if cache_root:
        dirs.append(Path(cache_root) / "models")
    dirs.append(Path(__file__).resolve().parents[2] / ".cache" / "models")
    return dirs


def find_model_dir(model_id: bytes) -> Path | None:
    """A local directory whose manifest gives ``model_id``, or None."""
    for root in model_search_dirs():
        candidates = [root] + (sorted(root.iterdir()) if root.is_dir() else [])
        for path in candidates:
            if not (path / MANIFEST_NAME).is_file():
                continue
            try:
                if Manifest.load(path / MANIFEST_NAME).model_id == model_id:
                    return path
            except ModelFileError:
                continue
    return None


@cache
def _tokenizer(model_id: bytes) -> Any:
    path = find_model_dir(model_id)
    if path is None or not (path / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path / "tokenizer.json"))


def decode_tokens(model_id: bytes, token_ids: Sequence[int]) -> str | None:
    """Text of ``token_ids`` (special tokens skipped), or None without a local tokenizer."""
    tok = _tokenizer(bytes(model_id))
    if tok is None:
        return None
    return str(tok.decode(list(token_ids), skip_special_tokens=True))


# A byte-level tokenizer gives at most one token per input byte; the chat template adds its
# own text (tags, a default system prompt), counted here with a generous margin. An input that
# fits under this bound cannot exceed the context, so it is not tokenized.
TEMPLATE_MARGIN_TOKENS = 512


@cache
def _hf_tokenizer(path: Path) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _context(path: Path) -> int:
    import json

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(config.get("max_position_embeddings", 0) or 0)


def context_error(model_id: bytes, data: bytes, max_tokens: int) -> str | None:
    """Why a job with input ``data`` and ``max_tokens`` cannot run on the model (its prompt
    tokens + max_tokens exceed the model's context), or None when it fits or no local copy of
    the model is found. The node's engine refuses the same jobs (``check_job_params``)."""
    path = find_model_dir(bytes(model_id))
    if path is None:
        return None
    context = _context(path)
    if not context or len(data) + TEMPLATE_MARGIN_TOKENS + max_tokens <= context:
        return None
    from verinfer.inputs import tokenize_input

    n = len(tokenize_input(_hf_tokenizer(path), data))
    if n + max_tokens <= context:
        return None
    return (
        f"prompt of {n} tokens + max_tokens {max_tokens} exceeds the model context of "
        f"{context} tokens"
    )
