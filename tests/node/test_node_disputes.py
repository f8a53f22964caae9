"""A cheating node (a real `verinfer node run` with the dev/test setting
VERINFER_DEV_CHEAT_WEIGHTS) serves a job, is disputed by a client and slashed through the real
dispute flow, with the verdict computed by a real honest node; bad input is skipped with one log
line; a node killed with SIGKILL mid-job finishes the job after a restart."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from verinfer.digest import result_digest
from verinfer.engines.base import Job
from verinfer.engines.hf import TransformersEngine
from verinfer.jobs import JobStatus
from verinfer.models.loader import load_model
from verinfer.models.tiny import tiny_model_path
from verinfer.node.devchain import transact
from verinfer.node.localnet import (
    CHEAT_SEED,
    CHEATER,
    CLIENT_A,
    CLIENT_B,
    CLIENT_C,
    KEEPER,
    NODE_A,
    NODE_B,
    PRICE,
    UNIT,
    Net,
    wait_for,
)
from web3.logs import DISCARD

pytestmark = pytest.mark.timeout(300)


def _tokens_of(net: Net, job_id: int, seed: int) -> tuple[int, ...]:
    """What the small model built with ``seed`` answers to the job (run here, for checking)."""
    model = load_model(tiny_model_path(seed=seed))
    record = net.record(job_id)
    (out,) = TransformersEngine(model).generate(
        [Job(model.model_id, record.sampling_params, input_data=record.input)]
    )
    return tuple(out.token_ids)


def test_cheater__client_dispute_drawn_by_node_keeper__slashed_on_real_verdict(net: Net) -> None:
    market, court = net.dev.market.functions, net.dev.court.functions
    cheater = net.addr(CHEATER)
    stake_before = market.node_info(cheater).call()[2]
    node_a = net.node(NODE_A, "node-a", audits="false").start()
    node_b = net.node(NODE_B, "node-b", audits="false").start()
    bad_node = net.node(CHEATER, "cheater", cheat=True, audits="false").start()
    try:
        bad = net.submit(CLIENT_B, "", input_bytes=b"\x07not a known format")
        job = net.submit(CLIENT_A, "is this answer honest?", preferred=cheater)
        wait_for(lambda: net.status(job) == JobStatus.PUBLISHED, 120, "the cheater's result")
        record = net.record(job)
        assert record.node == cheater
        # what it published is what the other weights say, under the registered model id,
        # with a digest that matches it (only re-execution can tell)
        assert record.model_id == net.model_id
        assert tuple(record.output_token_ids) == _tokens_of(net, job, CHEAT_SEED)
        assert tuple(record.output_token_ids) != _tokens_of(net, job, 0)
        assert record.result_digest == result_digest(
            job,
            net.model_id,
            record.input,
            record.params,
            record.output_token_ids,
            record.finish_reason,
        )
        receipt = transact(net.w3, court.dispute(job, record.as_struct()), net.addr(CLIENT_A))
        (requested,) = net.dev.court.events.DrawRequested().process_receipt(receipt, errors=DISCARD)
        seed_block = requested["args"]["seed_block"]
        assert seed_block == receipt["blockNumber"] and requested["args"]["panel"] is False
        assert court.dispute_info(job).call()[1] == 7  # DRAWING: nobody is assigned yet
        # the client draws nothing: the nodes serving the model do, a few blocks later (no
        # party to this dispute: `draw_delay_blocks`, 2); a real chain makes the blocks
        net.dev.mine(blocks=3)
        wait_for(lambda: net.events("VerifierAssigned", "court", job_id=job), 60, "the draw")
        (assigned,) = net.events("VerifierAssigned", "court", job_id=job)
        drawer = net.w3.eth.get_transaction(assigned["transactionHash"])["from"]
        assert drawer in (net.addr(NODE_A), net.addr(NODE_B), cheater)
        assert assigned["blockNumber"] > seed_block
        wait_for(lambda: court.dispute_info(job).call()[1] >= 3, 120, "the verifier's verdict")
        verdict = net.events("VerdictPosted", "court", job_id=job)
        assert len(verdict) == 1 and verdict[0]["args"]["valid"] is False
        verifier = verdict[0]["args"]["verifier"]
        assert verifier in (net.addr(NODE_A), net.addr(NODE_B))
        net.dev.mine(seconds=4_000)
        wait_for(lambda: net.status(job) == JobStatus.SLASHED, 60, "the keeper's settle")
        wait_for(lambda: net.status(bad) == JobStatus.CANCELLED, 60, "bad job cancelled")
    finally:
        assert node_a.stop() == 0
        assert node_b.stop() == 0
        assert bad_node.stop() == 0
    (slash,) = net.events("NodeSlashed", node=cheater)
    assert slash["args"]["amount"] == stake_before and slash["args"]["whole_stake"] is True
    assert market.node_info(cheater).call()[1] is True  # slashed flag
    settled = net.events("DisputeSettled", "court", job_id=job)
    assert len(settled) == 1 and settled[0]["args"]["valid"] is False
    assert net.events("JobClaimed", job_id=bad) == []
    honest = {net.addr(NODE_A): node_a, net.addr(NODE_B): node_b}[verifier]
    assert f"verdict job={job} valid=False kind=verdict" in honest.log()
    assert len(net.events("DrawRequested", "court", job_id=job)) == 1
    # every node serving the model tried to draw; the first won, the others skipped quietly
    assert sum("action=draw" in n.log() for n in (node_a, node_b, bad_node)) >= 1
    assert "DEV CHEAT MODE (VERINFER_DEV_CHEAT_WEIGHTS=" in bad_node.log()
    assert "DEV CHEAT" not in node_a.log() + node_b.log()
    logs = node_a.log() + node_b.log() + bad_node.log()
    assert f"skip job={bad} reason=bad input: unknown input format byte 0x07" in logs
    assert "Traceback" not in logs, logs[logs.find("Traceback") - 1500 :][:4000]


def test_node_killed_mid_job__restarted__job_finished_no_token_lost(net: Net) -> None:
    market = net.dev.market.functions
    node = net.node(NODE_A, "node-a", audits="false", batch_wait_s="0.5")
    node.start()
    try:
        first = net.submit(CLIENT_A, "warm up", max_tokens=4)
        wait_for(lambda: net.status(first) == JobStatus.PUBLISHED, 120, "node up")
        job = net.submit(CLIENT_B, "a longer answer please", max_tokens=800)
        wait_for(lambda: net.status(job) == JobStatus.CLAIMED, 30, "claim")
        ns = f"verinfer:{net.dev.market.address[-8:].lower()}:node-a"
        broker = redis.Redis.from_url(net.redis_url)

        def infer_held() -> bool:  # the inference worker holds the job's message (unacked)
            return any(json.loads(v)[2] == f"{ns}:infer" for v in broker.hvals(f"{ns}:unacked"))

        wait_for(infer_held, 30, "the inference worker holding the job")
        node.kill()  # SIGKILL to the supervisor and its workers, mid-job
        assert net.status(job) == JobStatus.CLAIMED
        node.start()
        wait_for(
            lambda: net.status(job) == JobStatus.PUBLISHED,
            120,
            "the job after restart",
            context=lambda: node.log()[-6000:],
        )
        net.dev.mine(seconds=120)
        wait_for(lambda: net.status(job) == JobStatus.FINALIZED, 60, "finalized")
    finally:
        assert node.stop() == 0, node.log()[-2000:]
    assert len(net.events("ResultPublished", job_id=job)) == 1
    assert len(net.events("JobClaimed", job_id=job)) == 1
    assert "restored" in node.log()
    (fin,) = net.events("JobFinalized", job_id=job)
    record = net.record(job)
    assert (
        fin["args"]["payment"]
        + fin["args"]["fee"]
        + fin["args"]["audit_share"]
        + fin["args"]["refund"]
        == record.max_payment
    )
    assert market.node_info(net.addr(NODE_A)).call()[3] == 0


def test_late_verifier__replaced_by_the_nodes_keeper__none_left__unresolved_settled(
    net: Net,
) -> None:
    """A client disputes node A's job; the only node that can be drawn is staked but runs no
    node: it never accepts. Node A's keeper (a party: its own job) draws, replaces the late
    verifier (a new draw is requested), draws again: nobody is left, so the dispute is
    unresolved and A's keeper settles it as valid (bond back to the client)."""
    market, court = net.dev.market.functions, net.dev.court.functions
    absent, node_a = net.addr(KEEPER), net.addr(NODE_A)
    net.dev.add_node(absent, 2_000 * UNIT, net.model_id, PRICE)  # staked, never runs a node
    others = [
        n for n in (NODE_B, CHEATER) if net.addr(n) in market.model_nodes(net.model_id).call()
    ]
    for other in others:  # out of the draw for now (the cheater may be slashed already)
        transact(net.w3, market.stop_serving(net.model_id), net.addr(other))
    assert set(market.model_nodes(net.model_id).call()) == {node_a, absent}
    node = net.node(NODE_A, "node-a", audits="false").start()

    def mined_until(pred: Any) -> Any:  # a real chain makes blocks by itself
        return lambda: pred() or net.dev.mine()

    try:
        job = net.submit(CLIENT_C, "who checks the checker?", preferred=node_a)
        wait_for(lambda: net.status(job) == JobStatus.PUBLISHED, 120, "node A's result")
        claimable = market.claimable(net.addr(CLIENT_C)).call()
        transact(net.w3, court.dispute(job, net.record(job).as_struct()), net.addr(CLIENT_C))
        assigned = wait_for(
            mined_until(lambda: net.events("VerifierAssigned", "court", job_id=job)),
            60,
            "node A's draw",
            every=1.0,
        )
        assert assigned[0]["args"]["verifier"] == absent
        net.dev.mine(seconds=court.accept_window().call() + 1)
        replaced = wait_for(
            lambda: net.events("VerifierReplaced", "court", job_id=job), 60, "the replacement"
        )
        wait_for(
            mined_until(lambda: net.status(job) == JobStatus.FINALIZED),
            60,
            "the unresolved dispute settled",
            every=1.0,
            context=lambda: node.log()[-3000:],
        )
    finally:
        assert node.stop() == 0, node.log()[-3000:]
        for other in others:
            transact(net.w3, market.serve_model(net.model_id, PRICE), net.addr(other))
    assert replaced[0]["args"]["verifier"] == absent
    assert replaced[0]["args"]["penalty"] == 50 * UNIT  # the no-show penalty
    replacer = net.w3.eth.get_transaction(replaced[0]["transactionHash"])["from"]
    assert replacer == node_a
    requests = net.events("DrawRequested", "court", job_id=job)
    assert len(requests) == 2  # the dispute's, then the replacement's
    assert len(net.events("VerifierAssigned", "court", job_id=job)) == 1  # nobody left
    (settled,) = net.events("DisputeSettled", "court", job_id=job)
    assert settled["args"]["valid"] is True and settled["args"]["node"] == node_a
    settler = net.w3.eth.get_transaction(settled["transactionHash"])["from"]
    assert settler == node_a
    bond = court.dispute_bond().call()
    assert market.claimable(net.addr(CLIENT_C)).call() == claimable + bond  # bond returned
    assert f"verifier late job={job}" in node.log()
    assert "Traceback" not in node.log()


