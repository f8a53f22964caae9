"""A ``submit_many`` that reverts on chain answers every request of it and releases their limit
reservations: the chain's clock jumps past the jobs' claim deadline between the gateway's
simulation and the mining of its transaction (automine off meanwhile). Own module: the jump
would age every other test's jobs."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from eth_utils import keccak
from verinfer.node.localnet import CLIENT_C, PRICE, Net, NodeProcess, wait_for

from tests.gateway.conftest import start_gateway, stop_gateway

pytestmark = pytest.mark.timeout(240)
MODEL = "verinfer-tiny-llama"
SUBMIT_MANY = keccak(
    text="submit_many(bytes32[],bytes[],bytes[],uint256[],address[],uint64[],uint64[])"
)[:4]


def test_submit_many_reverted__all_its_requests_502__reservations_released(
    net: Net, node: NodeProcess
) -> None:
    w3, me = net.w3, net.addr(CLIENT_C)
    # 3 jobs of 5 tokens fill the daily limit: the next one goes through only if released
    args = ("--max-per-request", "0.05", "--max-per-day", str(3 * 5 * PRICE / 10**18))
    env = {"VERINFER_GATEWAY_BATCH_WINDOW_MS": "500"}
    gw = start_gateway(net, CLIENT_C, "gw-revert", *args, "--timeout", "60", env=env)
    try:
        client, n = gw.openai(), 3
        nonce = w3.eth.get_transaction_count(me)
        jobs_before = len(net.events("JobSubmitted"))
        w3.provider.make_request("evm_setAutomine", [False])
        try:
            barrier = threading.Barrier(n)

            def one(i: int) -> Any:
                barrier.wait()
                msgs = [{"role": "user", "content": f"late {i}"}]
                try:
                    return client.chat.completions.create(
                        model=MODEL, messages=msgs, max_tokens=5, seed=i
                    )
                except openai.APIStatusError as exc:
                    return exc

            with ThreadPoolExecutor(n) as pool:
                futures = [pool.submit(one, i) for i in range(n)]
                wait_for(
                    lambda: w3.eth.get_transaction_count(me, "pending") > nonce, 30, "the send"
                )
                time.sleep(0.2)
                w3.provider.make_request("evm_increaseTime", [10_000])  # past claim deadlines
                w3.provider.make_request("evm_mine", [])
                answers = [f.result(60) for f in futures]
        finally:
            w3.provider.make_request("evm_setAutomine", [True])
        assert w3.eth.get_transaction_count(me) == nonce + 1  # one transaction for the three
        block = w3.eth.get_block("latest", full_transactions=True)
        (tx,) = [t for t in block["transactions"] if t["from"] == me]
        assert bytes(tx["input"])[:4] == SUBMIT_MANY
        assert w3.eth.get_transaction_receipt(tx["hash"])["status"] == 0
        assert all(isinstance(a, openai.APIStatusError) for a in answers), answers
        for a in answers:
            assert a.status_code == 502
            err = a.response.json()["error"]
            assert err["code"] == "submit_failed"
            assert (
                f"submit_many of {n} jobs reverted: transaction 0x{bytes(tx['hash']).hex()}"
                in (err["message"])
            )
        assert len(net.events("JobSubmitted")) == jobs_before
        # the three reservations were released: the daily limit takes three jobs again
        resp = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "again"}], max_tokens=5, seed=7
        )
        ext = resp.model_extra["verinfer"]
        assert ext["digest_ok"] is True and ext["tx_jobs"] == 1
        assert net.record(ext["job_id"]).client == me
    finally:
        assert stop_gateway(gw) == 0, gw.log()[-3000:]
