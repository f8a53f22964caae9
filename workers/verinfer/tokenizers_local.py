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
