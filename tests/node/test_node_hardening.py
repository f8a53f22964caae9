"""Node hardening (issue 14), with real node processes on Anvil, real Redis and Celery:

* economics: a job whose escrow does not cover max_tokens x the node's own price is declined
  with one log line and its reason, and so is a job of a model the node does not serve;
* a reorg deeper than the confirmations that drops the node's claims and publishes: every job
  still ends served (finalized) or refunded (cancelled), and no keeper call is refused for
  mismatched fields (the records are rebuilt from the canonical chain);
* one sender per key: the sender lease (taken, renewed, lost for good to another holder,
  expired when not renewed); a SIGKILLed supervisor's workers exit, `node run` refuses to
  start next to a live sender, and after the restart one process signs (nonces on chain);
  `node status` lists live workers only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import redis
from verinfer.digest import SamplingParams
from verinfer.inputs import encode_text_input
from verinfer.jobs import JobStatus
from verinfer.node.devchain import ZERO, transact
from verinfer.node.lease import SenderLease, lease_holder
from verinfer.node.localnet import (
    CLIENT_A,
    CLIENT_B,
    NODE_A,
    OWNER,
    PRICE,
    Net,
    NodeProcess,
    wait_for,
)
from verinfer.node.policy import Policy, ServedModel
from verinfer.node.sender import LeaseUnavailable, SenderFenced
from verinfer.node.store import Store

pytestmark = pytest.mark.timeout(600)


def _rpc(net: Net, method: str, *params: Any) -> Any:
    answer = net.w3.provider.make_request(method, list(params))
    assert "error" not in answer, answer
    return answer["result"]


def _submit_fn(net: Net, text: str, max_tokens: int = 6, **kw: Any) -> Any:
    """A ``submit`` call; ``claim_in`` (s), ``max_payment`` and ``model_id`` may be given."""
    params = SamplingParams(max_tokens=max_tokens, temperature_milli=700, seed=len(text))
    now = net.w3.eth.get_block("latest")["timestamp"]
    return net.dev.market.functions.submit(
        kw.get("model_id", net.model_id),
        encode_text_input(text),
        params.encode(),
        kw.get("max_payment", max_tokens * PRICE),
        ZERO,
        now + kw.get("claim_in", 600),
        now + 1200,
    )


def _job_id(net: Net, receipt: Any) -> int:
    (event,) = net.dev.market.events.JobSubmitted().process_receipt(receipt)
    return int(event["args"]["job_id"])


def _submit(net: Net, client: int, text: str, max_tokens: int = 6, **kw: Any) -> int:
    """Submit a job (mined at once); returns its id."""
    return _job_id(net, transact(net.w3, _submit_fn(net, text, max_tokens, **kw), net.addr(client)))


def _submit_in_one_block(net: Net, client: int, specs: list[dict[str, Any]]) -> list[int]:
    """Submit several jobs mined together in one block (nothing of the node's in between)."""
    _rpc(net, "evm_mine")  # a fresh "now" for the deadlines
    _rpc(net, "evm_setAutomine", False)
    try:
        sender = {"from": net.addr(client), "gas": 400_000}
        hashes = [_submit_fn(net, **spec).transact(sender) for spec in specs]
        _rpc(net, "evm_mine")
    finally:
        _rpc(net, "evm_setAutomine", True)
    receipts = [net.w3.eth.get_transaction_receipt(h) for h in hashes]
    assert [r["status"] for r in receipts] == [1] * len(specs), receipts
    return [_job_id(net, r) for r in receipts]


def _mine_until(net: Net, pred: Any, what: str, timeout: float = 90, node: Any = None) -> None:
    """Mine a block every 0.5 s until ``pred()`` (the watcher waits for confirmations)."""

    def mined() -> bool:
        _rpc(net, "evm_mine")
        return bool(pred())

    wait_for(
        mined, timeout, what, every=0.5, context=(lambda: node.log()[-3000:]) if node else None
    )


@pytest.fixture(scope="module")
def node_a(net: Net) -> Iterator[NodeProcess]:
    """Node A: claim-first, 1 confirmation, sender finality from the chain ("safe")."""
    node = net.node(
        NODE_A,
        "node-h",
        audits="false",
        confirmations="1",
        tx_stuck_after_s="2",
        sender_lease_ttl_s="3",
    ).start()
    node.wait_ready()
    yield node
    if node.running:
        node.stop()


# ---- economics ----
def test_policy__escrow_below_own_price_or_fraction_or_gas__declined_with_reason() -> None:
    from verinfer.jobs import JobRecord
    from verinfer.models import tiny_model_path

    model = ServedModel.from_path(tiny_model_path())
    mid = model.model_id

    def job(max_payment: int) -> JobRecord:
        params = SamplingParams(max_tokens=16, temperature_milli=0, seed=0)
        return JobRecord(
            ZERO, mid, b"", b"", 16, max_payment, ZERO, 0, 100, 10_000,
            job_id=7, input=encode_text_input("hello"), params=params.encode(),
        )  # fmt: skip

    policy = Policy({mid: model}, 0, 8, 1.0, 1.0, own_prices={mid: 1000})
    assert policy.decide(job(16_000), 0, 0).take
    assert policy.decide(job(15_999), 0, 0).reason == (
        "pays below the node's price: escrow 15999 < 16 tokens x 1000 = 16000"
    )
    half = Policy({mid: model}, 0, 8, 1.0, 1.0, own_prices={mid: 1000}, price_fraction=0.5)
    assert half.decide(job(8_000), 0, 0).take and not half.decide(job(7_999), 0, 0).take
    gas = Policy(
        {mid: model}, 0, 8, 1.0, 1.0, own_prices={mid: 1000}, gas_per_job=100, gas_token_rate=0.5
    )
    gas.gas_price_wei = 20  # 100 gas x 20 wei x 0.5 = 1000 base units
    assert gas.decide(job(17_000), 0, 0).take
    assert gas.decide(job(16_999), 0, 0).reason == (
        "pays below the node's price: escrow 16999 < 16 tokens x 1000 + gas 1000 = 17000"
    )
    assert Policy({}, 0, 8, 1.0, 1.0).decide(job(10**18), 0, 0).reason == (
        f"model 0x{mid.hex()[:16]} not served here"
    )


def test_underpaying_job_and_unserved_model__declined_with_one_log_line_each(
    net: Net, node_a: NodeProcess
) -> None:
    market = net.dev.market.functions
    # the case: max_payment 0.001 vUSD for 16 tokens at the node's 0.001 per token
    cheap = _submit(net, CLIENT_A, "cheap", max_tokens=16, max_payment=PRICE)
    receipt = transact(net.w3, market.register_model("other", "r1", b"\x07" * 32), net.addr(OWNER))
    (reg,) = net.dev.market.events.ModelRegistered().process_receipt(receipt)
    other = _submit(net, CLIENT_A, "other model", model_id=bytes(reg["args"]["model_id"]))
    paying = _submit(net, CLIENT_A, "paying", max_tokens=16)
    _mine_until(
        net, lambda: net.status(paying) == JobStatus.PUBLISHED, "the paying job", node=node_a
    )
    text = node_a.log()
    lines = [ln for ln in text.splitlines() if f"skip job={cheap} " in ln]
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        f"skip job={cheap} reason=pays below the node's price: escrow 0.001 vUSD < "
        "16 tokens x 0.001 vUSD = 0.016 vUSD"
    )
    model_hex = bytes(reg["args"]["model_id"]).hex()[:16]
    lines = [ln for ln in text.splitlines() if f"skip job={other} " in ln]
    assert len(lines) == 1 and lines[0].endswith(f"reason=model 0x{model_hex} not served here")
    assert net.status(cheap) == JobStatus.OPEN and net.status(other) == JobStatus.OPEN
    assert "policy: gas is not counted" in text  # the default says so at start