def test_honest_node_judged_invalid__appeals_itself__panel_overturns__verifier_slashed(
    net: Net,
) -> None:
    """Node A's honest result is disputed and the drawn verifier (node B's key, played by the
    test) lies: "invalid". Node A's own process re-verifies its result, finds it valid and
    appeals with the dispute bond from its prepaid balance; its keeper draws the panel, whose
    majority (played by the test) overturns the verdict: B is slashed whole, A paid."""
    market, court = net.dev.market.functions, net.dev.court.functions
    node_a, liar = net.addr(NODE_A), net.addr(NODE_B)
    for other in market.model_nodes(net.model_id).call():
        if other not in (node_a, liar):  # B is the only node the verifier's draw can pick
            transact(net.w3, market.stop_serving(net.model_id), other)
    if liar not in market.model_nodes(net.model_id).call():
        transact(net.w3, market.serve_model(net.model_id, PRICE), liar)
    bond = court.dispute_bond().call()
    net.dev.fund_client(node_a, bond)  # the node's prepaid balance, for an appeal bond
    node = net.node(NODE_A, "node-a", audits="false").start()

    def mined_until(pred: Any) -> Any:  # a real chain makes blocks by itself
        return lambda: pred() or net.dev.mine()

    try:
        job = net.submit(CLIENT_C, "is my answer honest?", preferred=node_a)
        wait_for(lambda: net.status(job) == JobStatus.PUBLISHED, 120, "node A's result")
        transact(net.w3, court.dispute(job, net.record(job).as_struct()), net.addr(CLIENT_C))
        wait_for(
            mined_until(lambda: net.events("VerifierAssigned", "court", job_id=job)),
            60,
            "node A's draw of the verifier",
            every=1.0,
        )
        assert court.dispute_info(job).call()[9] == liar
        panel = [net.addr(i) for i in (KEEPER, 8, 9)]  # staked and serving from now on
        for member in panel:
            if market.node_info(member).call()[0]:  # registered in an earlier test
                transact(net.w3, market.serve_model(net.model_id, PRICE), member)
            else:
                net.dev.add_node(member, 2_000 * UNIT, net.model_id, PRICE)
        transact(net.w3, court.accept(job), liar)
        transact(net.w3, court.post_verdict(job, False), liar)  # the lie
        drawn = wait_for(
            mined_until(lambda: net.events("PanelDrawn", "court", job_id=job)),
            120,
            "node A's appeal and its panel draw",
            every=1.0,
            context=lambda: node.log()[-3000:],
        )
        assert sorted(drawn[0]["args"]["panel"]) == sorted(panel)
        for member in panel[:2]:  # a majority re-executed it and found it valid
            transact(net.w3, court.panel_vote(job, True), member)
        net.dev.mine(seconds=court.vote_window().call() + 1)
        wait_for(
            mined_until(lambda: net.status(job) == JobStatus.FINALIZED),
            60,
            "node A's keeper settling the appeal",
            every=1.0,
            context=lambda: node.log()[-3000:],
        )
    finally:
        assert node.stop() == 0, node.log()[-3000:]
    (appeal,) = net.events("AppealOpened", "court", job_id=job)
    assert appeal["args"]["appellant"] == node_a and appeal["args"]["bond"] == bond
    requests = net.events("DrawRequested", "court", job_id=job)
    assert [r["args"]["panel"] for r in requests] == [False, True]
    for event in (*net.events("VerifierAssigned", "court", job_id=job), drawn[0]):
        assert net.w3.eth.get_transaction(event["transactionHash"])["from"] == node_a
    (settled,) = net.events("DisputeSettled", "court", job_id=job)
    assert settled["args"]["valid"] is True and settled["args"]["appealed"] is True
    assert settled["args"]["verifier_overturned"] is True
    (slash,) = net.events("NodeSlashed", node=liar)
    assert slash["args"]["whole_stake"] is True
    assert f"appeal job={job}: own re-verification says valid" in node.log()
    assert f"verdict job={job} valid=True kind=appeal" in node.log()
    assert "Traceback" not in node.log()
