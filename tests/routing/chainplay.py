"""Drive a real Anvil by hand for the indexer tests: jobs submitted, claimed, published,
finalized, expired and cancelled with exact block times, straight from the dev keys (no node
processes), and the chain's logs recorded to a file and replayed (``RecordedSource``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hexbytes import HexBytes
from verinfer.digest import FinishReason, SamplingParams, pack_tokens, result_digest
from verinfer.indexer import RangeRefused
from verinfer.inputs import encode_text_input
from verinfer.jobs import JobRecord
from verinfer.node.devchain import ZERO
from verinfer.node.localnet import PRICE, Net


def transact(w3: Any, fn: Any, sender: str) -> Any:
    """Send ``fn`` with a fixed gas limit (an estimate would run at the latest block's time,
    not the time set for the next block) and wait for a successful receipt."""
    tx_hash = fn.transact({"from": sender, "gas": 2_000_000})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.05)
    assert receipt["status"] == 1, f"transaction failed: {fn.fn_name}"
    return receipt


class Play:
    """Jobs on ``net`` with chain times set block by block (``at``: seconds after ``t0``)."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.w3 = net.w3
        self.m = net.dev.market.functions
        self.t0 = int(self.w3.eth.get_block("latest")["timestamp"]) + 10
        self.records: dict[int, JobRecord] = {}

    def at(self, seconds: int) -> None:
        """The next block's time is ``t0 + seconds``."""
        self.w3.provider.make_request("evm_setNextBlockTimestamp", [self.t0 + seconds])

    def submit(self, client: str, at: int, preferred: str = ZERO, claim_in: int = 60) -> int:
        self.at(at)
        params = SamplingParams(max_tokens=4, temperature_milli=0, seed=0)
        now = self.t0 + at
        fn = self.m.submit(
            self.net.model_id,
            encode_text_input(f"job at {at}"),
            params.encode(),
            4 * PRICE,
            preferred,
            now + claim_in,
            now + claim_in + 60,
        )
        receipt = transact(self.w3, fn, client)
        (ev,) = self.net.dev.market.events.JobSubmitted().process_receipt(receipt)
        record = JobRecord.from_submitted(ev["args"])
        self.records[record.job_id] = record
        return record.job_id

    def claim(self, job_id: int, node: str, at: int) -> None:
        self.at(at)
        record = self.records[job_id]
        receipt = transact(self.w3, self.m.claim(job_id, record.as_struct()), node)
        (ev,) = self.net.dev.market.events.JobClaimed().process_receipt(receipt)
        record.apply_claimed(ev["args"])

    def publish(self, job_id: int, at: int) -> None:
        self.at(at)
        record = self.records[job_id]
        tokens = [5, 6, 7, 8]
        digest = result_digest(
            job_id, record.model_id, record.input, record.params, tokens, FinishReason.LENGTH
        )
        fn = self.m.publish(
            job_id, record.as_struct(), pack_tokens(tokens), 4, FinishReason.LENGTH, digest
        )
        receipt = transact(self.w3, fn, record.node)
        (ev,) = self.net.dev.market.events.ResultPublished().process_receipt(receipt)
        record.apply_published(ev["args"])

    def finalize(self, job_id: int, at: int, keeper: str) -> None:
        self.at(at)
        settlement = self.records[job_id].as_settlement()
        transact(self.w3, self.m.finalize(job_id, settlement), keeper)

    def expire(self, job_id: int, at: int, keeper: str) -> None:
        self.at(at)
        transact(self.w3, self.m.expire(job_id, self.records[job_id].as_struct()), keeper)

    def cancel(self, job_id: int, at: int) -> None:
        self.at(at)
        record = self.records[job_id]
        transact(self.w3, self.m.cancel(job_id, record.as_struct()), record.client)


def _hexed(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, list):
        return [_hexed(v) for v in value]
    return value


def record_chain(w3: Any, addresses: list[str], path: Path) -> None:
    """Write the chain's logs of ``addresses`` and every block's hash and time to ``path``."""
    head = int(w3.eth.block_number)
    logs = [
        {k: _hexed(v) for k, v in dict(entry).items()}
        for entry in w3.eth.get_logs({"fromBlock": 0, "toBlock": head, "address": addresses})
    ]
    blocks = {}
    for n in range(head + 1):
        block = w3.eth.get_block(n)
        blocks[n] = ["0x" + bytes(block["hash"]).hex(), int(block["timestamp"])]
    path.write_text(json.dumps({"head": head, "logs": logs, "blocks": blocks}))


class RecordedSource:
    """A ``LogSource`` replaying a file of ``record_chain``: the chain as it was then.

    ``refuse_over``: refuse any ``eth_getLogs`` over more blocks than that, as hosted
    endpoints do; ``head``: pretend the chain ends there (a chain still growing)."""

    def __init__(self, path: Path, refuse_over: int | None = None) -> None:
        data = json.loads(path.read_text())
        self.logs = [self._web3_form(e) for e in data["logs"]]
        self.block_data = {
            int(n): (bytes.fromhex(h[2:]), t) for n, (h, t) in data["blocks"].items()
        }
        self.tip = int(data["head"])
        self.refuse_over = refuse_over
        self.ranges: list[tuple[int, int]] = []  # every eth_getLogs asked, refused ones too

    @staticmethod
    def _web3_form(entry: dict[str, Any]) -> dict[str, Any]:
        out = dict(entry)
        out["topics"] = [HexBytes(t) for t in entry["topics"]]
        for key in ("data", "blockHash", "transactionHash"):
            out[key] = HexBytes(entry[key])
        return out

    def head(self) -> int:
        return self.tip

    def blocks(self, numbers: Any) -> dict[int, tuple[bytes, int]]:
        return {n: self.block_data[n] for n in numbers if n in self.block_data and n <= self.tip}

    def get_logs(self, first: int, last: int) -> list[Any]:
        self.ranges.append((first, last))
        if self.refuse_over is not None and last - first + 1 > self.refuse_over:
            raise RangeRefused("query exceeds max block range")
        return [e for e in self.logs if first <= e["blockNumber"] <= min(last, self.tip)]

    def fork_at(self, block: int, drop_event: str, topic_of: dict[str, bytes]) -> None:
        """Replace block ``block`` and every later one by other blocks (new hashes) that
        carry the same logs except those of ``drop_event``: a reorg that removes them."""
        topic = topic_of[drop_event]
        self.logs = [
            e
            for e in self.logs
            if not (e["blockNumber"] >= block and bytes(e["topics"][0]) == topic)
        ]
        for n in range(block, self.tip + 1):
            h, t = self.block_data[n]
            new = bytes(reversed(h))
            self.block_data[n] = (new, t)
        for e in self.logs:
            if e["blockNumber"] >= block:
                e["blockHash"] = HexBytes(self.block_data[e["blockNumber"]][0])
