"""End to end: 20 jobs from 3 clients served by 3 real nodes (Celery workers, Redis, Anvil,
the project's small model); the audits the randomness selects are started, drawn and verified
by the nodes' keepers; every job finalized; balances exactly as the protocol says."""

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
    OWNER,
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


def _audits_drawn(net: Net, audited: list[int]) -> bool:
    """Whether every audit in ``audited`` has its verifier; while one still waits for a block
    after its request, mine one (a real chain makes them by itself)."""
    court = net.dev.court.functions
    if any(court.dispute_info(j).call()[1] == 7 for j in audited):  # DRAWING
        net.dev.mine()
        return False
    return True


def test_twenty_jobs__three_clients_three_nodes__audited__all_finalized_and_paid_exactly(
    net: Net,
) -> None:
    market, token, court = (
        net.dev.market.functions,
        net.dev.token.functions,
        net.dev.court.functions,
    )
    # the fixture's cheater key runs an honest node here (a third node: an audit needs a
    # verifier that is neither the job's node nor the keeper that starts it); half the jobs
    # are audited, so that some surely are
    transact(net.w3, court.set_param(10, 5_000), net.addr(OWNER))
    node_a = net.node(NODE_A, "node-a").start()
    node_b = net.node(NODE_B, "node-b").start()
    node_c = net.node(CHEATER, "node-c").start()
    nodes = (node_a, node_b, node_c)
    try:
        for n in nodes:  # all compete for every job (not the first one up for all)
            n.wait_ready()
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
        audited = [
            j for j in jobs if court.is_audit_selected(j, net.record(j).published_block).call()
        ]
        assert audited  # P(none of 20 at 50 %) ~ 1e-6
        wait_for(
            lambda: all(net.status(j) == JobStatus.VERIFYING for j in audited),
            60,
            "the keepers' audits",
        )
        # each audit requested a draw; its keeper draws it once a later block exists
        wait_for(lambda: _audits_drawn(net, audited), 60, "the audits' draws", every=1.0)
        wait_for(
            lambda: all(court.dispute_info(j).call()[1] >= 3 for j in audited),
            90,
            "audit verdicts",
        )
        net.dev.mine(seconds=4_000)  # challenge and appeal windows pass
        wait_for(lambda: all(net.status(j) == JobStatus.FINALIZED for j in jobs), 60, "finalized")
        wait_for(
            lambda: all(
                market.claimable(net.addr(n)).call() == 0 for n in (NODE_A, NODE_B, CHEATER)
            ),
            60,
            "withdrawals",
        )
    finally:
        for n in nodes:
            assert n.stop() == 0, n.log()[-3000:]

    published = Counter(e["args"]["job_id"] for e in net.events("ResultPublished"))
    assert all(published[j] == 1 for j in jobs)
    claimers = {e["args"]["job_id"]: e["args"]["node"] for e in net.events("JobClaimed")}
    node_addrs = {net.addr(NODE_A), net.addr(NODE_B), net.addr(CHEATER)}
    assert set(claimers.values()) <= node_addrs
    for j in audited:  # started by another node's keeper, drawn by it, verified by the third
        (started,) = net.events("AuditStarted", "court", job_id=j)
        (assigned,) = net.events("VerifierAssigned", "court", job_id=j)
        (verdict,) = net.events("VerdictPosted", "court", job_id=j)
        keeper, verifier = started["args"]["keeper"], assigned["args"]["verifier"]
        assert {keeper, verifier, claimers[j]} == node_addrs
        drawer = net.w3.eth.get_transaction(assigned["transactionHash"])["from"]
        assert drawer in node_addrs and verdict["args"]["valid"] is True
        assert (
            assigned["blockNumber"]
            > net.events("DrawRequested", "court", job_id=j)[0]["blockNumber"]
        )
    for i, job_id in enumerate(jobs):
        if i % 5 in preferred:
            assert claimers[job_id] == preferred[i % 5]
    runs = [a for n in nodes for ln in n.log().splitlines() if (a := _batch_jobs(ln))]
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
    for node in (NODE_A, NODE_B, CHEATER):
        addr = net.addr(node)
        credited = sum(e["args"]["amount"] for e in net.events("Credited", account=addr))
        withdrawn = sum(e["args"]["amount"] for e in net.events("Withdrawn", account=addr))
        # finalize credits the payment directly (JobFinalized); court payouts log Credited
        assert token.balanceOf(addr).call() == withdrawn == payments[addr] + credited
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
    assert "Traceback" not in "".join(n.log() for n in nodes)