# ---- reorgs ----
def test_reorg_deeper_than_confirmations__node_txs_dropped__jobs_served_or_refunded(
    net: Net, node_a: NodeProcess
) -> None:
    market = net.dev.market.functions
    me = net.addr(NODE_A)
    *jobs, short = _submit_in_one_block(
        net,
        CLIENT_B,
        [{"text": f"reorg {i}"} for i in range(3)] + [{"text": "short", "claim_in": 12}],
    )
    fork = net.w3.eth.block_number  # the jobs' block; after it only the node's transactions
    short_deadline = net.w3.eth.get_block(fork)["timestamp"] + 12
    jobs_all = [*jobs, short]
    _mine_until(
        net,
        lambda: all(net.status(j) == JobStatus.PUBLISHED for j in jobs_all),
        "4 jobs published",
        node=node_a,
    )
    _mine_until(net, lambda: _watched(net, node_a, jobs_all), "the results read", node=node_a)
    nonce_before = net.w3.eth.get_transaction_count(me)
    depth = net.w3.eth.block_number - fork
    assert depth > 1  # deeper than the node's 1 confirmation
    assert node_a.proc is not None
    os.killpg(node_a.proc.pid, signal.SIGSTOP)  # the node sleeps through the reorg ...
    try:
        _rpc(net, "anvil_reorg", depth, [])  # the node's claims and publishes are gone
        assert all(net.status(j) == JobStatus.OPEN for j in jobs_all)
        assert net.w3.eth.get_transaction_count(me) < nonce_before
        # ... and wakes up in a chain where the short job's claim window is over
        _rpc(net, "evm_setNextBlockTimestamp", short_deadline + 2)
        _rpc(net, "evm_mine")
    finally:
        os.killpg(node_a.proc.pid, signal.SIGCONT)
    _mine_until(
        net,
        lambda: (
            all(net.status(j) == JobStatus.PUBLISHED for j in jobs)
            and net.status(short) == JobStatus.CANCELLED
        ),
        "3 jobs published again, the short one cancelled",
        node=node_a,
    )
    _rpc(net, "evm_increaseTime", 70)  # past the challenge window
    _mine_until(
        net,
        lambda: all(net.status(j) == JobStatus.FINALIZED for j in jobs),
        "3 jobs finalized",
        node=node_a,
    )
    text = node_a.log()
    assert re.search(r"watcher: reorg detected depth=\d+; reading again from block", text)
    assert re.search(r"reorg: job=\d+ rebuilt from the chain state=open mine=True", text)
    # no keeper call refused for stale fields, nothing of the node's reverted on chain
    assert not re.search(r"skip action=\S+ args=.*fields mismatch", text)
    assert "tx reverted on chain" not in text
    (cancelled,) = net.events("JobCancelled", job_id=short)
    assert cancelled["args"]["refund"] == 6 * PRICE
    for j in jobs:
        (fin,) = net.events("JobFinalized", job_id=j)
        assert fin["args"]["node"] == me
    assert market.balance_of(net.addr(CLIENT_B)).call() >= 6 * PRICE  # the refund is there


