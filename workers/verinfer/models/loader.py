"""Load a model directory after checking it against its manifest."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from verinfer.models.manifest import MANIFEST_NAME, Manifest, ModelFileError, check_files

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UnknownModelError(KeyError):
    """A job names a model id this process does not serve."""


@dataclass
class LoadedModel:
    """A checked, loaded model: torch module, tokenizer and the spec it was checked against."""

    manifest: Manifest
    path: Path
    model: Any
    tokenizer: Any
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    max_context: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def model_id(self) -> bytes:
        """The on-chain model id of this spec."""
        return self.manifest.model_id

    def stop_ids(self, stop_token_ids: tuple[int, ...]) -> frozenset[int]:
        """The job's stop set: its own stop ids, or the model's EOS ids when it gives none."""
        return frozenset(stop_token_ids or self.eos_token_ids)


def _eos_ids(path: Path, config: Any) -> tuple[int, ...]:
    ids: set[int] = set()
    for source in (getattr(config, "eos_token_id", None),):
        if source is not None:
            ids.update([source] if isinstance(source, int) else source)
    gen_cfg = path / "generation_config.json"
    if gen_cfg.is_file():
        value = json.loads(gen_cfg.read_text()).get("eos_token_id")
        if value is not None:
            ids.update([value] if isinstance(value, int) else value)
    return tuple(sorted(int(i) for i in ids))


def resolve_model_path(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local model directory, or the snapshot of a Hugging Face repo id in the local cache.

    Never downloads: a repo id that is not in the cache raises ModelFileError.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id=str(name_or_path), revision=revision, local_files_only=True)
        )
    except Exception as exc:  # not cached, bad repo id, ...
        raise ModelFileError(f"model {name_or_path} is neither a directory nor cached") from exc


def load_model(
    path: Path | str,
    manifest: Manifest | Path | str | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Check ``path`` against ``manifest`` (default: its ``verinfer-manifest.json``) and load it.

    Raises ModelFileError when the directory or manifest is missing, any file differs from the
    manifest, or the files do not load as a causal LM.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(path)
    if manifest is None:
        manifest = root / MANIFEST_NAME
    spec = manifest if isinstance(manifest, Manifest) else Manifest.load(Path(manifest))
    check_files(root, spec)
    model: Any
    try:
        model = AutoModelForCausalLM.from_pretrained(
            root, dtype=_DTYPES[spec.dtype], local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
    except Exception as exc:  # any loader failure (safetensors, json, torch) is a bad file
        raise ModelFileError(f"model files in {root} do not load: {exc}") from exc
    model = model.to(device)
    model.eval()
    config = model.config
    eos = _eos_ids(root, config)
    if not eos and tokenizer.eos_token_id is not None:
        eos = (int(tokenizer.eos_token_id),)
    if not eos:
        raise ModelFileError(f"model in {root} declares no EOS token")
    vocab = int(model.get_output_embeddings().weight.shape[0])
    return LoadedModel(
        manifest=spec,
        path=root,
        model=model,
        tokenizer=tokenizer,
        eos_token_ids=eos,
        vocab_size=vocab,
        max_context=int(getattr(config, "max_position_embeddings", 0) or 0),
        device=torch.device(device),
    )


def load_impostor(weights: Path | str, claimed: Path | str) -> LoadedModel:
    """DEV/TEST ONLY: the model in ``weights`` (checked against its own manifest) passed off as
    the model in ``claimed``: it answers under ``claimed``'s model id. A cheating node, for the
    demo and the dispute tests (``VERINFER_DEV_CHEAT_WEIGHTS``). Raises ModelFileError when the
    two do not share a vocabulary (the impostor could not even produce the claimed tokens)."""
    real = load_model(weights)
    spec = Manifest.load(Path(claimed) / MANIFEST_NAME)
    claimed_vocab = int(json.loads((Path(claimed) / "config.json").read_text())["vocab_size"])
    if claimed_vocab != real.vocab_size:
        raise ModelFileError(
            f"cheat weights in {weights} have vocabulary {real.vocab_size}, "
            f"the claimed model {claimed_vocab}"
        )
    return replace(real, manifest=spec)


class ModelRegistry:
    """The models a process serves, by model id."""

    def __init__(self, models: list[LoadedModel] | None = None) -> None:
        self._models: dict[bytes, LoadedModel] = {}
        for m in models or []:
            self.add(m)

    def add(self, model: LoadedModel) -> None:
        """Serve ``model`` under its model id."""
        self._models[model.model_id] = model

    def get(self, model_id: bytes) -> LoadedModel:
        """The loaded model for ``model_id``; UnknownModelError when not served."""
        try:
            return self._models[bytes(model_id)]
        except KeyError:
            raise UnknownModelError(f"model 0x{bytes(model_id).hex()} is not served here") from None

    def __contains__(self, model_id: object) -> bool:
        return isinstance(model_id, bytes) and model_id in self._models

    def ids(self) -> list[bytes]:
        """Model ids served, in insertion order."""
        return list(self._models)
