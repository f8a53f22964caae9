"""End to end: 20 jobs from 3 clients served by 2 real nodes (Celery workers, Redis, Anvil,
the project's small model); every job finalized; balances exactly as the protocol says."""

from __future__ import annotations

from collections import Counter

import pytest
from verinfer.jobs import JobStatus
from verinfer.node.devchain import ZERO, transact
from verinfer.node.localnet import (
    CHEATER,
    CLIENT_A,
    CLIENT_B,
    CLIENT_C,
    NODE_A,
    NODE_B,
    PRICE,
    Net,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)
UNIT = 10**18


def _batch_jobs(line: str) -> int:
    """Jobs of an ``engine batch jobs=N`` log line (0 for other lines)."""
    if "engine batch jobs=" not in line:
        return 0
    return int(line.split("engine batch jobs=")[1].split()[0])


def test_twenty_jobs__three_clients_two_nodes__all_finalized_and_paid_exactly(net: Net) -> None:
    market, token = net.dev.market.functions, net.dev.token.functions
    # the fixture's staked cheater runs no node here: if the court drew it as an audit's
    # verifier, that audit would wait out the whole accept window
    transact(net.w3, market.stop_serving(net.model_id), net.addr(CHEATER))
    assert net.addr(CHEATER) not in market.model_nodes(net.model_id).call()
    node_a = net.node(NODE_A, "node-a").start()
    node_b = net.node(NODE_B, "node-b").start()
    try:
        node_a.wait_ready()  # both compete for every job (not the first one up for all)
        node_b.wait_ready()
        clients = [CLIENT_A, CLIENT_B, CLIENT_C]
        # every 5th job targets node A, the next node B (exclusive claim window: run-first,
        # claim_and_publish); the others are open races between the two nodes
        preferred = {0: net.addr(NODE_A), 1: net.addr(NODE_B)}
        jobs = [
            net.submit(
                clients[i % 3],
                f"job {i}: tell me about open models",
                seed=i,
                preferred=preferred.get(i % 5, ZERO),
            )
            for i in range(20)
        ]
        wait_for(lambda: all(net.status(j) >= JobStatus.PUBLISHED for j in jobs), 180, "20 results")
        net.dev.mine(blocks=4)  # audit seeds exist; the keepers start the selected audits
        wait_for(
            lambda: all(net.status(j) in (JobStatus.PUBLISHED, JobStatus.VERIFYING) for j in jobs),
            30,
            "published",
        )
        net.dev.mine(seconds=10)
        audited = [j for j in jobs if net.status(j) == JobStatus.VERIFYING]
        wait_for(
            lambda: all(net.dev.court.functions.dispute_info(j).call()[1] >= 3 for j in audited),
            60,
            "audit verdicts",
        )
        net.dev.mine(seconds=4_000)  # challenge and appeal windows pass
        wait_for(lambda: all(net.status(j) == JobStatus.FINALIZED for j in jobs), 60, "finalized")
        wait_for(
            lambda: (
                market.claimable(net.addr(NODE_A)).call() == 0
                and market.claimable(net.addr(NODE_B)).call() == 0
            ),
            60,
            "withdrawals",
        )
    finally:
        assert node_a.stop() == 0, node_a.log()[-3000:]
        assert node_b.stop() == 0, node_b.log()[-3000:]

    published = Counter(e["args"]["job_id"] for e in net.events("ResultPublished"))
    assert all(published[j] == 1 for j in jobs)
    claimers = {e["args"]["job_id"]: e["args"]["node"] for e in net.events("JobClaimed")}
    assert set(claimers.values()) <= {net.addr(NODE_A), net.addr(NODE_B)}
    for i, job_id in enumerate(jobs):
        if i % 5 in preferred:
            assert claimers[job_id] == preferred[i % 5]
    runs = [a for ln in node_a.log().splitlines() if (a := _batch_jobs(ln))]
    runs += [b for ln in node_b.log().splitlines() if (b := _batch_jobs(ln))]
    assert sum(runs) == 20  # every job ran once (not again on its own JobClaimed log)
    finalized = {e["args"]["job_id"]: e["args"] for e in net.events("JobFinalized")}
    assert set(finalized) == set(jobs)
    refunds: Counter[str] = Counter()
    payments: Counter[str] = Counter()
    for j in jobs:
        record, fin = net.record(j), finalized[j]
        assert record.result_digest == record.expected_digest()
        price = min(record.output_tokens * PRICE, record.max_payment)
        assert fin["fee"] == price * 100 // 10_000
        assert fin["audit_share"] == price * 200 // 10_000
        assert fin["payment"] == price - fin["fee"] - fin["audit_share"]
        assert fin["refund"] == record.max_payment - price
        refunds[record.client] += fin["refund"]
        payments[fin["node"]] += fin["payment"]
    for client in (CLIENT_A, CLIENT_B, CLIENT_C):
        addr = net.addr(client)
        spent = sum(net.record(j).max_payment for j in jobs if net.record(j).client == addr)
        assert market.balance_of(addr).call() == 1_000 * UNIT - spent + refunds[addr]
    for node in (NODE_A, NODE_B):
        addr = net.addr(node)
        credited = sum(e["args"]["amount"] for e in net.events("Credited", account=addr))
        withdrawn = sum(e["args"]["amount"] for e in net.events("Withdrawn", account=addr))
        # finalize credits the payment directly (JobFinalized); court payouts log Credited
        assert token.balanceOf(addr).call() == withdrawn == payments[addr] + credited > 0
        assert market.node_info(addr).call()[3] == 0  # no collateral left locked
    accounts = [net.addr(i) for i in range(10)]
    held = token.balanceOf(net.dev.market.address).call()
    assert held == (
        sum(market.balance_of(a).call() for a in accounts)
        + market.total_stake().call()
        + market.court_funds().call()
        + sum(market.claimable(a).call() for a in accounts)
        + market.protocol_fees().call()
        + market.audit_pool().call()
    )
    assert "Traceback" not in node_a.log() + node_b.log()
