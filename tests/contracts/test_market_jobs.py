"""Market: the job lifecycle of PROTOCOL §4 (submit, claim, publish, finalize, expire, cancel)."""

from dataclasses import replace
from typing import Any

import ape
import pytest
from eth_abi import encode
from eth_utils import keccak
from verinfer.digest import SamplingParams, encode_params, result_digest
from verinfer.jobs import SETTLEMENT_FIELDS, SETTLEMENT_TYPE

from tests.contracts.conftest import (
    CANCELLED,
    CLAIMED,
    EXPIRED,
    FINALIZED,
    INPUT,
    MAX_PAYMENT,
    MIN_STAKE,
    MODEL_ID,
    OPEN,
    OUTPUT_TOKENS,
    PARAMS,
    PRICE,
    PUBLISHED,
    UNIT,
    ZERO,
    assert_conserved,
    job_after_claim,
    job_after_publish,
    job_from_submitted,
    pack,
)

PAYMENT = len(OUTPUT_TOKENS) * PRICE  # 64 tokens x price < MAX_PAYMENT


# ---- submit ----
def test_submit__debits_balance_stores_hash_and_logs(market, submit, funded_client, chain):
    job_id, job, tx = submit()
    assert job_id == 1 and market.next_job_id() == 2
    assert market.balance_of(funded_client) == 1_000 * UNIT - MAX_PAYMENT
    assert market.job_status(job_id) == OPEN
    assert bytes(market.job_hash(job_id)) == bytes(market.hash_job(job.as_tuple()))
    [log] = tx.decode_logs(market.JobSubmitted)
    assert bytes(log.input) == INPUT and bytes(log.params) == PARAMS
    assert (log.client, log.max_tokens, log.max_payment) == (funded_client, 64, MAX_PAYMENT)


def test_deposit_and_submit__one_transaction(market, token, fund, client, registered_model, chain):
    fund(client, MAX_PAYMENT)
    now = chain.pending_timestamp
    tx = market.deposit_and_submit(
        MAX_PAYMENT,
        registered_model,
        INPUT,
        PARAMS,
        MAX_PAYMENT,
        ZERO,
        now + 60,
        now + 120,
        sender=client,
    )
    [dep] = tx.decode_logs(market.Deposited)
    [sub] = tx.decode_logs(market.JobSubmitted)
    assert dep.amount == MAX_PAYMENT and sub.max_payment == MAX_PAYMENT
    assert market.balance_of(client) == 0
    assert token.balanceOf(market) == MAX_PAYMENT
    assert market.job_status(sub.job_id) == OPEN


def _submit_many_args(chain, model, inputs, payments, params=PARAMS):
    now, n = chain.pending_timestamp, len(inputs)
    return (
        [model] * n,
        inputs,
        [params] * n,
        payments,
        [ZERO] * n,
        [now + 600] * n,
        [now + 1_200] * n,
    )


def test_submit_many__consecutive_ids_debits_once_each_and_logs(
    market, funded_client, registered_model, chain
):
    inputs = [INPUT, b"second prompt", bytes(range(1, 256)) * 8]  # the last is 2,040 bytes
    payments = [MAX_PAYMENT, 2 * MAX_PAYMENT, 3 * MAX_PAYMENT]
    first = market.next_job_id()
    tx = market.submit_many(
        *_submit_many_args(chain, registered_model, inputs, payments), sender=funded_client
    )
    assert tx.return_value == [first, first + 1, first + 2]
    assert market.next_job_id() == first + 3
    assert market.balance_of(funded_client) == 1_000 * UNIT - 6 * MAX_PAYMENT
    logs = tx.decode_logs(market.JobSubmitted)
    assert [log.job_id for log in logs] == [first, first + 1, first + 2]
    for log, data, payment in zip(logs, inputs, payments, strict=True):
        assert bytes(log.input) == data and log.max_payment == payment
        assert log.client == funded_client and log.submitted_at == tx.timestamp
        job = job_from_submitted(log, data, PARAMS)
        assert market.job_status(log.job_id) == OPEN
        assert bytes(market.job_hash(log.job_id)) == bytes(market.hash_job(job.as_tuple()))


