"""The `verinfer` command line.

Errors are one line on stderr and a non-zero exit code, never a traceback; `--json`
prints machine-readable output for agents and scripts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from verinfer import __version__


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(data) if as_json else text)


class _OneLineErrors(click.Group):
    """Turn the expected failures into `verinfer: <message>` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        from verinfer.engines.base import JobError
        from verinfer.models.manifest import ModelFileError

        try:
            return super().invoke(ctx)
        except (ModelFileError, JobError, FileNotFoundError, ValueError) as exc:
            click.echo(f"verinfer: {exc}", err=True)
            sys.exit(1)


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
    _emit(as_json, data, f"{data['name']}@{data['revision']} {data['model_id']}\n  {path}")


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
    _emit(as_json, data, data["model_id"])


def _model_data(path: Path, manifest: Any) -> dict[str, Any]:
    return {
        "name": manifest.name,
        "revision": manifest.revision,
        "manifest_hash": "0x" + manifest.manifest_hash.hex(),
        "model_id": "0x" + manifest.model_id.hex(),
        "path": str(path),
    }


from verinfer.node.cli import node  # noqa: E402

main.add_command(node)

if __name__ == "__main__":
    main()
