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

from verinfer.jobs import JobRecord


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

    def job_logs(
        self, job_id: int, from_block: int = 0, to_block: int | str = "latest"
    ) -> list[DecodedLog]:
        """Every market log of ``job_id`` on the canonical chain (as the endpoint has it now),
        in chain order (one ``eth_getLogs``: the job id is the first indexed topic)."""
        query: Any = {
            "fromBlock": from_block,
            "toBlock": to_block,
            "address": self.market.address,
            "topics": [None, "0x" + job_id.to_bytes(32, "big").hex()],
        }
        raw = self.w3.eth.get_logs(query)
        decoded = [self.decode(entry) for entry in raw]
        return [d for d in decoded if d is not None and d.args.get("job_id") == job_id]

    def rebuild_job(
        self, job_id: int, from_block: int = 0, to_block: int | str = "latest"
    ) -> JobRecord | None:
        """The job's record rebuilt from the canonical chain's logs (``JobSubmitted``, then
        every ``JobClaimed`` / ``ResultPublished``), as the market has its fields; None when
        the chain has no ``JobSubmitted`` of it (a reorg took it away)."""
        record: JobRecord | None = None
        for item in self.job_logs(job_id, from_block, to_block):
            if item.event == "JobSubmitted":
                record = JobRecord.from_submitted(item.args)
            elif record is not None and item.event == "JobClaimed":
                record.apply_claimed(item.args)
            elif record is not None and item.event == "ResultPublished":
                record.apply_published(item.args)
        return record

    def matches_chain(self, record: JobRecord) -> bool:
        """Whether ``record``'s fields are the ones the market stores now (``job_hash``)."""
        stored = bytes(self.market.functions.job_hash(record.job_id).call())
        return stored == record.struct_hash()

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


def network_facts(w3: Web3) -> tuple[int, bool]:
    """``(chain id, whether the endpoint knows the "safe" block tag)``, for the per-network
    defaults (``NodeSettings.resolve_network``)."""
    chain_id = int(w3.eth.chain_id)
    try:
        w3.eth.get_block("safe")
    except Exception:  # an endpoint without the tag answers with an error
        return chain_id, False
    return chain_id, True