def test_submit_many__any_bad_item__reverts_all(market, funded_client, registered_model, chain):
    args = _submit_many_args(chain, registered_model, [INPUT, INPUT], [MAX_PAYMENT] * 2)
    with ape.reverts("market: length mismatch"):
        market.submit_many(args[0], args[1][:1], *args[2:], sender=funded_client)
    with ape.reverts("market: unknown model"):
        market.submit_many([registered_model, b"\x01" * 32], *args[1:], sender=funded_client)
    with ape.reverts("market: insufficient balance"):
        market.submit_many(*args[:3], [MAX_PAYMENT, 1_000 * UNIT], *args[4:], sender=funded_client)
    with ape.reverts("market: empty input"):
        market.submit_many(args[0], [INPUT, b""], *args[2:], sender=funded_client)
    assert market.next_job_id() == 1
    assert market.balance_of(funded_client) == 1_000 * UNIT


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"max_payment": 0}, "market: zero payment"),
        ({"input_data": b""}, "market: empty input"),
        ({"input_data": b"x" * 8_001}, "market: input too large"),
        ({"params": PARAMS[:160]}, "market: bad params"),
        ({"params": encode_params(SamplingParams(max_tokens=0))}, "market: bad max tokens"),
        ({"params": encode_params(SamplingParams(max_tokens=2_049))}, "market: bad max tokens"),
        ({"claim_in": 0}, "market: claim deadline in past"),
        ({"claim_in": 100, "result_in": 100}, "market: result deadline before claim deadline"),
        ({"result_in": 30 * 86_400 + 1}, "market: deadline too far"),
        ({"max_payment": 1_000 * UNIT + 1}, "market: insufficient balance"),
    ],
)
def test_submit__bad_input__reverts_and_keeps_balance(
    market, submit, funded_client, kwargs, reason
):
    with ape.reverts(reason):
        submit(**kwargs)
    assert market.balance_of(funded_client) == 1_000 * UNIT
    assert market.next_job_id() == 1


def test_submit__unknown_model__reverts(market, funded_client, chain):
    now = chain.pending_timestamp
    with ape.reverts("market: unknown model"):
        market.submit(keccak(b"x"), INPUT, PARAMS, 1, ZERO, now + 9, now + 99, sender=funded_client)


# ---- claim ----
def test_claim__locks_collateral_and_logs(market, submit, claim, staked_node):
    job_id, job, _ = submit()
    job, tx = claim(job_id, job, staked_node)
    assert market.job_status(job_id) == CLAIMED
    assert market.node_info(staked_node).locked == 25 * MAX_PAYMENT
    assert bytes(market.job_hash(job_id)) == bytes(market.hash_job(job.as_tuple()))
    [log] = tx.decode_logs(market.JobClaimed)
    assert (log.node, log.price_per_token, log.collateral) == (staked_node, PRICE, 25 * MAX_PAYMENT)


def test_claim__twice__reverts(market, submit, claim, staked_node, make_node, verifiers):
    job_id, job, _ = submit()
    claim(job_id, job, staked_node)
    other = make_node(verifiers[0])
    with ape.reverts("market: job not open"):
        market.claim(job_id, job.as_tuple(), sender=other)


def test_claim__with_wrong_fields__reverts(market, submit, staked_node):
    job_id, job, _ = submit()
    with ape.reverts("market: job fields mismatch"):
        market.claim(job_id, replace(job, max_payment=1).as_tuple(), sender=staked_node)


def test_claim__after_claim_deadline__reverts(market, submit, staked_node, chain):
    job_id, job, _ = submit()
    chain.pending_timestamp = job.claim_deadline + 1
    with ape.reverts("market: claim deadline passed"):
        market.claim(job_id, job.as_tuple(), sender=staked_node)


def test_claim__by_other_inside_exclusive_window__reverts(
    market, submit, claim, staked_node, make_node, verifiers, chain
):
    preferred = make_node(verifiers[0])
    job_id, job, _ = submit(preferred=preferred.address)
    with ape.reverts("market: reserved for preferred node"):
        market.claim(job_id, job.as_tuple(), sender=staked_node)
    chain.pending_timestamp = job.submitted_at + 60
    job, _ = claim(job_id, job, staked_node)
    assert job.node == staked_node


