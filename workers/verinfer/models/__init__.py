"""Models: manifests, the deterministic tiny model, SmolLM2 (imported from a GGUF) and the
checked loader.

The names below are imported on first use (PEP 562), so that importing ``verinfer.models``
(or a light module of it, like ``manifest``) does not import torch: the node's supervisor and
chain worker never load a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from verinfer.lazy import lazy_attributes

_WHERE = {
    "LoadedModel": "loader",
    "ModelRegistry": "loader",
    "UnknownModelError": "loader",
    "load_model": "loader",
    "resolve_model_path": "loader",
    "MANIFEST_NAME": "manifest",
    "Manifest": "manifest",
    "ModelFileError": "manifest",
    "build_manifest": "manifest",
    "check_files": "manifest",
    "SMOLLM2_NAME": "smollm2",
    "ensure_smollm2": "smollm2",
    "import_gguf": "smollm2",
    "TinyConfig": "tiny",
    "build_tiny_model": "tiny",
    "tiny_model_path": "tiny",
}

__all__ = [
    "MANIFEST_NAME",
    "SMOLLM2_NAME",
    "LoadedModel",
    "Manifest",
    "ModelFileError",
    "ModelRegistry",
    "TinyConfig",
    "UnknownModelError",
    "build_manifest",
    "build_tiny_model",
    "check_files",
    "ensure_smollm2",
    "import_gguf",
    "load_model",
    "resolve_model_path",
    "tiny_model_path",
]

__getattr__ = lazy_attributes(__name__, _WHERE)


if TYPE_CHECKING:
    from verinfer.models.loader import (
        LoadedModel,
        ModelRegistry,
        UnknownModelError,
        load_model,
        resolve_model_path,
    )
    from verinfer.models.manifest import (
        MANIFEST_NAME,
        Manifest,
        ModelFileError,
        build_manifest,
        check_files,
    )
    from verinfer.models.smollm2 import SMOLLM2_NAME, ensure_smollm2, import_gguf
    from verinfer.models.tiny import TinyConfig, build_tiny_model, tiny_model_path
