"""web3 handles on the protocol contracts from the ABIs shipped in the package (no ape)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from eth_utils import event_abi_to_log_topic
from web3 import Web3
from web3._utils.events import get_event_data
from web3.contract import Contract
from web3.providers import HTTPProvider


@cache
def load_abi(name: str) -> list[dict[str, Any]]:
    """The ABI of ``Market``, ``Court`` or ``TestToken`` (workers/verinfer/abi/<name>.json)."""
    text = resources.files("verinfer.abi").joinpath(f"{name}.json").read_text()
    return list(json.loads(text))


def connect(rpc_url: str, timeout_s: float = 10.0, quiet_retries: bool = True) -> Web3:
    """A web3 client on ``rpc_url`` (HTTP), with a request timeout.

    ``quiet_retries=False`` turns off web3's own silent retries (5 tries of a failed request,
    each up to ``timeout_s``): the node retries itself, with one log line per failure.
    """
    if quiet_retries:
        return Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
    provider = HTTPProvider(
        rpc_url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
    )
    return Web3(provider)


@dataclass(frozen=True)
class DecodedLog:
    """A protocol log: contract name, event name, decoded args and where it sits."""

    contract: str
    event: str
    args: Any
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int


class Protocol:
    """Market and Court contracts on one chain, with a decoder for their logs."""

    def __init__(self, w3: Web3, market: str, court: str) -> None:
        self.w3 = w3
        self.market: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(market), abi=load_abi("Market")
        )
        self.court: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(court), abi=load_abi("Court")
        )
        self._events: dict[tuple[str, bytes], tuple[str, dict[str, Any]]] = {}
        for name, contract in (("market", self.market), ("court", self.court)):
            for item in contract.abi:
                if item["type"] == "event":
                    topic = bytes(event_abi_to_log_topic(item))  # type: ignore[arg-type]
                    self._events[(contract.address, topic)] = (name, dict(item))

    def dispute(self, job_id: int) -> dict[str, Any]:
        """``Court.dispute_info(job_id)`` as a dict by field name (phase 0: no dispute)."""
        abi: Any = next(a for a in self.court.abi if a.get("name") == "dispute_info")
        names = [c["name"] for c in abi["outputs"][0]["components"]]
        raw = self.court.functions.dispute_info(job_id).call()
        return dict(zip(names, raw, strict=True))

    @property
    def addresses(self) -> list[str]:
        """Addresses whose logs the watcher reads."""
        return [self.market.address, self.court.address]

    def decode(self, log: Any) -> DecodedLog | None:
        """Decode a raw log of the market or the court; None for an unknown one."""
        if not log["topics"]:
            return None
        key = (Web3.to_checksum_address(log["address"]), bytes(log["topics"][0]))
        found = self._events.get(key)
        if found is None:
            return None
        contract, abi = found
        data = get_event_data(self.w3.codec, abi, log)  # type: ignore[arg-type]
        return DecodedLog(
            contract=contract,
            event=str(data["event"]),
            args=data["args"],
            block_number=int(log["blockNumber"]),
            block_hash=bytes(log["blockHash"]),
            tx_hash=bytes(log["transactionHash"]),
            log_index=int(log["logIndex"]),
        )