def test_claim__by_non_node__reverts(market, submit, keeper):
    job_id, job, _ = submit()
    with ape.reverts("market: not a node"):
        market.claim(job_id, job.as_tuple(), sender=keeper)


def test_claim__when_model_not_served__reverts(market, submit, fund, node_op):
    job_id, job, _ = submit()
    market.register_node(b"\x01" * 64, "", sender=node_op)
    with ape.reverts("market: model not served"):
        market.claim(job_id, job.as_tuple(), sender=node_op)


def test_claim__when_stake_too_low__reverts(market, submit, make_node, node_op, owner):
    make_node(node_op, stake=MIN_STAKE)
    market.set_param(4, 2 * MIN_STAKE, sender=owner)  # raised min stake, node not removed yet
    job_id, job, _ = submit()
    with ape.reverts("market: stake too low"):
        market.claim(job_id, job.as_tuple(), sender=node_op)


def test_claim__when_free_stake_too_low__reverts(market, submit, make_node, node_op):
    make_node(node_op, stake=MIN_STAKE)
    job_id, job, _ = submit(max_payment=MIN_STAKE // 25 + 1)
    with ape.reverts("market: free stake too low"):
        market.claim(job_id, job.as_tuple(), sender=node_op)


# ---- publish ----
def test_publish__records_result_and_logs(market, submit, claim, publish, staked_node, chain):
    job_id, job, _ = submit()
    job, _ = claim(job_id, job, staked_node)
    job, tx = publish(job_id, job, staked_node)
    assert market.job_status(job_id) == PUBLISHED
    assert bytes(market.job_hash(job_id)) == bytes(market.hash_job(job.as_tuple()))
    [log] = tx.decode_logs(market.ResultPublished)
    assert bytes(log.output) == pack(OUTPUT_TOKENS)
    assert (log.node, log.output_tokens, log.finish_reason) == (staked_node, 64, 1)
    digest = result_digest(job_id, job.model_id, INPUT, PARAMS, OUTPUT_TOKENS, 1)
    assert bytes(log.result_digest) == digest
    assert log.published_block == tx.block_number


def _publish_args(job_id, job, tokens=OUTPUT_TOKENS, finish=1, digest=b"\x11" * 32):
    return (job_id, job.as_tuple(), pack(tokens), len(tokens), finish, digest)


def test_publish__by_non_claimant__reverts(market, submit, claim, staked_node, keeper):
    job_id, job, _ = submit()
    job, _ = claim(job_id, job, staked_node)
    with ape.reverts("market: not the claimant"):
        market.publish(*_publish_args(job_id, job), sender=keeper)


def test_publish__when_open__reverts(market, submit, staked_node):
    job_id, job, _ = submit()
    with ape.reverts("market: job not claimed"):
        market.publish(*_publish_args(job_id, job), sender=staked_node)


def test_publish__after_result_deadline__reverts(market, submit, claim, staked_node, chain):
    job_id, job, _ = submit()
    job, _ = claim(job_id, job, staked_node)
    chain.pending_timestamp = job.result_deadline + 1
    with ape.reverts("market: result deadline passed"):
        market.publish(*_publish_args(job_id, job), sender=staked_node)


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"tokens": list(range(65))}, "market: too many output tokens"),
        ({"finish": 2}, "market: bad finish reason"),
        ({"digest": b"\x00" * 32}, "market: empty digest"),
    ],
)
def test_publish__bad_result__reverts(market, submit, claim, staked_node, override, reason):
    job_id, job, _ = submit()
    job, _ = claim(job_id, job, staked_node)
    with ape.reverts(reason):
        market.publish(*_publish_args(job_id, job, **override), sender=staked_node)


def test_claim_and_publish__one_transaction(market, submit, staked_node):
    job_id, job, _ = submit(preferred=staked_node.address)
    tx = market.claim_and_publish(*_publish_args(job_id, job), sender=staked_node)
    [c] = tx.decode_logs(market.JobClaimed)
    [p] = tx.decode_logs(market.ResultPublished)
    job = job_after_publish(job_after_claim(job, c), p)
    assert market.job_status(job_id) == PUBLISHED
    assert bytes(market.job_hash(job_id)) == bytes(market.hash_job(job.as_tuple()))
    assert market.node_info(staked_node).locked == job.collateral


