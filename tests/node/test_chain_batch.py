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
