"""The watcher on a real Anvil and Redis: restarted mid-burst it misses nothing and repeats
nothing; a reorg deeper than its confirmations is detected and not processed twice."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
import redis
from verinfer.digest import FinishReason, pack_tokens, result_digest
from verinfer.node.contracts import Protocol, connect
from verinfer.node.devchain import transact
from verinfer.node.localnet import CLIENT_A, CLIENT_B, CLIENT_C, NODE_A, Net, wait_for
from verinfer.node.metrics import Metrics
from verinfer.node.policy import Policy, ServedModel
from verinfer.node.store import Store
from verinfer.node.watcher import Watcher

pytestmark = pytest.mark.timeout(240)


class Recorder:
    """The watcher's hand-off, recorded instead of sent to Celery (what is under test is the
    watcher: which work it hands on, how often)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []

    def __call__(self, role: str, action: str, args: list[Any]) -> None:
        self.calls.append((role, action, tuple(args)))

    def jobs(self, action: str) -> Counter[int]:
        return Counter(int(a[0]) for _, act, a in self.calls if act == action)


def _watcher(net: Net, account: str, recorder: Recorder, **extra: Any) -> Watcher:
    settings = net.node_settings(account, **extra)
    client = redis.Redis.from_url(net.redis_url)
    protocol = Protocol(connect(net.rpc_url), settings.market, settings.court)
    policy = Policy({net.model_id: ServedModel.from_path(net.model_path)}, 0, 10_000, 0.1, 1.0)
    store = Store(client, settings.namespace)
    return Watcher(
        settings,
        protocol,
        store,
        Metrics(client, settings.namespace),
        policy,
        recorder,
        net.addr(NODE_A),
    )


def test_watcher_restarted_mid_burst__nothing_missed_nothing_repeated(net: Net) -> None:
    recorder = Recorder()
    stop = threading.Event()
    first = _watcher(net, "watch-restart", recorder)
    thread = threading.Thread(target=first.run, args=(stop,))
    thread.start()
    jobs = []
    for i in range(24):
        jobs.append(net.submit(CLIENT_A, f"burst {i}", seed=i))
        if i == 10:
            stop.set()  # the watcher stops mid-burst; submissions go on
            thread.join()
    stopped_at = first.store.cursor()
    assert stopped_at is not None and stopped_at < net.w3.eth.block_number
    second = _watcher(net, "watch-restart", recorder)
    stop2 = threading.Event()
    thread2 = threading.Thread(target=second.run, args=(stop2,))
    thread2.start()
    try:
        wait_for(lambda: set(jobs) <= set(recorder.jobs("claim")), 60, "every job handed on")
        second.poll_once()
    finally:
        stop2.set()
        thread2.join()
    claims = recorder.jobs("claim")
    assert all(claims[j] == 1 for j in jobs), claims
    assert second.store.cursor() == net.w3.eth.block_number


def test_reorg_deeper_than_confirmations__detected__no_double_processing(net: Net) -> None:
    recorder = Recorder()
    watcher = _watcher(net, "watch-reorg", recorder, confirmations=2, start_block=0)
    while not watcher.poll_once():
        pass
    snapshot = net.w3.provider.make_request("evm_snapshot", [])["result"]
    gone = [net.submit(CLIENT_C, f"orphan {i}", seed=100 + i) for i in range(3)]
    net.dev.mine(blocks=3)
    assert watcher.poll_once()
    assert all(recorder.jobs("claim")[j] == 1 for j in gone)
    net.w3.provider.make_request("evm_revert", [snapshot])  # drop 6 blocks (> 2 confirmations)
    kept = [net.submit(CLIENT_A, f"canonical {i}", seed=200 + i) for i in range(3)]
    net.dev.mine(blocks=4)  # the new chain is longer than the old one
    assert kept == gone  # the same job ids, different jobs
    while not watcher.poll_once():
        pass
    assert Metrics(watcher.store.r, watcher.s.namespace).get("reorgs") == 1
    claims = recorder.jobs("claim")
    assert all(claims[j] == 2 for j in kept)  # once per chain, each chain's job once
    records = [watcher.store.get_job(j) for j in kept]
    assert [r.client for r in records if r] == [net.addr(CLIENT_A)] * 3
    while not watcher.poll_once():
        pass
    assert recorder.jobs("claim") == claims  # polling again changes nothing


