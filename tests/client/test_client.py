"""The Python client on a real chain: happy path, allowance, estimates, dispute, many jobs."""

from __future__ import annotations

from typing import Any

import pytest
from verinfer.chain_errors import ClientError, JobNotFound, JobTimeout
from verinfer.client import Client
from verinfer.jobs import JobStatus
from verinfer.verifier import verify

from tests.client.roles import publish, run_engine

PROMPT = "What is a GPU?"


def _events(receipt: Any, event: Any) -> list[Any]:
    return list(event.from_receipt(receipt))


def test_submit_wait_finalize__happy_path__text_digest_cost_and_refund(
    client, market, nodes, tiny, chain
):
    model, engine = tiny
    before = client.balances()
    handle = client.submit(
        "verinfer-tiny-llama", prompt=PROMPT, max_tokens=12, temperature=0.7, seed=5
    )
    rec = handle.record
    assert handle.status == JobStatus.OPEN and market.job_status(rec.job_id) == JobStatus.OPEN
    assert rec.client == client.address and rec.max_tokens == 12
    assert rec.max_payment == 12 * market.serve_price(nodes[0], rec.model_id)
    assert client.balances().prepaid == before.prepaid - rec.max_payment

    token_ids, finish = run_engine(engine, model, rec)
    receipt = publish(market, nodes[0], rec, token_ids, finish)
    (published,) = _events(receipt, market.ResultPublished)

    result = handle.wait(timeout=10, poll=0.05)
    assert result.held and result.digest_ok and not result.final
    assert result.status == JobStatus.PUBLISHED
    assert result.token_ids == token_ids
    assert result.digest == bytes(published.result_digest)
    assert result.text == model.tokenizer.decode(token_ids, skip_special_tokens=True)
    assert result.node == nodes[0].address
    price = market.serve_price(nodes[0], rec.model_id)
    assert result.cost == price * len(token_ids)
    assert result.refund == rec.max_payment - result.cost

    with pytest.raises(ClientError, match="finalize reverted: market: challenge window open"):
        client.finalize(handle)
    chain.pending_timestamp += market.challenge_window() + 1
    chain.mine()
    final = client.finalize(handle)
    done = handle.wait(timeout=10, finalized=True, poll=0.05)
    assert done == final
    assert done.final and done.status == JobStatus.FINALIZED
    assert market.job_status(rec.job_id) == JobStatus.FINALIZED
    (fin,) = client._logs(["JobFinalized"], [rec.job_id])
    assert done.refund == fin.refund and done.cost == rec.max_payment - fin.refund
    assert client.balances().prepaid == before.prepaid - done.cost


