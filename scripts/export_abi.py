"""Write the ABIs the node ships (workers/verinfer/abi/*.json) from ape's build output.

Run after `ape compile` (`make abi`). tests/node/test_abi.py fails when they drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ("Market", "Court", "TestToken", "Timelock")
OUT = ROOT / "workers" / "verinfer" / "abi"


def build_abis(build: Path = ROOT / ".build" / "__local__.json") -> dict[str, list]:
    """The ABI of every shipped contract, as ape compiled it."""
    types = json.loads(build.read_text())["contractTypes"]
    return {name: types[name]["abi"] for name in CONTRACTS}


def render(abi: list) -> str:
    """Canonical text of an ABI file."""
    return json.dumps(abi, indent=1, sort_keys=True) + "\n"


def main() -> int:
    """Write the files; print what changed."""
    for name, abi in build_abis().items():
        path = OUT / f"{name}.json"
        text = render(abi)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