def test_run_first__own_claim_and_publish__job_served_once(net: Net) -> None:
    recorder = Recorder()
    watcher = _watcher(net, "watch-run-first", recorder, claim_mode="run-first")
    while not watcher.poll_once():
        pass
    job_id = net.submit(CLIENT_B, "run me once", max_tokens=3, seed=7)
    assert watcher.poll_once()
    assert recorder.calls[-1] == ("infer", "serve", recorder.calls[-1][2])
    assert recorder.jobs("serve")[job_id] == 1
    record = watcher.store.get_job(job_id)
    assert record is not None
    tokens, finish = (5, 6, 7), FinishReason.LENGTH
    digest = result_digest(job_id, record.model_id, record.input, record.params, tokens, finish)
    watcher.store.put_output(job_id, {"packed": pack_tokens(tokens).hex(), "n": 3})  # as served
    receipt = transact(
        net.w3,
        net.dev.market.functions.claim_and_publish(
            job_id, record.as_struct(), pack_tokens(tokens), 3, int(finish), digest
        ),
        net.addr(NODE_A),
    )
    assert len(net.dev.market.events.JobClaimed().process_receipt(receipt)) == 1
    while not watcher.poll_once():
        pass
    assert recorder.jobs("serve")[job_id] == 1  # its JobClaimed log does not run it again
    stored = watcher.store.get_job(job_id)
    assert stored is not None and stored.result_digest == digest
    metrics = Metrics(watcher.store.r, watcher.s.namespace)
    assert metrics.get("jobs", state="claimed") == metrics.get("jobs", state="published") == 1


def test_wei_counter_sums_past_int64(net: Net) -> None:
    metrics = Metrics(redis.Redis.from_url(net.redis_url), "verinfer:test-wei")
    for _ in range(3):
        metrics.incr("earnings_wei", 4 * 10**18)  # each fits int64, the sum does not
    assert metrics.get("earnings_wei") == 12 * 10**18


def test_job_reserved_for_another_node__taken_once_its_window_is_over__not_before(
    net: Net,
) -> None:
    from verinfer.node.keeper import Keeper
    from verinfer.node.localnet import NODE_B
    from verinfer.node.watcher import secure_margin

    recorder = Recorder()
    watcher = _watcher(net, "watch-reserved", recorder)
    while not watcher.poll_once():
        pass
    window = watcher.exclusive_window()
    assert window == net.dev.market.functions.exclusive_window().call() > 0
    node_b, me = net.addr(NODE_B), net.addr(NODE_A)
    theirs = net.submit(CLIENT_A, "for node B", seed=1, preferred=node_b)
    claimed = net.submit(CLIENT_A, "for node B, who takes it", seed=2, preferred=node_b)
    quick = net.submit(CLIENT_A, "for me, run in time", seed=3, preferred=me)
    slow = net.submit(CLIENT_A, "for me, not run in time", seed=4, preferred=me)
    assert watcher.poll_once()
    due = lambda queue, job_id: watcher.store.r.zscore(  # noqa: E731
        watcher.store.key("due", queue), str(job_id)
    )
    # its own: run first (claimed with the result in one transaction), and due to be secured
    # by a claim shortly before the window ends if it has not been run by then
    for job_id in (quick, slow):
        assert (recorder.jobs("serve")[job_id], recorder.jobs("claim")[job_id]) == (1, 0)
        record = watcher.store.get_job(job_id)
        assert record is not None
        assert due("secure", job_id) == record.submitted_time + window - secure_margin(window)
    # another node's: nothing handed on, both due on the open schedule at the window's end
    for job_id in (theirs, claimed):
        assert recorder.jobs("claim")[job_id] == recorder.jobs("serve")[job_id] == 0
        record = watcher.store.get_job(job_id)
        assert record is not None and record.preferred_node == node_b
        assert due("open", job_id) == record.submitted_time + window
    keeper = Keeper(watcher.s, watcher.p, watcher.store, recorder, watcher.me, watcher.take_open)
    watcher.store.worker_up("infer@test:1")  # an inference worker is alive (it runs them)
    keeper.tick()  # inside the window: nothing
    assert recorder.jobs("claim")[theirs] == recorder.jobs("claim")[slow] == 0
    watcher.store.put_output(quick, {"packed": pack_tokens((5, 6)).hex(), "n": 2})  # as run
    record = net.record(claimed)
    transact(net.w3, net.dev.market.functions.claim(claimed, record.as_struct()), node_b)
    net.w3.provider.make_request("evm_increaseTime", [window + 1])
    net.dev.mine(blocks=1)
    while not watcher.poll_once():  # sees node B's claim: that job leaves the schedule
        pass
    keeper.tick()
    assert recorder.jobs("claim")[theirs] == 1  # open to every node now: claimed here
    assert ("chain", "claim", (theirs, f"open:{theirs}")) in recorder.calls
    assert recorder.jobs("claim")[claimed] == 0  # node B had it
    assert ("chain", "claim", (slow, f"secure:{slow}")) in recorder.calls  # not run: secured
    assert recorder.jobs("claim")[quick] == 0  # run: its claim_and_publish is on its way
    assert watcher.store.due_size("open") == watcher.store.due_size("secure") == 0
    keeper.tick()
    assert recorder.jobs("claim")[theirs] == recorder.jobs("claim")[slow] == 1  # once
    # the secure claim on chain: the run in progress publishes it, it is not run again
    record = net.record(slow)
    transact(net.w3, net.dev.market.functions.claim(slow, record.as_struct()), me)
    while not watcher.poll_once():
        pass
    assert recorder.jobs("serve")[slow] == 1


