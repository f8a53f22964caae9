"""The ABIs shipped in the package must be what `ape compile` produces."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / ".build" / "__local__.json"


def _export_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("export_abi", ROOT / "scripts" / "export_abi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not BUILD.is_file(), reason="run `ape compile` first (make test does)")
@pytest.mark.parametrize("name", ["Market", "Court", "TestToken", "Timelock"])
def test_shipped_abi__matches_compiled_contract(name: str) -> None:
    export = _export_module()
    shipped = (ROOT / "workers" / "verinfer" / "abi" / f"{name}.json").read_text()
    assert shipped == export.render(export.build_abis(BUILD)[name]), (
        f"workers/verinfer/abi/{name}.json is stale: run `python scripts/export_abi.py`"
    )


def test_load_abi__reads_the_packaged_file() -> None:
    from verinfer.node.contracts import load_abi

    names = {item.get("name") for item in load_abi("Market")}
    assert {"claim", "publish", "finalize_many", "JobSubmitted", "ResultPublished"} <= names