def _watched(net: Net, node: NodeProcess, jobs: list[int]) -> bool:
    """Whether node's watcher has read the results of ``jobs`` (cursor past their blocks)."""
    r = redis.Redis.from_url(net.redis_url)
    ns = f"verinfer:{net.dev.market.address[-8:].lower()}:{node.name}"
    cursor = int(r.get(f"{ns}:cursor") or 0)
    blocks = [net.events("ResultPublished", job_id=j)[-1]["blockNumber"] for j in jobs]
    return cursor >= max(blocks)


# ---- one sender per key ----
def test_sender_lease__one_holder__renewed__lost_for_good__expires_unrenewed(net: Net) -> None:
    client = redis.Redis.from_url(net.redis_url)
    ns = "verinfer:lease-test"
    first = SenderLease(client, ns, ttl_s=1.0)
    second = SenderLease(client, ns, ttl_s=1.0)
    assert first.acquire() and not second.acquire()
    first.check()  # may sign
    assert first.renew() and lease_holder(client, ns)[0] == first.token  # type: ignore[index]
    client.delete(f"{ns}:sender_lease")  # Redis restarted without it: taken again, same token
    assert first.renew() and lease_holder(client, ns)[0] == first.token  # type: ignore[index]
    time.sleep(1.1)  # not renewed: it may not sign, and the lease is free
    with pytest.raises(LeaseUnavailable, match="not renewed in time"):
        first.check()
    assert second.acquire() and second.epoch > first.epoch
    assert not first.renew()  # the other holder has it: lost for good
    with pytest.raises(SenderFenced, match=f"sender lease lost to {re.escape(second.token)}"):
        first.check()
    first.release()  # not ours any more: nothing happens to the holder's key
    assert lease_holder(client, ns)[0] == second.token  # type: ignore[index]
    second.release()
    assert lease_holder(client, ns) is None