def test_claimed_job_without_result__run_again_halfway_to_its_deadline(net: Net) -> None:
    """The watchdog of a claimed job: a serve message lost in a crash (the test hands on
    nothing) is dispatched again halfway to the result deadline; a job run and not published
    is published again; a published job is left alone."""
    from verinfer.node.keeper import Keeper

    recorder = Recorder()
    watcher = _watcher(net, "watch-watchdog", recorder)
    while not watcher.poll_once():
        pass
    me = net.addr(NODE_A)
    lost, unpublished, done = (
        net.submit(CLIENT_A, f"watchdog {i}", seed=10 + i, result_in=700) for i in range(3)
    )
    for job_id in (lost, unpublished, done):
        transact(net.w3, net.dev.market.functions.claim(job_id, net.record(job_id).as_struct()), me)
    assert watcher.poll_once()
    for job_id in (lost, unpublished, done):
        assert recorder.jobs("serve")[job_id] == 1  # claimed: run
        record = watcher.store.get_job(job_id)
        assert record is not None and record.node == me
        (claimed,) = net.events("JobClaimed", job_id=job_id)
        at = net.w3.eth.get_block(claimed["blockNumber"])["timestamp"]
        due = watcher.store.r.zscore(watcher.store.key("due", "reserve"), str(job_id))
        assert due == at + (record.result_deadline - at) / 2
    tokens, finish = (5, 6), FinishReason.LENGTH
    for job_id in (unpublished, done):  # these two ran
        record = net.record(job_id)
        digest = result_digest(job_id, record.model_id, record.input, record.params, tokens, finish)
        watcher.store.put_output(
            job_id,
            {"packed": pack_tokens(tokens).hex(), "n": 2, "finish": 1, "digest": digest.hex()},
        )
    record = net.record(done)
    digest = result_digest(done, record.model_id, record.input, record.params, tokens, finish)
    fn = net.dev.market.functions.publish(
        done, record.as_struct(), pack_tokens(tokens), 2, 1, digest
    )
    transact(net.w3, fn, me)
    while not watcher.poll_once():  # its ResultPublished: off the watchdog
        pass
    keeper = Keeper(watcher.s, watcher.p, watcher.store, recorder, watcher.me, watcher.take_open)
    keeper.tick()  # not halfway yet: nothing
    assert recorder.jobs("serve")[lost] == 1 and recorder.jobs("rederive")[unpublished] == 0
    net.w3.provider.make_request("evm_increaseTime", [360])
    net.dev.mine(blocks=1)
    keeper.tick()
    assert ("infer", "serve", (lost, f"reserve:{lost}")) in recorder.calls  # run again
    assert ("chain", "rederive", (unpublished, f"reserve:{unpublished}")) in recorder.calls
    assert recorder.jobs("serve")[done] == 1 and recorder.jobs("rederive")[done] == 0
    left = {int(m) for m in watcher.store.r.zrange(watcher.store.key("due", "reserve"), 0, -1)}
    assert not left & {lost, unpublished, done}  # (the earlier tests' claims are not due yet)
