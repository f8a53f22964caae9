"""The chain worker's `draw` action on a real Anvil and Redis, with the node's real sender:
with the request's block still the head, the draw is simulated against the pending block
(the next one, where the seed block's hash exists) and sent at once, mined in the block after
the request; a draw someone else made already is skipped quietly (no transaction, no skip
line). (A simulation that still says "draw not ready" puts the draw back on the keeper's
queue for the next block: `ChainRole.do_draw`.)"""

from __future__ import annotations

import logging

import pytest
import redis
from verinfer.digest import FinishReason, result_digest
from verinfer.digest import pack_tokens as pack
from verinfer.node.contracts import Protocol
from verinfer.node.devchain import transact
from verinfer.node.localnet import CLIENT_A, CLIENT_B, NODE_A, NODE_B, Net
from verinfer.node.metrics import Metrics
from verinfer.node.roles import ChainRole
from verinfer.node.sender import TxSender
from verinfer.node.store import Store

NS = "verinfer:test-draw:node-b"


def _published_and_disputed(net: Net) -> int:
    """A job of node A published (the test plays the node) and disputed by client B."""
    market, court = net.dev.market.functions, net.dev.court.functions
    job = net.submit(CLIENT_A, "draw me a verifier", preferred=net.addr(NODE_A))
    record = net.record(job)
    transact(net.w3, market.claim(job, record.as_struct()), net.addr(NODE_A))
    record = net.record(job)
    tokens = (5, 6, 7)
    finish = FinishReason.LENGTH
    digest = result_digest(job, record.model_id, record.input, record.params, tokens, finish)
    publish = market.publish(job, record.as_struct(), pack(tokens), 3, int(finish), digest)
    transact(net.w3, publish, net.addr(NODE_A))
    transact(net.w3, court.dispute(job, net.record(job).as_struct()), net.addr(CLIENT_B))
    return job


def test_draw_action__draws_in_the_block_after_the_request__then_skips_quietly(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    court = net.dev.court.functions
    job = _published_and_disputed(net)
    assert court.dispute_info(job).call()[1] == 7  # DRAWING
    client = redis.Redis.from_url(net.redis_url)
    store, metrics = Store(client, NS), Metrics(client, NS)
    protocol = Protocol(net.w3, net.dev.market.address, net.dev.court.address)
    sender = TxSender(net.w3, net.keys[NODE_B], metrics, stuck_after_s=30)

    role = ChainRole(protocol, sender, store, metrics)
    # the head is still the request's block: the draw is simulated against the pending block,
    # the next one, where the seed block's hash exists ("court: draw not ready" is for a
    # transaction in the request's own block), so it is sent at once
    (requested,) = net.events("DrawRequested", "court", job_id=job)
    assert requested["args"]["seed_block"] == net.w3.eth.block_number
    with caplog.at_level(logging.INFO, logger="verinfer"):
        tx = role.run("draw", job)
        assert tx is not None
        receipt = net.w3.eth.wait_for_transaction_receipt(tx, timeout=30)
        assert receipt["status"] == 1
        assert receipt["blockNumber"] == requested["args"]["seed_block"] + 1
        (assigned,) = net.events("VerifierAssigned", "court", job_id=job)
        assert assigned["transactionHash"] == receipt["transactionHash"]
        assert court.dispute_info(job).call()[1] == 1  # ASSIGNED
        nonce = net.w3.eth.get_transaction_count(net.addr(NODE_B))
        assert role.run("draw", job) is None  # drawn already: nothing sent
        assert net.w3.eth.get_transaction_count(net.addr(NODE_B)) == nonce
    assert "skip action=draw" not in caplog.text
    assert store.due_size("draw") == 0