def test_node_status__lists_live_workers_only(net: Net) -> None:
    store = Store(redis.Redis.from_url(net.redis_url), "verinfer:status-test")
    store.worker_up("chain@host:1")
    store.r.hset(store.key("workers"), "infer@host:2", time.time() - 60)  # killed with -9
    assert list(store.workers()) == ["chain@host:1"]
    assert store.r.hkeys(store.key("workers")) == [b"chain@host:1"]


def _children(pid: int) -> list[int]:
    """Live (not zombie) children of ``pid``."""
    out = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _nonces_on_chain(net: Net, address: str, since: int) -> list[int]:
    out = []
    for n in range(since, net.w3.eth.block_number + 1):
        for tx in net.w3.eth.get_block(n, full_transactions=True)["transactions"]:
            if tx["from"] == address:
                out.append(int(tx["nonce"]))
    return out


def test_supervisor_sigkilled__workers_exit__restart_waits__one_sender_signs(
    net: Net, node_a: NodeProcess
) -> None:
    me = net.addr(NODE_A)
    start_block = net.w3.eth.block_number
    first = node_a
    assert first.proc is not None
    workers = _children(first.proc.pid)
    assert len(workers) == 2  # the chain worker and one inference worker
    job1 = _submit(net, CLIENT_A, "before the kill")
    _mine_until(net, lambda: net.status(job1) == JobStatus.PUBLISHED, "job 1", node=first)

    killed_at = len(first.log())
    os.kill(first.proc.pid, signal.SIGKILL)  # the supervisor only, not its process group
    first.proc.wait(timeout=10)
    wait_for(lambda: not any(_alive(p) for p in workers), 30, "the orphaned workers to exit")

    second = NodeProcess(first.name, first.env, net.tmp / f"{first.name}-2.log")
    net.nodes.append(second)
    second.start().wait_ready()
    # a third `node run` with the same key refuses while the second's sender lives
    third = subprocess.run(
        [sys.executable, "-m", "verinfer.cli", "node", "run"],
        env=first.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert third.returncode == 1
    assert f"Error: another node is sending with {me}: its chain worker (" in third.stderr
    assert third.stderr.strip().endswith("stop it first")

    jobs = [_submit(net, CLIENT_A, f"after the restart {i}") for i in range(3)]
    _mine_until(
        net,
        lambda: all(net.status(j) == JobStatus.PUBLISHED for j in jobs),
        "3 jobs after the restart",
        node=second,
    )
    nonces = _nonces_on_chain(net, me, start_block)
    assert nonces == list(range(nonces[0], nonces[0] + len(nonces)))  # no collision, no gap
    senders = set(re.findall(r"pid=(\d+) tx sent", second.log()))
    assert len(senders) == 1, senders
    assert "tx sent" not in first.log()[killed_at:]  # the orphans sent nothing more

    status = subprocess.run(
        [sys.executable, "-m", "verinfer.cli", "node", "status"],
        env=first.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listed = json.loads(status.stdout)["workers"]
    pids = {int(name.rsplit(":", 1)[1]) for name in listed}
    assert second.proc is not None and pids == set(_children(second.proc.pid))
    second.stop()