def _many_args(items: list[tuple[int, Any]]) -> tuple[Any, ...]:
    """publish_many's columns for (job_id, job) pairs, with the standard output."""
    digests = [result_digest(i, MODEL_ID, INPUT, PARAMS, OUTPUT_TOKENS, 1) for i, _ in items]
    n = len(items)
    return (
        [i for i, _ in items],
        [j.as_tuple() for _, j in items],
        [pack(OUTPUT_TOKENS)] * n,
        [len(OUTPUT_TOKENS)] * n,
        [1] * n,
        digests,
    )


def test_publish_many__claims_open_publishes_claimed_and_logs(
    market, submit, claim, staked_node, chain
):
    open_id, open_job, _ = submit(preferred=staked_node.address)
    claimed_id, claimed_job, _ = submit()
    claimed_job, _ = claim(claimed_id, claimed_job, staked_node)
    tx = market.publish_many(
        *_many_args([(open_id, open_job), (claimed_id, claimed_job)]), sender=staked_node
    )
    [c] = tx.decode_logs(market.JobClaimed)
    assert c.job_id == open_id and c.node == staked_node
    published = tx.decode_logs(market.ResultPublished)
    assert [p.job_id for p in published] == [open_id, claimed_id]
    assert all(p.published_block == tx.block_number for p in published)
    open_job = job_after_publish(job_after_claim(open_job, c), published[0])
    claimed_job = job_after_publish(claimed_job, published[1])
    for job_id, job in ((open_id, open_job), (claimed_id, claimed_job)):
        assert market.job_status(job_id) == PUBLISHED
        assert bytes(market.job_hash(job_id)) == bytes(market.hash_job(job.as_tuple()))
    assert market.node_info(staked_node).locked == 2 * open_job.collateral


def test_publish_many__any_bad_item__reverts_all(market, submit, claim, staked_node, keeper):
    a_id, a_job, _ = submit(preferred=staked_node.address)
    b_id, b_job, _ = submit()
    args = _many_args([(a_id, a_job), (b_id, b_job)])
    with ape.reverts("market: length mismatch"):
        market.publish_many(args[0], args[1][:1], *args[2:], sender=staked_node)
    wrong = (args[0], [args[1][0], replace(b_job, max_payment=1).as_tuple()], *args[2:])
    with ape.reverts("market: job fields mismatch"):
        market.publish_many(*wrong, sender=staked_node)
    with ape.reverts("market: not a node"):
        market.publish_many(*_many_args([(b_id, b_job)]), sender=keeper)
    b_job, _ = claim(b_id, b_job, staked_node)
    both_args = _many_args([(a_id, a_job), (b_id, b_job)])
    market.publish_many(*both_args, sender=staked_node)
    with ape.reverts("market: job not claimed"):
        market.publish_many(*both_args, sender=staked_node)
    assert market.job_status(a_id) == PUBLISHED and market.job_status(b_id) == PUBLISHED


# ---- finalize ----
def test_finalize__pays_node_refunds_client_and_logs(
    market, token, accounts, published_job, staked_node, funded_client, keeper, chain
):
    job_id, job = published_job
    assert_conserved(market, token, accounts, live_escrow=MAX_PAYMENT)
    chain.pending_timestamp = job.published_at + 3_601
    tx = market.finalize(job_id, job.as_settlement(), sender=keeper)
    fee, audit = PAYMENT * 100 // 10_000, PAYMENT * 200 // 10_000
    assert market.job_status(job_id) == FINALIZED
    assert market.claimable(staked_node) == PAYMENT - fee - audit
    assert market.balance_of(funded_client) == 1_000 * UNIT - PAYMENT
    assert (market.protocol_fees(), market.audit_pool()) == (fee, audit)
    assert market.node_info(staked_node).locked == 0
    [log] = tx.decode_logs(market.JobFinalized)
    assert (log.payment, log.refund, log.fee, log.audit_share) == (
        PAYMENT - fee - audit,
        MAX_PAYMENT - PAYMENT,
        fee,
        audit,
    )
    assert_conserved(market, token, accounts)
    # the word is deleted (gas refund); the view still reports the issued id as FINALIZED
    assert bytes(market.job_hash(job_id)) == b"\x00" * 32
    assert market.job_status(market.next_job_id()) == 0 and market.job_status(0) == 0
    with ape.reverts("market: job not published"):
        market.finalize(job_id, job.as_settlement(), sender=keeper)


