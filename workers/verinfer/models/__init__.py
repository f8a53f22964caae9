"""Models: manifests, the deterministic tiny model and the checked loader."""

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
from verinfer.models.tiny import TinyConfig, build_tiny_model, tiny_model_path

__all__ = [
    "MANIFEST_NAME",
    "LoadedModel",
    "Manifest",
    "ModelFileError",
    "ModelRegistry",
    "TinyConfig",
    "UnknownModelError",
    "build_manifest",
    "build_tiny_model",
    "check_files",
    "load_model",
    "resolve_model_path",
    "tiny_model_path",
]
