"""Model manifests: the sha256 of every file of a model directory (PROTOCOL.md §3).

A manifest is a JSON document::

    {"name": ..., "revision": ..., "dtype": "float32", "files": {"config.json": "<sha256>", ...}}

``manifest_hash = sha256(canonical_json({"dtype": dtype, "files": files}))`` where
``canonical_json`` is ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)``
and ``files`` maps every file's POSIX path relative to the model directory to the lowercase hex
sha256 of its bytes. ``model_id = keccak256(abi_encode(name, revision, manifest_hash))``
(``verinfer.digest.model_id``). A node refuses to serve a directory that has a missing, changed
or extra file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from verinfer.digest import model_id as digest_model_id

MANIFEST_NAME = "verinfer-manifest.json"
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
_IGNORED = frozenset({MANIFEST_NAME, ".gitattributes"})


class ModelFileError(Exception):
    """A model directory is missing files or does not match its manifest."""


def canonical_json(obj: object) -> bytes:
    """The canonical JSON encoding hashed by manifests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256_file(path: Path) -> str:
    """Lowercase hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_files(root: Path) -> list[str]:
    """Relative POSIX paths of the files that make up a model (symlinks followed)."""
    if not root.is_dir():
        raise ModelFileError(f"model directory {root} does not exist")
    names = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in _IGNORED and not rel.startswith("."):
            names.append(rel)
    return names


@dataclass(frozen=True)
class Manifest:
    """A model's immutable spec: name, revision, dtype and the sha256 of every file."""

    name: str
    revision: str
    dtype: str
    files: dict[str, str]

    @property
    def manifest_hash(self) -> bytes:
        """sha256 of the canonical JSON of ``{"dtype", "files"}`` (32 bytes)."""
        return hashlib.sha256(canonical_json({"dtype": self.dtype, "files": self.files})).digest()

    @property
    def model_id(self) -> bytes:
        """``keccak256(abi_encode(name, revision, manifest_hash))``."""
        return digest_model_id(self.name, self.revision, self.manifest_hash)

    def to_json(self) -> bytes:
        """Canonical JSON of the whole manifest (what ``save`` writes)."""
        return canonical_json(
            {"dtype": self.dtype, "files": self.files, "name": self.name, "revision": self.revision}
        )

    def save(self, path: Path) -> None:
        """Write the manifest as canonical JSON."""
        path.write_bytes(self.to_json() + b"\n")

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read a manifest file; raise ModelFileError when it is missing or malformed."""
        try:
            raw = json.loads(Path(path).read_text())
            files = {str(k): str(v) for k, v in dict(raw["files"]).items()}
            manifest = cls(str(raw["name"]), str(raw["revision"]), str(raw["dtype"]), files)
        except FileNotFoundError as exc:
            raise ModelFileError(f"manifest {path} not found") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"manifest {path} is malformed: {exc}") from exc
        if manifest.dtype not in SUPPORTED_DTYPES:
            raise ModelFileError(f"manifest dtype {manifest.dtype!r} not in {SUPPORTED_DTYPES}")
        return manifest


def build_manifest(root: Path, name: str, revision: str, dtype: str = "float32") -> Manifest:
    """Hash every file under ``root`` into a manifest."""
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype!r} not in {SUPPORTED_DTYPES}")
    root = Path(root)
    return Manifest(
        name, revision, dtype, {rel: sha256_file(root / rel) for rel in _model_files(root)}
    )


def check_files(root: Path, manifest: Manifest) -> None:
    """Refuse a directory whose files differ from the manifest (missing, changed or extra)."""
    root = Path(root)
    present = set(_model_files(root))
    expected = set(manifest.files)
    if missing := sorted(expected - present):
        raise ModelFileError(f"model files missing from {root}: {', '.join(missing)}")
    if extra := sorted(present - expected):
        raise ModelFileError(f"files not in the manifest found in {root}: {', '.join(extra)}")
    for rel in sorted(expected):
        actual = sha256_file(root / rel)
        if actual != manifest.files[rel]:
            raise ModelFileError(
                f"model file {rel} does not match the manifest "
                f"(sha256 {actual}, manifest {manifest.files[rel]})"
            )