def test_finalize__price_is_capped_at_max_payment(
    market, submit, claim, publish, make_node, node_op, chain, funded_client
):
    make_node(node_op, price=10**16)  # 64 tokens x 1e16 > MAX_PAYMENT
    job_id, job, _ = submit()
    job, _ = claim(job_id, job, node_op)
    job, _ = publish(job_id, job, node_op)
    chain.pending_timestamp = job.published_at + 3_601
    tx = market.finalize(job_id, job.as_settlement(), sender=node_op)
    [log] = tx.decode_logs(market.JobFinalized)
    assert log.refund == 0 and log.payment + log.fee + log.audit_share == MAX_PAYMENT
    assert market.balance_of(funded_client) == 1_000 * UNIT - MAX_PAYMENT


SETTLEMENT_NAMES = (*SETTLEMENT_FIELDS, "rest_hash")


def test_settlement_of__matches_local_and_hashes_to_the_stored_word(market, published_job):
    job_id, job = published_job
    settlement = market.settlement_of(job.as_tuple())
    assert tuple(settlement)[:7] == job.as_settlement()[:7]
    assert bytes(settlement.rest_hash) == job.as_settlement()[7]
    stored = bytes(market.job_hash(job_id))
    assert stored == bytes(market.hash_job(job.as_tuple()))
    assert stored == keccak(encode([SETTLEMENT_TYPE], [job.as_settlement()]))[:31] + b"\x00"


@pytest.mark.parametrize(
    "field, value",
    [
        ("client", "attacker"),
        ("node", "attacker"),
        ("price_per_token", 10**18),
        ("output_tokens", 1),
        ("published_at", 0),
        ("rest_hash", b"\x01" * 32),
    ],
)
def test_finalize__tampered_settlement__reverts(market, published_job, keeper, chain, field, value):
    job_id, job = published_job
    chain.pending_timestamp = job.published_at + 3_601
    settlement = dict(zip(SETTLEMENT_NAMES, job.as_settlement(), strict=True))
    settlement[field] = keeper.address if value == "attacker" else value
    with ape.reverts("market: job fields mismatch"):
        market.finalize(job_id, tuple(settlement.values()), sender=keeper)
    with ape.reverts("market: job fields mismatch"):
        market.finalize_many([job_id], [tuple(settlement.values())], sender=keeper)
    assert market.job_status(job_id) == PUBLISHED


def test_finalize__too_early__reverts(market, published_job, keeper):
    job_id, job = published_job
    with ape.reverts("market: challenge window open"):
        market.finalize(job_id, job.as_settlement(), sender=keeper)


def test_finalize_many__finalizes_each(market, submit, claim, publish, staked_node, keeper, chain):
    ids, jobs = [], []
    for _ in range(3):
        job_id, job, _ = submit()
        job, _ = claim(job_id, job, staked_node)
        job, _ = publish(job_id, job, staked_node)
        ids.append(job_id)
        jobs.append(job.as_settlement())
    chain.pending_timestamp += 3_601
    tx = market.finalize_many(ids, jobs, sender=keeper)
    assert [log.job_id for log in tx.decode_logs(market.JobFinalized)] == ids
    assert all(market.job_status(i) == FINALIZED for i in ids)
    with ape.reverts("market: length mismatch"):
        market.finalize_many(ids, jobs[:2], sender=keeper)


def test_withdraw_fees__credits_fee_recipient(
    market, published_job, owner, fee_recipient, token, chain
):
    job_id, job = published_job
    chain.pending_timestamp = job.published_at + 3_601
    market.finalize(job_id, job.as_settlement(), sender=owner)
    fee = market.protocol_fees()
    tx = market.withdraw_fees(sender=owner)
    assert market.protocol_fees() == 0 and market.claimable(fee_recipient) == fee
    [log] = tx.decode_logs(market.FeesWithdrawn)
    assert (log.recipient, log.amount) == (fee_recipient, fee)
    before = token.balanceOf(fee_recipient)
    market.withdraw(sender=fee_recipient)
    assert token.balanceOf(fee_recipient) == before + fee


