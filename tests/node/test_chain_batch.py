"""The chain worker's batched path on a real Anvil and Redis: one simulation batch and one send
batch for an engine batch's results; a job that no longer applies is skipped with the
contract's reason and nothing is sent for it; a redelivered task sends nothing again."""

from __future__ import annotations

import logging

import pytest
import redis
from verinfer.digest import FinishReason, pack_tokens, result_digest
from verinfer.jobs import JobRecord, JobStatus
from verinfer.node.contracts import Protocol, connect
from verinfer.node.devchain import transact
from verinfer.node.localnet import CLIENT_A, NODE_A, NODE_B, Net
from verinfer.node.metrics import Metrics
from verinfer.node.roles import ChainRole
from verinfer.node.sender import TxSender
from verinfer.node.store import Store

NS = "verinfer:test-batch:node-a"


def _output(record: JobRecord, tokens: tuple[int, ...]) -> tuple[dict, bytes]:
    finish = FinishReason.LENGTH
    digest = result_digest(
        record.job_id, record.model_id, record.input, record.params, tokens, finish
    )
    out = {
        "packed": pack_tokens(tokens).hex(),
        "n": len(tokens),
        "finish": int(finish),
        "digest": digest.hex(),
    }
    return out, digest


def test_batch_of_claim_and_publish__one_rejected_with_reason__rest_sent_once(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(net.redis_url)
    store, metrics = Store(client, NS), Metrics(client, NS)
    protocol = Protocol(connect(net.rpc_url), net.dev.market.address, net.dev.court.address)
    sender = TxSender(protocol.w3, net.keys[NODE_A], metrics)
    role = ChainRole(protocol, sender, store, metrics)
    jobs = [net.submit(CLIENT_A, f"batch {i}", max_tokens=3, seed=i) for i in range(3)]
    digests = {}
    for job_id in jobs:
        (sub,) = net.events("JobSubmitted", job_id=job_id)
        record = JobRecord.from_submitted(sub["args"])
        store.put_job(record)
        store.inflight_add(job_id)
        out, digests[job_id] = _output(record, (3, 4, job_id % 7))
        store.put_output(job_id, out)
    taken = jobs[2]  # another node claims this one first
    transact(
        net.w3,
        net.dev.market.functions.claim(taken, store.get_job(taken).as_struct()),  # type: ignore[union-attr]
        net.addr(NODE_B),
    )
    items = [["claim_and_publish", j, f"JobSubmitted:{j}:k:0"] for j in jobs]

    with caplog.at_level(logging.INFO, logger="verinfer.node"):
        hashes = role.do_batch(items)

    assert hashes[0] is not None and hashes[1] is not None and hashes[2] is None
    for job_id in jobs[:2]:
        (ev,) = net.events("ResultPublished", job_id=job_id)
        assert ev["args"]["node"] == net.addr(NODE_A)
        assert ev["args"]["result_digest"] == digests[job_id]
        assert net.status(job_id) == JobStatus.PUBLISHED
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skip")]
    assert skips == [f"skip action=claim_and_publish args=[{taken}] reason=market: job not open"]
    assert net.events("ResultPublished", job_id=taken) == []
    assert net.status(taken) == JobStatus.CLAIMED
    assert [store.is_done(f"claim_and_publish:{j}:JobSubmitted:{j}:k:0") for j in jobs] == [
        True,
        True,
        False,
    ]
    assert store.r.sismember(store.key("inflight"), taken) == 0  # released: not ours to serve
    assert metrics.get("tx", action="claim_and_publish", outcome="sent") == 2
    assert metrics.get("tx", action="claim_and_publish", outcome="rejected") == 1

    sender.track_once()  # receipts of both, fetched in one batch
    assert sender.pending_count() == 0
    assert metrics.get("tx", action="claim_and_publish", outcome="mined") == 2
    assert metrics.get("gas_wei") > 0

    assert role.do_batch(items[:2]) == [None, None]  # a redelivered task sends nothing again
    assert metrics.get("tx", action="claim_and_publish", outcome="sent") == 2
    assert len(net.events("ResultPublished", job_id=jobs[0])) == 1


def _role(net: Net, ns: str, stuck_after_s: float = 15.0) -> tuple[ChainRole, Store, Metrics]:
    client = redis.Redis.from_url(net.redis_url)
    store, metrics = Store(client, ns), Metrics(client, ns)
    protocol = Protocol(connect(net.rpc_url), net.dev.market.address, net.dev.court.address)
    sender = TxSender(protocol.w3, net.keys[NODE_A], metrics, stuck_after_s=stuck_after_s)
    return ChainRole(protocol, sender, store, metrics), store, metrics


def _ready(net: Net, store: Store, job_id: int) -> bytes:
    """Store the job and an output for it as the inference worker would; returns the digest."""
    (sub,) = net.events("JobSubmitted", job_id=job_id)
    record = JobRecord.from_submitted(sub["args"])
    store.put_job(record)
    store.inflight_add(job_id)
    out, digest = _output(record, (5, 6, job_id % 7))
    store.put_output(job_id, out)
    return digest


def test_batch_of_results__one_publish_many_transaction__claims_open_publishes_claimed(
    net: Net,
) -> None:
    jobs = [net.submit(CLIENT_A, f"many {i}", max_tokens=3, seed=i) for i in range(3)]
    claimed = jobs[2]  # this node claimed it already (before its sender starts): a plain publish
    (sub,) = net.events("JobSubmitted", job_id=claimed)
    receipt = transact(
        net.w3,
        net.dev.market.functions.claim(claimed, JobRecord.from_submitted(sub["args"]).as_struct()),
        net.addr(NODE_A),
    )
    role, store, metrics = _role(net, NS + ":many")
    digests = {j: _ready(net, store, j) for j in jobs}
    record = store.get_job(claimed)
    assert record is not None
    (ev,) = net.dev.market.events.JobClaimed().process_receipt(receipt)
    record.apply_claimed(ev["args"])
    store.put_job(record)
    items = [["claim_and_publish", j, f"JobSubmitted:{j}:k:0"] for j in jobs[:2]]
    items.append(["publish", claimed, f"JobClaimed:{claimed}:k:0"])

    hashes = role.do_batch(items)

    assert hashes[0] is not None and hashes == [hashes[0]] * 3  # one transaction for all three
    mined = net.w3.eth.wait_for_transaction_receipt(hashes[0], timeout=60, poll_latency=0.1)
    assert mined["status"] == 1, mined
    for job_id in jobs:
        (pub,) = net.events("ResultPublished", job_id=job_id)
        assert pub["args"]["node"] == net.addr(NODE_A)
        assert pub["args"]["result_digest"] == digests[job_id]
        assert pub["transactionHash"] == hashes[0]
        assert net.status(job_id) == JobStatus.PUBLISHED
    assert [e["transactionHash"] for j in jobs[:2] for e in net.events("JobClaimed", job_id=j)] == [
        hashes[0]
    ] * 2
    assert all(store.is_done(f"{a}:{j}:{k}") for a, j, k in items)
    assert metrics.get("tx", action="publish_many", outcome="sent") == 1
    assert metrics.get("tx", action="claim_and_publish", outcome="sent") == 0
    role.sender.track_once()
    assert metrics.get("tx", action="publish_many", outcome="mined") == 1


@pytest.mark.parametrize("hole", [False, True], ids=["dropped-at-its-nonce", "queue-hole-below"])
def test_lost_publish_many__one_job_taken_meanwhile__the_rest_one_by_one(
    net: Net, caplog: pytest.LogCaptureFixture, hole: bool
) -> None:
    """The batch is lost and one of its jobs taken meanwhile, so it no longer applies as a
    whole: dropped at its own nonce, a no-op fills that nonce; with a hole below it (the
    queue is renumbered from the chain's nonce), nothing fills it. Either way the other
    calls go out one by one."""
    role, store, metrics = _role(net, f"{NS}:lost-{hole}", stuck_after_s=0.0)
    jobs = [net.submit(CLIENT_A, f"lost {hole} {i}", max_tokens=3, seed=i) for i in range(3)]
    digests = {j: _ready(net, store, j) for j in jobs}
    me = net.addr(NODE_A)
    first_nonce = net.w3.eth.get_transaction_count(me)
    items = [["claim_and_publish", j, f"JobSubmitted:{j}:k:0"] for j in jobs]
    net.w3.provider.make_request("evm_setAutomine", [False])
    try:
        if hole:
            role.sender._nonce += 1  # as if the transaction at first_nonce was lost
        (batch_hash, *_) = role.do_batch(items)
        assert batch_hash is not None
        # anvil_dropTransaction does not reach a transaction queued behind a nonce gap
        drop = (
            ("anvil_dropAllTransactions", [])
            if hole
            else ("anvil_dropTransaction", ["0x" + batch_hash.hex()])
        )
        dropped = net.w3.provider.make_request(*drop)
        assert "error" not in dropped, dropped
        taken = jobs[1]  # another node claims one job while ours is gone
        net.dev.market.functions.claim(taken, store.get_job(taken).as_struct()).transact(  # type: ignore[union-attr]
            {"from": net.addr(NODE_B)}
        )
        net.w3.provider.make_request("evm_mine", [])
        assert net.status(taken) == JobStatus.CLAIMED

        with caplog.at_level(logging.INFO, logger="verinfer.node"):
            role.sender.track_once()
        net.w3.provider.make_request("evm_mine", [])
    finally:
        net.w3.provider.make_request("evm_setAutomine", [True])

    messages = [r.getMessage() for r in caplog.records]
    batch_nonce = first_nonce + int(hole)
    if hole:
        assert f"tx queue broken at nonce={first_nonce} (pending 1): sending again" in messages
    assert any(
        m.startswith(f"tx dropped and no longer applies action=publish_many nonce={batch_nonce}")
        for m in messages
    ), messages
    assert "skip action=claim_and_publish reason=market: job not open (dropped batch)" in messages
    for job_id in (jobs[0], jobs[2]):
        (pub,) = net.events("ResultPublished", job_id=job_id)
        assert pub["args"]["node"] == me and pub["args"]["result_digest"] == digests[job_id]
    assert net.events("ResultPublished", job_id=taken) == []
    (claim,) = net.events("JobClaimed", job_id=taken)
    assert claim["args"]["node"] == net.addr(NODE_B)
    # gap-free nonces from the chain's: [the no-op in the batch's place,] the two single sends
    sent = [first_nonce, first_nonce + 1] + ([] if hole else [first_nonce + 2])
    assert net.w3.eth.get_transaction_count(me) == sent[-1] + 1
    txs = [net.w3.eth.get_transaction(h) for h in net.w3.eth.get_block("latest")["transactions"]]
    mine = sorted((t for t in txs if t["from"] == me), key=lambda t: t["nonce"])
    assert [t["nonce"] for t in mine] == sent
    noops = [t["nonce"] for t in mine if t["to"] == me and t["input"] in (b"", "0x")]
    assert noops == ([] if hole else [first_nonce])  # the no-op fills the batch's nonce
    assert metrics.get("tx", action="publish_many", outcome="abandoned") == 1
    assert metrics.get("tx", action="claim_and_publish", outcome="sent") == 2
