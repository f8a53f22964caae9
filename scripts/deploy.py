"""Deploy verinfer: `ape run deploy --network <ecosystem:network:provider>`.

On a local network the deployer is ape's first test account and a fresh TestToken is
deployed unless VERINFER_TOKEN names an existing ERC20. Elsewhere the deployer is the
ape keystore account named by VERINFER_DEPLOYER and VERINFER_TOKEN is required.
The last stdout line is one JSON object with the addresses.
"""

from __future__ import annotations

import json
import os

from ape import accounts, chain
from ape.logging import LogLevel, logger
from verinfer.deploy import deploy_all


def main() -> None:
    """Deploy, wire and print the addresses as JSON on the last line."""
    network = chain.provider.network
    token = os.environ.get("VERINFER_TOKEN") or None
    if network.name == "local":
        deployer = accounts.test_accounts[0]
    else:
        alias = os.environ.get("VERINFER_DEPLOYER")
        if not alias:
            raise SystemExit("set VERINFER_DEPLOYER to an ape account alias on live networks")
        if token is None:
            raise SystemExit("set VERINFER_TOKEN to the payment token on live networks")
        deployer = accounts.load(alias)
    addresses = deploy_all(deployer, token=token)
    result = {
        **addresses,
        "chain_id": chain.chain_id,
        "network": f"{network.choice}:{chain.provider.name}",
    }
    # ape logs "Stopping 'anvil' process." to stdout at exit; keep the JSON line last.
    logger.set_level(LogLevel.ERROR)
    print(json.dumps(result), flush=True)