# ---- expire ----
def test_expire__refunds_and_penalises_node(
    market, token, accounts, submit, claim, staked_node, funded_client, keeper, chain
):
    job_id, job, _ = submit()
    job, _ = claim(job_id, job, staked_node)
    with ape.reverts("market: result deadline not passed"):
        market.expire(job_id, job.as_tuple(), sender=keeper)
    chain.pending_timestamp = job.result_deadline + 1
    tx = market.expire(job_id, job.as_tuple(), sender=keeper)
    penalty = job.collateral // 2
    assert market.job_status(job_id) == EXPIRED
    assert market.balance_of(funded_client) == 1_000 * UNIT + penalty
    info = market.node_info(staked_node)
    assert (info.stake, info.locked) == (2 * MIN_STAKE - penalty, 0)
    [log] = tx.decode_logs(market.JobExpired)
    assert (log.node, log.refund, log.penalty) == (staked_node, MAX_PAYMENT + penalty, penalty)
    [slash] = tx.decode_logs(market.NodeSlashed)
    assert (slash.amount, slash.whole_stake) == (penalty, False)
    assert_conserved(market, token, accounts)


def test_expire__penalty_below_min_stake__leaves_the_active_set(
    market, submit, claim, make_node, node_op, keeper, chain, registered_model
):
    make_node(node_op, stake=MIN_STAKE + MIN_STAKE // 10)
    job_id, job, _ = submit(max_payment=MIN_STAKE // 25)  # collateral 25x = MIN_STAKE
    job, _ = claim(job_id, job, node_op)
    chain.pending_timestamp = job.result_deadline + 1
    tx = market.expire(job_id, job.as_tuple(), sender=keeper)
    assert market.node_info(node_op).stake == MIN_STAKE + MIN_STAKE // 10 - MIN_STAKE // 2
    assert not market.is_serving(node_op, registered_model)
    [log] = tx.decode_logs(market.ModelUnserved)
    assert log.node == node_op


def test_expire__when_open__reverts(market, submit, keeper):
    job_id, job, _ = submit()
    with ape.reverts("market: job not claimed"):
        market.expire(job_id, job.as_tuple(), sender=keeper)


# ---- cancel ----
def test_cancel__by_client__refunds_and_logs(market, submit, funded_client):
    job_id, job, _ = submit()
    tx = market.cancel(job_id, job.as_tuple(), sender=funded_client)
    assert market.job_status(job_id) == CANCELLED
    assert market.balance_of(funded_client) == 1_000 * UNIT
    [log] = tx.decode_logs(market.JobCancelled)
    assert (log.job_id, log.refund) == (job_id, MAX_PAYMENT)


def test_cancel__by_keeper_before_deadline__reverts_then_works(market, submit, keeper, chain):
    job_id, job, _ = submit()
    with ape.reverts("market: claim deadline not passed"):
        market.cancel(job_id, job.as_tuple(), sender=keeper)
    chain.pending_timestamp = job.claim_deadline + 1
    market.cancel(job_id, job.as_tuple(), sender=keeper)
    assert market.job_status(job_id) == CANCELLED
    with ape.reverts("market: job not open"):
        market.cancel(job_id, job.as_tuple(), sender=keeper)


# ---- court hooks are closed to everyone else ----
@pytest.mark.parametrize(
    ("fn", "args"),
    [
        ("court_take_bond", (ZERO, 1)),
        ("court_slash", (ZERO, 1, 1)),
        ("court_pay", (ZERO, 1)),
        ("court_hold", (ZERO, True)),
        ("court_pay_from_audit_pool", (ZERO, 1)),
    ],
)
def test_court_hooks__by_stranger__revert(market, keeper, fn, args):
    with ape.reverts("market: not the court"):
        getattr(market, fn)(*args, sender=keeper)


def test_job_from_event__rebuilds_stored_hash(market, submit):
    _, job, tx = submit()
    [log] = tx.decode_logs(market.JobSubmitted)
    assert job_from_submitted(log, INPUT, PARAMS) == job
