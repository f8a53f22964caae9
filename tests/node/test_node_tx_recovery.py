"""A real node's transactions on an Anvil with automine off, mined by hand: one priced out by a
base-fee spike is replaced with higher fees (same nonce); two dropped from the pool are
recovered (one sent again with its nonce, one that no longer applies replaced by a no-op so the
transaction after it still goes through); the node's nonces stay a gap-free sequence, every
job is served once and balances are exact. Also: jobs the node cannot finish in time or whose
input is invalid for the model are skipped with one line each and refunded by a cancel, while
the node keeps serving."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from verinfer.digest import SamplingParams
from verinfer.inputs import encode_text_input
from verinfer.jobs import JobStatus
from verinfer.node.devchain import ZERO
from verinfer.node.localnet import CLIENT_A, CLIENT_C, NODE_A, NODE_B, PRICE, Net, wait_for

pytestmark = pytest.mark.timeout(420)


def _rpc(net: Net, method: str, *params: Any) -> Any:
    answer = net.w3.provider.make_request(method, list(params))
    assert "error" not in answer, answer
    return answer["result"]


def _mine(net: Net, base_fee: int | None = None) -> None:
    """Mine one block (at ``base_fee`` when given)."""
    if base_fee is not None:
        _rpc(net, "anvil_setNextBlockBaseFeePerGas", hex(base_fee))
    _rpc(net, "evm_mine")


def _pool(net: Net, address: str, claims: bool = False) -> dict[int, dict[str, Any]]:
    """The pool's transactions from ``address`` (pending and queued), by nonce; with
    ``claims`` only its ``claim`` calls (the keeper may send a finalize meanwhile)."""
    content = _rpc(net, "txpool_content")
    out: dict[int, dict[str, Any]] = {}
    for part in ("pending", "queued"):
        for sender, txs in content.get(part, {}).items():
            if sender.lower() == address.lower():
                out.update({int(n): tx for n, tx in txs.items()})
    if claims:
        out = {n: tx for n, tx in out.items() if _call_of(net, tx) == "claim"}
    return out


def _call_of(net: Net, tx: dict[str, Any]) -> str:
    if tx.get("to", "").lower() != net.dev.market.address.lower():
        return ""
    fn, _ = net.dev.market.decode_function_input(tx["input"])
    return str(fn.fn_name)


def _job_of(net: Net, tx: dict[str, Any]) -> int:
    _, args = net.dev.market.decode_function_input(tx["input"])
    return int(args["job_id"])


def _submit_unmined(net: Net, client: int, text: str, seed: int) -> Any:
    """Send a submission without mining it; returns its hash."""
    params = SamplingParams(max_tokens=6, temperature_milli=700, seed=seed)
    now = net.w3.eth.get_block("latest")["timestamp"]
    fn = net.dev.market.functions.submit(
        net.model_id,
        encode_text_input(text),
        params.encode(),
        6 * PRICE,
        ZERO,
        now + 600,
        now + 1200,
    )
    return fn.transact({"from": net.addr(client)})


def _mined_job(net: Net, tx_hash: Any) -> int:
    receipt = net.w3.eth.get_transaction_receipt(tx_hash)
    assert receipt["status"] == 1
    (event,) = net.dev.market.events.JobSubmitted().process_receipt(receipt)
    return int(event["args"]["job_id"])


def _mined_until(
    net: Net, pred: Callable[[], bool], what: str, base_fee: int | None = None
) -> None:
    """Mine a block a second until ``pred()``."""

    def mined() -> bool:
        _mine(net, base_fee)
        return pred()

    wait_for(mined, 60, what, every=1.0)


def _claimer(net: Net, job_id: int) -> str | None:
    found = net.events("JobClaimed", job_id=job_id)
    return found[0]["args"]["node"] if found else None


def test_stuck_and_dropped_transactions__replaced_resent_noop__nonces_gap_free(net: Net) -> None:
    market = net.dev.market.functions
    me = net.addr(NODE_A)
    before = market.balance_of(net.addr(CLIENT_A)).call()
    node = net.node(NODE_A, "node-a", audits="false", tx_stuck_after_s="3").start()
    try:
        node.wait_ready()
        warm = net.submit(CLIENT_A, "warm up", max_tokens=4)
        wait_for(lambda: net.status(warm) == JobStatus.PUBLISHED, 120, "warm up")
        _rpc(net, "evm_setAutomine", False)

        # 1a. stuck: the claim sits in the pool, nothing is mined; the node replaces it
        h = _submit_unmined(net, CLIENT_A, "stuck", 1)
        _mine(net)
        stuck = _mined_job(net, h)
        pool = wait_for(lambda: _pool(net, me, claims=True), 60, "the node's claim in the pool")
        ((nonce, first),) = pool.items()
        assert _job_of(net, stuck_tx := first) == stuck
        wait_for(
            lambda: f"tx replaced (stuck) action=claim nonce={nonce} " in node.log(),
            30,
            "the replacement",
        )
        replacement = _pool(net, me)[nonce]
        assert replacement["hash"] != stuck_tx["hash"]
        assert int(replacement["maxFeePerGas"], 16) > int(stuck_tx["maxFeePerGas"], 16)
        assert int(replacement["maxPriorityFeePerGas"], 16) >= (
            int(stuck_tx["maxPriorityFeePerGas"], 16) * 1.1
        )  # the pool's replacement rule
        _mine(net)
        (claimed,) = net.events("JobClaimed", job_id=stuck)
        assert "0x" + claimed["transactionHash"].hex().removeprefix("0x") == replacement["hash"]
        assert net.w3.eth.get_transaction(claimed["transactionHash"])["nonce"] == nonce
        _mined_until(net, lambda: net.status(stuck) == JobStatus.PUBLISHED, "stuck published")

        # 1b. priced out: a base-fee spike above what the claim pays (Anvil then evicts it
        #     from its pool); the node sends it again with its nonce at today's fees
        h = _submit_unmined(net, CLIENT_A, "priced out", 2)
        _mine(net)
        priced_out = _mined_job(net, h)
        pool = wait_for(lambda: _pool(net, me, claims=True), 60, "the node's claim in the pool")
        ((nonce, first),) = pool.items()
        spike = 4 * int(first["maxFeePerGas"], 16)
        _mine(net, base_fee=spike)
        assert net.status(priced_out) == JobStatus.OPEN  # not mined
        _mined_until(
            net, lambda: net.status(priced_out) == JobStatus.CLAIMED, "claimed", base_fee=spike
        )
        (claimed,) = net.events("JobClaimed", job_id=priced_out)
        mined = net.w3.eth.get_transaction(claimed["transactionHash"])
        assert mined["nonce"] == nonce and mined["from"] == me
        assert mined["maxFeePerGas"] >= spike
        assert f"tx resent (dropped) action=claim nonce={nonce} " in node.log()
        _mine(net, base_fee=10**9)  # back to normal fees
        _mined_until(net, lambda: net.status(priced_out) == JobStatus.PUBLISHED, "published")

        # 2. dropped: three claims pending; the first and second vanish from the pool, and
        #    another node claims the second's job meanwhile
        hashes = [_submit_unmined(net, CLIENT_A, f"dropped {i}", 10 + i) for i in range(3)]
        _mine(net)
        trio = [_mined_job(net, x) for x in hashes]
        pool = wait_for(
            lambda: len(p := _pool(net, me, claims=True)) == 3 and p, 60, "three claims pending"
        )
        n0, n1, n2 = sorted(pool)
        assert n1 == n0 + 1 and n2 == n0 + 2
        resent, taken, kept = (_job_of(net, pool[n]) for n in (n0, n1, n2))
        assert sorted((resent, taken, kept)) == sorted(trio)
        for n in (n0, n1):
            _rpc(net, "anvil_dropTransaction", pool[n]["hash"])
        assert not {n0, n1} & set(_pool(net, me)), _pool(net, me)
        fn = market.claim(taken, net.record(taken).as_struct())
        rival = fn.transact({"from": net.addr(NODE_B)})
        _mine(net)
        assert net.w3.eth.get_transaction_receipt(rival)["status"] == 1
        assert net.w3.eth.get_transaction_count(me, "latest") <= n0  # the hole holds n2 back
        assert not {n0, n1} & set(_pool(net, me)), _pool(net, me)
        wait_for(
            lambda: {n0, n1} <= set(_pool(net, me)), 30, "the node filling its nonces n0 and n1"
        )
        filled_from = net.w3.eth.block_number
        _mined_until(  # (one block, unless a fee replacement of n2 is on its way)
            net, lambda: net.w3.eth.get_transaction_count(me, "latest") >= n2 + 1, "n0..n2 mined"
        )
        assert _claimer(net, resent) == me and _claimer(net, kept) == me
        assert _claimer(net, taken) == net.addr(NODE_B)
        ours = {
            tx["nonce"]: tx
            for n in range(filled_from + 1, net.w3.eth.block_number + 1)
            for tx in net.w3.eth.get_block(n, full_transactions=True)["transactions"]
            if tx["from"] == me
        }
        assert {n0, n1, n2} <= set(ours)
        noop = ours[n1]
        assert noop["to"] == me and noop["value"] == 0 and bytes(noop["input"]) == b""
        log = node.log()
        assert f"tx resent (dropped) action=claim nonce={n0} " in log
        assert (
            f"tx dropped and no longer applies action=claim nonce={n1} "
            "reason=market: job not open; filling its nonce with a no-op"
        ) in log
        assert f"tx no-op sent action=noop nonce={n1} " in log

        _rpc(net, "evm_setAutomine", True)
        _mine(net)
        served = [warm, stuck, priced_out, resent, kept]
        wait_for(lambda: all(net.status(j) == JobStatus.PUBLISHED for j in served), 90, "results")
        net.dev.mine(seconds=120)
        wait_for(lambda: all(net.status(j) == JobStatus.FINALIZED for j in served), 90, "final")
    finally:
        _rpc(net, "evm_setAutomine", True)
        assert node.stop() == 0, node.log()[-3000:]

    log = node.log()
    assert "Traceback" not in log
    # the node's nonces: one gap-free sequence, each used once, nothing left pending
    count = net.w3.eth.get_transaction_count(me, "latest")
    assert net.w3.eth.get_transaction_count(me, "pending") == count
    nonces = []
    for number in range(net.w3.eth.block_number + 1):
        block = net.w3.eth.get_block(number, full_transactions=True)
        nonces += [tx["nonce"] for tx in block["transactions"] if tx["from"] == me]
    assert sorted(nonces) == list(range(count))
    published = Counter(e["args"]["job_id"] for e in net.events("ResultPublished"))
    claims = Counter(e["args"]["job_id"] for e in net.events("JobClaimed"))
    assert all(published[j] == 1 and claims[j] == 1 for j in served)
    assert published[taken] == 0 and claims[taken] == 1
    spent = sum(net.record(j).max_payment for j in [*served, taken])
    refunds = 0
    for j in served:
        (fin,) = net.events("JobFinalized", job_id=j)
        price = min(net.record(j).output_tokens * PRICE, net.record(j).max_payment)
        assert fin["args"]["payment"] + fin["args"]["fee"] + fin["args"]["audit_share"] == price
        refunds += fin["args"]["refund"]
    assert market.balance_of(net.addr(CLIENT_A)).call() == before - spent + refunds


def test_unfinishable_or_invalid_jobs__one_skip_line_each__cancelled_refunded__node_serves(
    net: Net,
) -> None:
    market = net.dev.market.functions
    client = net.addr(CLIENT_C)
    before = market.balance_of(client).call()
    # a deadline margin of 900 s: a job due in 1200 s can be finished, one due in 700 s not
    node = net.node(NODE_A, "node-a2", audits="false", deadline_margin_s="900").start()
    try:
        node.wait_ready()
        late = net.submit(CLIENT_C, "due too soon", result_in=700)
        too_long = net.submit(CLIENT_C, "a prompt", max_tokens=1020)  # context is 1024 tokens
        bad_chat = net.submit(CLIENT_C, "", input_bytes=b"\x01{not json")
        bad_utf8 = net.submit(CLIENT_C, "", input_bytes=b"\x00\xff\xfe")
        bad_role = net.submit(CLIENT_C, "", input_bytes=b'\x01[{"role":"robot","content":"hi"}]')
        no_content = net.submit(CLIENT_C, "", input_bytes=b'\x01[{"role":"user","content":""}]')
        empty = net.submit(CLIENT_C, "", input_bytes=b"\x00")
        good = net.submit(CLIENT_C, "an ordinary job", max_tokens=5)
        wait_for(lambda: net.status(good) == JobStatus.PUBLISHED, 120, "the good job served")
        net.dev.mine(seconds=700)  # claim deadlines pass: the keeper cancels the skipped jobs
        skipped = (late, too_long, bad_chat, bad_utf8, bad_role, no_content, empty)
        wait_for(lambda: all(net.status(j) == JobStatus.CANCELLED for j in skipped), 60, "cancels")
        wait_for(lambda: net.status(good) == JobStatus.FINALIZED, 60, "finalized")
    finally:
        assert node.stop() == 0, node.log()[-3000:]
    lines = node.log().splitlines()

    def skips(job_id: int) -> list[str]:
        return [ln.split(" reason=", 1)[1] for ln in lines if f" skip job={job_id} " in ln]

    assert skips(late) == [
        f"cannot finish before the deadline ({net.record(late).result_deadline})"
    ]
    assert skips(too_long) == [
        "prompt of 7 tokens + max_tokens 1020 exceeds the model context of 1024 tokens"
    ]
    (chat_reason,) = skips(bad_chat)
    assert chat_reason.startswith("bad input: chat input is not valid JSON: ")
    assert skips(bad_utf8) == [
        "bad input: input is not valid UTF-8: 'utf-8' codec can't decode byte 0xff in "
        "position 0: invalid start byte"
    ]
    assert skips(bad_role) == [
        "bad input: chat message 0 has an unknown role 'robot' (use system, user, assistant)"
    ]
    assert skips(no_content) == ["bad input: chat message 0 has no content"]
    assert skips(empty) == ["bad input: prompt is empty"]
    assert skips(good) == []
    assert "Traceback" not in node.log()
    for j in skipped:
        assert net.events("JobClaimed", job_id=j) == []
        (cancel,) = net.events("JobCancelled", job_id=j)
        assert cancel["args"]["refund"] == net.record(j).max_payment
    (fin,) = net.events("JobFinalized", job_id=good)
    assert market.balance_of(client).call() == (
        before - net.record(good).max_payment + fin["args"]["refund"]
    )
