"""A real node behind a misbehaving JSON-RPC endpoint: HTTP 500s, JSON-RPC errors, connections
closed without an answer, requests that hang; first for every request (watcher, keeper, sender
alike), then only for the sender's simulations and sends. The node logs one line per failure,
retries, keeps serving, and once the endpoint recovers every job is finalized with exact
balances; no job is skipped for the endpoint's trouble."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import pytest
from verinfer.jobs import JobStatus
from verinfer.node.localnet import CLIENT_A, CLIENT_B, NODE_A, PRICE, Net, wait_for

from tests.node.rpc_proxy import FAULTS, RpcProxy

pytestmark = pytest.mark.timeout(420)
UNIT = 10**18
SENDER_METHODS = {"eth_estimateGas", "eth_sendRawTransaction"}
# what each fault looks like in the node's log line
SIGNS = {
    "http500": "HTTPError: 500",
    "rpc_error": "internal error (test proxy)",
    "close": "ConnectionError",
    "hang": "ReadTimeout",
}


@pytest.fixture
def proxy(net: Net) -> Iterator[RpcProxy]:
    p = RpcProxy(net.rpc_url).start()
    try:
        yield p
    finally:
        p.close()


def _rpc_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "rpc error" in ln or "rpc unavailable" in ln]


def test_rpc_endpoint_errors__one_line_each__retried__every_job_finalized(
    net: Net, proxy: RpcProxy
) -> None:
    market = net.dev.market.functions
    clients = (CLIENT_A, CLIENT_B)
    before = {c: market.balance_of(net.addr(c)).call() for c in clients}
    node = net.node(NODE_A, "node-a", rpc_url=proxy.url, audits="false", rpc_timeout_s="2")
    node.start()
    jobs: list[int] = []

    def submit(tag: str, n: int = 2) -> None:  # clients talk to Anvil directly
        for i in range(n):
            jobs.append(net.submit(clients[i % 2], f"{tag} {i}", max_tokens=6, seed=len(jobs)))

    try:
        node.wait_ready()
        submit("warm up")
        wait_for(lambda: all(net.status(j) == JobStatus.PUBLISHED for j in jobs), 120, "warm up")
        for mode in FAULTS:  # every request fails: watcher, keeper and sender meet it
            with proxy.faulty(mode, seconds=6):
                submit(f"during {mode}")
            wait_for(
                lambda: all(net.status(j) == JobStatus.PUBLISHED for j in jobs), 120, f"{mode}"
            )
        for mode in ("rpc_error", "close"):  # only the sender's simulations and sends fail
            with proxy.faulty(mode, seconds=6, methods=SENDER_METHODS):
                submit(f"sender {mode}")
                wait_for(lambda m=mode: proxy.faults[m] >= 3, 30, f"the sender meeting {mode}")
            wait_for(
                lambda: all(net.status(j) == JobStatus.PUBLISHED for j in jobs), 120, "published"
            )
        net.dev.mine(seconds=120)  # the challenge window (60 s) passes
        wait_for(lambda: all(net.status(j) == JobStatus.FINALIZED for j in jobs), 90, "finalized")
        wait_for(lambda: market.claimable(net.addr(NODE_A)).call() == 0, 90, "withdrawal")
    finally:
        assert node.stop() == 0, node.log()[-3000:]

    log = node.log()
    for mode in FAULTS:
        assert proxy.faults[mode] > 0, (mode, proxy.faults)
    assert proxy.faults["rpc_error"] >= 3 and proxy.faults["close"] >= 3
    lines = _rpc_lines(log)
    for mode, sign in SIGNS.items():
        assert any(sign in ln for ln in lines), (mode, lines)
    assert any("verinfer.node.sender" in ln for ln in lines), lines  # the sender met them too
    assert any("watcher: rpc recovered" in ln for ln in log.splitlines())
    assert "Traceback" not in log
    assert not re.search(r"^\s+File \"", log, re.M)  # no stack frames either
    assert "skip " not in log  # no job dropped for the endpoint's trouble
    # one line per failure, not a storm: at most a few per second of faults
    assert len(lines) <= 4 * (len(FAULTS) + 2) * 6, len(lines)

    published = Counter(e["args"]["job_id"] for e in net.events("ResultPublished"))
    claimed = Counter(e["args"]["job_id"] for e in net.events("JobClaimed"))
    assert all(published[j] == 1 and claimed[j] == 1 for j in jobs)
    finalized = {e["args"]["job_id"]: e["args"] for e in net.events("JobFinalized")}
    assert set(jobs) <= set(finalized)
    refunds: Counter[str] = Counter()
    spent: Counter[str] = Counter()
    paid = 0
    for j in jobs:
        record, fin = net.record(j), finalized[j]
        assert record.result_digest == record.expected_digest()
        price = min(record.output_tokens * PRICE, record.max_payment)
        assert fin["payment"] + fin["fee"] + fin["audit_share"] == price
        assert fin["refund"] == record.max_payment - price
        assert fin["node"] == net.addr(NODE_A)
        refunds[record.client] += fin["refund"]
        spent[record.client] += record.max_payment
        paid += fin["payment"]
    for c in clients:
        addr = net.addr(c)
        assert market.balance_of(addr).call() == before[c] - spent[addr] + refunds[addr]
    withdrawn = sum(e["args"]["amount"] for e in net.events("Withdrawn", account=net.addr(NODE_A)))
    assert net.dev.token.functions.balanceOf(net.addr(NODE_A)).call() == withdrawn == paid > 0