def test_submit__chat_messages_and_no_prepaid__approves_deposits_and_submits(
    dev, market, token, accounts
):
    carol = accounts[5]
    token.mint(carol, 10**18, sender=accounts[0])
    client = Client(dev["market"], carol, from_block=dev["from_block"])
    assert client.balances().allowance == 0 and client.balances().prepaid == 0
    est = client.estimate(
        "verinfer-tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert est.deposit_needed == est.max_payment and est.approve_needed
    handle = client.submit(
        "verinfer-tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert handle.record.input[0] == 0x01  # chat format byte
    b = client.balances()
    assert b.prepaid == 0 and b.wallet == 10**18 - handle.record.max_payment
    deposited = client._logs(["JobSubmitted"], [handle.job_id])
    assert deposited and deposited[0].client == carol.address
    assert market.job_status(handle.job_id) == JobStatus.OPEN


def test_estimate__gas__is_close_to_what_the_submit_uses(client, market):
    est = client.estimate("verinfer-tiny-llama", prompt=PROMPT, max_tokens=8)
    assert est.deposit_needed == 0 and not est.approve_needed
    handle = client.submit("verinfer-tiny-llama", prompt=PROMPT, max_tokens=8)
    (log,) = client._logs(["JobSubmitted"], [handle.job_id])
    receipt = client.market.chain_manager.get_receipt(log.transaction_hash)
    assert est.gas >= receipt.gas_used * 0.95
    assert est.gas <= receipt.gas_used * 1.5
    assert est.max_payment == 8 * est.price_per_token == handle.record.max_payment


def test_dispute__cheating_node__drawn_verifier_rejects_and_client_is_refunded(
    client, market, court, token, nodes, tiny, chain, accounts
):
    model, engine = tiny
    cheater, honest = nodes
    handle = client.submit(
        "verinfer-tiny-llama", prompt="Is this honest?", max_tokens=8, node=cheater.address
    )
    real, finish = run_engine(engine, model, handle.record)
    forged = [(t + 1) % model.vocab_size for t in real]  # not what the model says
    publish(market, cheater, handle.record, forged, finish)
    held = handle.wait(timeout=10, poll=0.05)
    assert (
        held.held and held.token_ids == forged
    )  # the digest is consistent: only re-execution tells

    with pytest.raises(ClientError, match=f"^job {handle.job_id} has no dispute or audit: "):
        client.draw(handle.job_id)
    before = client.balances()
    assert before.prepaid < court.dispute_bond()  # the shortfall is deposited first
    info = client.dispute(handle)
    # the dispute requested a draw seeded by its own block; the client drew in the next one
    assert info["verifier"] == honest.address and info["drawn_by_us"]
    assert info["phase"] == "ASSIGNED" and not info["draw_pending"]
    assert info["bond"] == court.dispute_bond()
    after = client.balances()
    assert after.prepaid == 0
    assert after.wallet == before.wallet - (info["bond"] - before.prepaid)
    assert market.job_status(handle.job_id) == JobStatus.VERIFYING
    seed = info["seed_block"]
    (opened,) = list(court.DisputeOpened.range(seed, seed + 1))
    assert opened.job_id == handle.job_id and opened.challenger == client.address
    (requested,) = list(court.DrawRequested.range(seed, seed + 1))
    assert requested.job_id == handle.job_id and not requested.panel
    (assigned,) = list(court.VerifierAssigned.range(seed + 1, chain.blocks.height + 1))
    assert assigned.job_id == handle.job_id and assigned.verifier == honest.address
    assert chain.provider.get_receipt(assigned.transaction_hash).sender == client.address

    with pytest.raises(ClientError, match="is VERIFYING, not PUBLISHED"):
        client.dispute(handle)
    again = client.draw(handle.job_id)  # drawn already: nothing is sent
    assert again["verifier"] == honest.address and not again["drawn_by_us"]
    with pytest.raises(ClientError, match="has no verdict to appeal: its dispute is ASSIGNED"):
        client.appeal(handle.job_id)

    court.accept(handle.job_id, sender=honest)
    rec = handle.record
    verdict = verify(model, rec.input, rec.sampling_params, forged, rec.finish_reason)
    assert not verdict.valid
    court.post_verdict(handle.job_id, verdict.valid, sender=honest)
    # a panel needs 3 nodes besides the accused, the verifier and the appellant: not here
    with pytest.raises(ClientError, match=r"^appeal reverted: court: panel unavailable$"):
        client.appeal(handle.job_id)
    chain.pending_timestamp += court.appeal_window() + 1
    chain.mine()
    court.settle(handle.job_id, rec.as_struct(), sender=accounts[0])

    final = handle.wait(timeout=10, finalized=True, poll=0.05)
    assert final.status == JobStatus.SLASHED and final.final
    assert final.refund == rec.max_payment and final.cost == 0
    assert market.node_info(cheater).slashed
    # the court credited the bond and the challenger's share: paid out to another address
    credited = client.balances().claimable
    assert credited > court.dispute_bond()
    elsewhere = accounts[8]
    wallet = token.balanceOf(elsewhere)
    with pytest.raises(ClientError, match=r"^not an address: 'nowhere'$"):
        client.collect(to="nowhere")
    assert client.collect(to=elsewhere.address) == credited
    assert token.balanceOf(elsewhere) == wallet + credited and client.balances().claimable == 0


def test_wait_many__one_get_logs_per_poll__for_all_pending_jobs(
    client, market, nodes, chain, monkeypatch
):
    handles = [
        client.submit("verinfer-tiny-llama", prompt=f"job {i}", max_tokens=3) for i in range(4)
    ]
    for h in handles[:2]:
        publish(market, nodes[0], h.record, [5, 6, 7], 1)

    calls: list[str] = []
    provider_cls = type(chain.provider)
    real = provider_cls.make_request

    def counting(self: Any, method: str, params: Any = None) -> Any:
        calls.append(method)
        return real(self, method, params)

    monkeypatch.setattr(provider_cls, "make_request", counting)
    with pytest.raises(JobTimeout) as err:
        client.wait_many(handles, timeout=0.6, poll=0.25)
    polls = calls.count("eth_getLogs")
    assert 1 <= polls <= 4  # one request per poll, whatever the number of jobs
    pending = str(err.value).split("published: ", 1)[1]
    assert pending == f"{handles[2].job_id} (OPEN), {handles[3].job_id} (OPEN)"

    monkeypatch.undo()
    for h in handles[2:]:
        publish(market, nodes[1], h.record, [8, 9], 0)
    monkeypatch.setattr(provider_cls, "make_request", counting)
    calls.clear()
    results = client.wait_many(handles, timeout=5, poll=0.05)
    assert calls.count("eth_getLogs") == 1
    monkeypatch.undo()
    assert [r.job_id for r in results] == [h.job_id for h in handles]
    assert [r.token_ids for r in results] == [[5, 6, 7]] * 2 + [[8, 9]] * 2
    assert all(r.held and r.digest_ok for r in results)
    assert [r.node for r in results] == [nodes[0].address] * 2 + [nodes[1].address] * 2


def test_errors__one_line_messages(client, dev, market, chain):
    with pytest.raises(ClientError, match=r"^unknown model: 'nosuch' is not registered"):
        client.submit("nosuch", prompt="x")
    with pytest.raises(JobNotFound, match=r"^job not found: no job 999 in market"):
        client.job(999)
    with pytest.raises(ClientError, match=r"^wrong network: connected to chain 31337, expected 5"):
        Client(dev["market"], "test:1", chain_id=5)
    with pytest.raises(ClientError, match=r"^contracts not deployed there: no code at market"):
        Client(dev["clients"][0], "test:1")
    with pytest.raises(ClientError, match=r"^insufficient balance: job escrows"):
        client.submit("verinfer-tiny-llama", prompt="x", max_tokens=4, max_payment=10**30)
    with pytest.raises(ClientError, match=r"^submit reverted: market: bad max tokens"):
        client.submit("verinfer-tiny-llama", prompt="x", max_tokens=0, max_payment=10**15)
    with pytest.raises(ClientError, match=r"^insufficient prepaid balance"):
        client.withdraw(10**30)
