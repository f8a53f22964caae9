"""Requests that arrive together go out as ONE ``Market.submit_many`` transaction: a real
gateway on a real Anvil with a real node, through the official `openai` client; each answer is
checked against what the chain recorded for its job and transaction."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from eth_utils import keccak
from verinfer.gateway.chain import _groups
from verinfer.inputs import encode_chat_input, encode_text_input
from verinfer.node.localnet import CLIENT_B, PRICE, Net, NodeProcess
from verinfer.tokenizers_local import decode_tokens

from tests.gateway.conftest import BROKE, Gateway, start_gateway, stop_gateway

pytestmark = pytest.mark.timeout(240)
MODEL = "verinfer-tiny-llama"
SUBMIT = keccak(text="submit(bytes32,bytes,bytes,uint256,address,uint64,uint64)")[:4]
SUBMIT_MANY = keccak(
    text="submit_many(bytes32[],bytes[],bytes[],uint256[],address[],uint64[],uint64[])"
)[:4]
WINDOW = {"VERINFER_GATEWAY_BATCH_WINDOW_MS": "500"}  # requests within 0.5 s: one batch


@pytest.fixture(scope="module")
def gw(net: Net, node: NodeProcess) -> Iterator[Gateway]:
    """Gateway paying from client B, gathering what arrives within 0.5 s into one batch."""
    gw = start_gateway(
        net, CLIENT_B, "gw-many", "--max-per-request", "0.05", "--timeout", "90", env=WINDOW
    )
    yield gw
    assert stop_gateway(gw) == 0, gw.log()[-3000:]


def together(n: int, call: Callable[[int], Any]) -> list[Any]:
    """``call(i)`` for i < n from n threads released at once; an API error is returned."""
    barrier = threading.Barrier(n)

    def one(i: int) -> Any:
        barrier.wait()
        try:
            return call(i)
        except openai.APIStatusError as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def submitted_by_job(net: Net) -> dict[int, Any]:
    return {int(e["args"]["job_id"]): e for e in net.events("JobSubmitted")}


def check_answer(net: Net, payer: int, ext: dict[str, Any], text: str, max_tokens: int) -> Any:
    """The answer is exactly the job the chain holds: payer, escrow, digest, tokens, text."""
    record = net.record(ext["job_id"])
    assert record.client == net.addr(payer)
    assert record.max_payment == max_tokens * PRICE == ext["max_payment"]
    assert ext["result_digest"] == "0x" + record.result_digest.hex()
    assert record.result_digest == record.expected_digest() and ext["digest_ok"] is True
    assert ext["token_ids"] == record.output_token_ids
    assert text == decode_tokens(net.model_id, record.output_token_ids)
    assert ext["cost"] == record.output_tokens * PRICE
    return record


def tx_of(net: Net, tx_hash: str) -> tuple[Any, Any]:
    return net.w3.eth.get_transaction(tx_hash), net.w3.eth.get_transaction_receipt(tx_hash)


def test_groups__even_groups_of_at_most_16__large_inputs_alone() -> None:
    gas = dict.fromkeys(range(20), 1)
    assert _groups(list(range(17)), dict.fromkeys(range(17), 1)) == [
        list(range(8)),
        list(range(8, 17)),
    ]
    assert _groups(list(range(32)), dict.fromkeys(range(32), 1)) == [
        list(range(16)),
        list(range(16, 32)),
    ]
    small = [i for i in range(20) if i not in (3, 12)]
    groups = _groups(small, gas)
    assert [3] in groups and [12] in groups and len(groups) == 4
    assert sorted(i for g in groups for i in g) == list(range(20))
    assert all(len(g) <= 16 for g in groups)
    assert _groups([5], {5: 1}) == [[5]] and _groups([], {}) == []


def test_arrive_together__one_submit_many__each_its_own_answer(net: Net, gw: Gateway) -> None:
    client, n = gw.openai(), 6
    big = "the " * 540  # 2,160 bytes (~540 tokens): over submit_many's 2,048, its own submit
    before = int(net.dev.market.functions.balance_of(net.addr(CLIENT_B)).call())

    def call(i: int) -> Any:
        if i == n:
            return client.completions.create(model=MODEL, prompt=big, max_tokens=4, seed=99)
        msgs = [{"role": "user", "content": f"question {i}"}]
        return client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5, seed=i)

    answers = together(n + 1, call)
    assert not [a for a in answers if isinstance(a, Exception)], answers
    exts = [a.model_extra["verinfer"] for a in answers]
    small, lone = exts[:n], exts[n]
    (tx_hash,) = {e["submit_tx"] for e in small}
    assert {e["tx_jobs"] for e in small} == {n} and {e["batch"] for e in exts} == {n + 1}
    for i, (a, e) in enumerate(zip(answers[:n], small, strict=True)):
        record = check_answer(net, CLIENT_B, e, a.choices[0].message.content, 5)
        assert record.input == encode_chat_input([{"role": "user", "content": f"question {i}"}])
        assert record.sampling_params.seed == i
    # on chain: one transaction, submit_many, its JobSubmitted logs are these jobs in order
    by_job = submitted_by_job(net)
    ids = sorted(e["job_id"] for e in small)
    assert ids == list(range(ids[0], ids[0] + n))
    assert {"0x" + bytes(by_job[j]["transactionHash"]).hex() for j in ids} == {tx_hash}
    assert [by_job[j]["logIndex"] for j in ids] == sorted(by_job[j]["logIndex"] for j in ids)
    tx, receipt = tx_of(net, tx_hash)
    assert bytes(tx["input"])[:4] == SUBMIT_MANY and receipt["status"] == 1
    # its gas limit, the sum of the jobs' own simulations (+25%), is above what it used
    assert receipt["gasUsed"] < tx["gas"]
    big_record = check_answer(net, CLIENT_B, lone, answers[n].choices[0].text, 4)
    assert big_record.input == encode_text_input(big) and len(big_record.input) > 2_048
    assert lone["tx_jobs"] == 1 and lone["submit_tx"] != tx_hash
    lone_tx, lone_receipt = tx_of(net, lone["submit_tx"])
    assert bytes(lone_tx["input"])[:4] == SUBMIT and lone_receipt["status"] == 1
    escrow = sum(e["max_payment"] for e in exts)
    after = int(net.dev.market.functions.balance_of(net.addr(CLIENT_B)).call())
    assert after == before - escrow  # escrowed until finalization


def test_submit_many__gas_below_the_sum_of_single_submits(net: Net, gw: Gateway) -> None:
    """The gas limit rule checked on the chain: the group's gas used is below the sum of what
    each of its jobs used as a single ``submit`` simulation (eth_estimateGas, as sent)."""
    client, n = gw.openai(), 4

    def call(i: int) -> Any:
        msgs = [{"role": "user", "content": f"gas {i}"}]
        return client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3, seed=i)

    answers = together(n, call)
    exts = [a.model_extra["verinfer"] for a in answers]
    (tx_hash,) = {e["submit_tx"] for e in exts}
    tx, receipt = tx_of(net, tx_hash)
    assert bytes(tx["input"])[:4] == SUBMIT_MANY and receipt["status"] == 1
    by_job = submitted_by_job(net)
    singles = 0
    for e in exts:
        args = by_job[e["job_id"]]["args"]
        fn = net.dev.market.functions.submit(
            args["model_id"],
            args["input"],
            args["params"],
            args["max_payment"],
            args["preferred_node"],
            args["claim_deadline"],
            args["result_deadline"],
        )
        singles += fn.estimate_gas({"from": net.addr(CLIENT_B)})
    assert receipt["gasUsed"] < singles < tx["gas"]
    used, limit = receipt["gasUsed"], tx["gas"]
    print(f"submit_many of {n}: {used} gas used, singles {singles}, limit {limit}")


def test_lone_request__plain_submit(net: Net, gw: Gateway) -> None:
    resp = gw.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "alone"}], max_tokens=4, seed=3
    )
    ext = resp.model_extra["verinfer"]
    check_answer(net, CLIENT_B, ext, resp.choices[0].message.content, 4)
    assert (ext["tx_jobs"], ext["batch"]) == (1, 1)
    tx, receipt = tx_of(net, ext["submit_tx"])
    assert bytes(tx["input"])[:4] == SUBMIT and receipt["status"] == 1
    by_job = submitted_by_job(net)
    assert "0x" + bytes(by_job[ext["job_id"]]["transactionHash"]).hex() == ext["submit_tx"]


def test_batch_with_bad_requests__only_those_refused(
    net: Net, node: NodeProcess, gw: Gateway
) -> None:
    """Five requests in one batch from an account whose prepaid balance covers three jobs,
    one of them naming a model the gateway does not know: three jobs go out in one
    submit_many, the fourth paid one gets a 402, the unknown model a 404."""
    net.dev.fund_client(net.addr(BROKE), 3 * 5 * PRICE)
    args = ("--max-per-request", "0.05", "--timeout", "90")
    poor = start_gateway(net, BROKE, "gw-many-poor", *args, env=WINDOW)
    try:
        client = poor.openai()

        def call(i: int) -> Any:
            msgs = [{"role": "user", "content": f"poor {i}"}]
            model = "no-such-model" if i == 2 else MODEL
            return client.chat.completions.create(model=model, messages=msgs, max_tokens=5, seed=i)

        answers = together(5, call)
        refused = [a for a in answers if isinstance(a, openai.APIStatusError)]
        served = [a for a in answers if not isinstance(a, Exception)]
        assert sorted(e.status_code for e in refused) == [402, 404], refused
        assert isinstance(answers[2], openai.NotFoundError)
        (poor_402,) = [e for e in refused if e.status_code == 402]
        assert poor_402.response.json()["error"]["code"] == "insufficient_balance"
        exts = [a.model_extra["verinfer"] for a in served]
        assert len(exts) == 3
        (tx_hash,) = {e["submit_tx"] for e in exts}
        assert {e["tx_jobs"] for e in exts} == {3}
        for a, e in zip(served, exts, strict=True):
            check_answer(net, BROKE, e, a.choices[0].message.content, 5)
        tx, receipt = tx_of(net, tx_hash)
        assert bytes(tx["input"])[:4] == SUBMIT_MANY and receipt["status"] == 1
        by_job = submitted_by_job(net)
        mine = [j for j, ev in by_job.items() if ev["args"]["client"] == net.addr(BROKE)]
        assert sorted(mine) == sorted(e["job_id"] for e in exts)  # nothing else was submitted
        assert int(net.dev.market.functions.balance_of(net.addr(BROKE)).call()) == 0
    finally:
        assert stop_gateway(poor) == 0, poor.log()[-3000:]
