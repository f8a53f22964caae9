"""Deploy verinfer: `ape run deploy --network <ecosystem:network:provider>` (or `verinfer
deploy --network ...`, the same steps).

On a local network the deployer is ape's first test account and a fresh TestToken is
deployed unless VERINFER_TOKEN names an existing ERC20. Elsewhere the deployer is the
ape keystore account named by VERINFER_DEPLOYER and VERINFER_TOKEN is required.
VERINFER_TIMELOCK_DELAY (seconds, default 172800 = 2 days) is how long every owner action
waits behind the Timelock that owns market and court; 0 keeps the deployer as owner.
The last stdout line is one JSON object with the addresses.
"""

from __future__ import annotations

import json
import os

from ape.logging import LogLevel, logger
from verinfer.chain_errors import ClientError
from verinfer.cli_deploy import deploy_on_connected
from verinfer.deploy import DEFAULT_TIMELOCK_DELAY


def main() -> None:
    """Deploy, wire and print the addresses as JSON on the last line."""
    delay = int(os.environ.get("VERINFER_TIMELOCK_DELAY") or DEFAULT_TIMELOCK_DELAY)
    try:
        result = deploy_on_connected(
            os.environ.get("VERINFER_DEPLOYER") or None,
            os.environ.get("VERINFER_TOKEN") or None,
            delay,
        )
    except ClientError as exc:
        raise SystemExit(str(exc)) from None
    # ape logs "Stopping 'anvil' process." to stdout at exit; keep the JSON line last.
    logger.set_level(LogLevel.ERROR)
    print(json.dumps(result), flush=True)
