"""ape contract types from the ABIs shipped in the package (no project build needed)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def contract_type(name: str) -> Any:
    """ethpm ContractType of ``Market``, ``Court`` or ``TestToken`` (verinfer/abi/<name>.json)."""
    from ethpm_types import ContractType

    abi = json.loads(resources.files("verinfer.abi").joinpath(f"{name}.json").read_text())
    return ContractType.model_validate({"contractName": name, "abi": abi})
