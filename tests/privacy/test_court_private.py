"""Private jobs on chain (docs/protocol.md §8): the market's flag, Court.hand_key and the
verdicts the court fixes when a key is withheld. Real Anvil, the real ERC20."""

from __future__ import annotations

import ape
import pytest
from verinfer import privacy as P
from verinfer.inputs import encode_text_input

from tests.contracts.conftest import (
    DISPUTE_BOND,
    FINALIZED,
    MIN_STAKE,
    PARAMS,
    SLASHED,
    UNIT,
    VERIFYING,
    job_after_publish,
)
from tests.contracts.test_court import APPEALED

NODE_KEY = P.EncryptionKey(bytes.fromhex("11" * 32))
TOKENS = list(range(1, 65))


@pytest.fixture(scope="module")
def court(deploy_court, market):
    return deploy_court(market)


@pytest.fixture
def pool(court, make_node, verifiers):
    return [make_node(v) for v in verifiers]


@pytest.fixture
def private_input():
    envelope, job_key = P.seal_input(encode_text_input("secret prompt"), NODE_KEY.pubkey)
    return envelope, job_key


@pytest.fixture
def private_job(submit, claim, market, staked_node, private_input, pool):
    """A private job named to staked_node, claimed and published with a sealed output."""
    envelope, job_key = private_input
    job_id, job, _ = submit(preferred=staked_node.address, input_data=envelope)
    job, _ = claim(job_id, job, staked_node)
    digest = P.private_result_digest(job_id, job.model_id, envelope, PARAMS, TOKENS, 1, job_key)
    tx = market.publish(
        job_id,
        job.as_tuple(),
        P.seal_output(TOKENS, job_key, job_id),
        len(TOKENS),
        1,
        digest,
        sender=staked_node,
    )
    [log] = tx.decode_logs(market.ResultPublished)
    return job_id, job_after_publish(job, log), job_key


def _draw(court, job_id, keeper, by_addr):
    tx = court.draw(job_id, sender=keeper)
    [assigned] = tx.decode_logs(court.VerifierAssigned)
    return by_addr[assigned.verifier]


def _audit(court, owner, chain, job_id, job, keeper, by_addr):
    court.set_param(10, 10_000, sender=owner)  # audit every job
    chain.mine(3)
    court.start_audit(job_id, job.as_tuple(), sender=keeper)
    return _draw(court, job_id, keeper, by_addr)


def test_submit__private_format__flags_submitted_at_and_reserves_named_node(
    market, submit, staked_node, private_input, make_node, verifiers, chain
):
    envelope, _ = private_input
    job_id, job, tx = submit(preferred=staked_node.address, input_data=envelope)
    [log] = tx.decode_logs(market.JobSubmitted)
    assert log.submitted_at >= P.PRIVATE_FLAG
    assert log.submitted_at - P.PRIVATE_FLAG == chain.blocks.head.timestamp
    assert bytes(log.input) == envelope
    other = make_node(verifiers[0])
    chain.mine(deltatime=300)  # past the exclusive window: still only the named node
    with ape.reverts("market: reserved for preferred node"):
        market.claim.call(job_id, job.as_tuple(), sender=other)
    # a public job is not flagged
    _, _, tx = submit()
    [public] = tx.decode_logs(market.JobSubmitted)
    assert public.submitted_at < P.PRIVATE_FLAG


def test_dispute__private_job_by_third_party__reverts(court, private_job, funded_challenger):
    job_id, job, _ = private_job
    with ape.reverts("court: only the client disputes a private job"):
        court.dispute.call(job_id, job.as_tuple(), sender=funded_challenger)


def test_hand_key__bad_calls__revert_with_reasons(
    court,
    market,
    private_job,
    published_job,
    funded_client,
    funded_challenger,
    keeper,
    by_addr,
    staked_node,
    chain,
):
    job_id, job, _job_key = private_job
    pub_id, pub_job = published_job
    court.dispute(pub_id, pub_job.as_tuple(), sender=funded_challenger)
    with ape.reverts("court: not a private job"):
        court.hand_key.call(pub_id, b"\x01", sender=staked_node)
    court.dispute(job_id, job.as_tuple(), sender=funded_client)
    with ape.reverts("court: nobody to hand the key to"):
        court.hand_key.call(job_id, b"\x01", sender=funded_client)  # not drawn yet
    _draw(court, job_id, keeper, by_addr)
    with ape.reverts("court: not a key holder"):
        court.hand_key.call(job_id, b"\x01", sender=keeper)
    with ape.reverts("court: empty key"):
        court.hand_key.call(job_id, b"", sender=funded_client)
    _, _, _, deadline = court.key_info(job_id)
    chain.mine(timestamp=deadline + 1)
    with ape.reverts("court: key deadline passed"):
        court.hand_key.call(job_id, b"\x01", sender=staked_node)


def test_dispute__client_hands_key__verifier_decides__state_and_event(
    court, market, private_job, funded_client, keeper, by_addr, chain
):
    job_id, job, job_key = private_job
    court.dispute(job_id, job.as_tuple(), sender=funded_client)
    assert court.key_info(job_id) == (True, False, 0, 0)
    verifier = _draw(court, job_id, keeper, by_addr)
    wrapped = P.wrap_for(job_key, [P.EncryptionKey.generate().pubkey])
    tx = court.hand_key(job_id, wrapped, sender=funded_client)
    [log] = tx.decode_logs(court.KeyHanded)
    assert (log.job_id, log.holder, list(log.recipients), bytes(log.wrapped)) == (
        job_id,
        funded_client,
        [verifier],
        wrapped,
    )
    private, panel, handed_round, deadline = court.key_info(job_id)
    assert (private, panel, handed_round) == (True, False, 1) and deadline > 0
    court.accept(job_id, sender=verifier)
    tx = court.post_verdict(job_id, False, sender=verifier)
    [verdict] = tx.decode_logs(court.VerdictPosted)
    assert bool(verdict.valid) is False  # handed: the verifier's own verdict stands
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    court.settle(job_id, job.as_tuple(), sender=keeper)
    assert market.job_status(job_id) == SLASHED


def test_dispute__client_withholds_key__dispute_fails_and_cannot_be_appealed(
    court, market, private_job, funded_client, keeper, by_addr, chain, staked_node
):
    job_id, job, _ = private_job
    court.dispute(job_id, job.as_tuple(), sender=funded_client)
    verifier = _draw(court, job_id, keeper, by_addr)
    court.accept(job_id, sender=verifier)
    tx = court.post_verdict(job_id, False, sender=verifier)  # a verifier without the key
    [verdict] = tx.decode_logs(court.VerdictPosted)
    assert bool(verdict.valid) is True  # fixed by the court: the client withheld the key
    assert court.dispute_info(job_id).verdict_valid
    with ape.reverts("court: key withheld"):
        court.appeal.call(job_id, sender=funded_client)
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    court.settle(job_id, job.as_tuple(), sender=keeper)
    assert market.job_status(job_id) == FINALIZED
    assert market.balance_of(funded_client) < 1_000 * UNIT - DISPUTE_BOND  # bond lost, job paid


def test_audit__node_withholds_key__fraud_and_whole_stake_slashed(
    court, market, owner, private_job, keeper, by_addr, chain, staked_node
):
    job_id, job, _ = private_job
    verifier = _audit(court, owner, chain, job_id, job, keeper, by_addr)
    assert court.key_info(job_id)[0]
    court.accept(job_id, sender=verifier)
    tx = court.post_verdict(job_id, True, sender=verifier)  # even a "valid" cannot save it
    [verdict] = tx.decode_logs(court.VerdictPosted)
    assert bool(verdict.valid) is False
    with ape.reverts("court: key withheld"):
        court.appeal.call(job_id, sender=staked_node)
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    tx = court.settle(job_id, job.as_tuple(), sender=keeper)
    assert market.job_status(job_id) == SLASHED
    [slash] = tx.decode_logs(market.NodeSlashed)
    assert (slash.node, slash.amount, slash.whole_stake) == (staked_node, 2 * MIN_STAKE, True)


def test_audit__node_hands_key__valid_verdict_stands(
    court, market, owner, private_job, keeper, by_addr, chain, staked_node
):
    job_id, job, job_key = private_job
    verifier = _audit(court, owner, chain, job_id, job, keeper, by_addr)
    court.hand_key(job_id, P.wrap_for(job_key, [NODE_KEY.pubkey]), sender=staked_node)
    court.accept(job_id, sender=verifier)
    tx = court.post_verdict(job_id, True, sender=verifier)
    assert bool(tx.decode_logs(court.VerdictPosted)[0].valid) is True
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    court.settle(job_id, job.as_tuple(), sender=keeper)
    assert market.job_status(job_id) == FINALIZED


def test_replaced_verifier__key_must_be_handed_again(
    court, owner, private_job, keeper, by_addr, chain, staked_node
):
    job_id, job, _job_key = private_job
    first = _audit(court, owner, chain, job_id, job, keeper, by_addr)
    court.hand_key(job_id, b"\x01" * 81, sender=staked_node)
    assert court.key_info(job_id)[2] == 1
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    court.replace_verifier(job_id, sender=keeper)
    second = _draw(court, job_id, keeper, by_addr)
    assert second != first
    _private, _panel, handed_round, deadline = court.key_info(job_id)
    assert (handed_round, court.dispute_info(job_id).rounds) == (1, 2)
    assert deadline >= chain.blocks.head.timestamp
    court.accept(job_id, sender=second)
    tx = court.post_verdict(job_id, True, sender=second)
    assert bool(tx.decode_logs(court.VerdictPosted)[0].valid) is False  # round 2 got no key


def test_appeal__panel_without_key__votes_fixed_to_verdict__with_key__free(
    court, market, owner, private_job, keeper, by_addr, chain, staked_node, fund
):
    job_id, job, job_key = private_job
    verifier = _audit(court, owner, chain, job_id, job, keeper, by_addr)
    court.hand_key(job_id, b"\x01" * 81, sender=staked_node)  # a bad hand-over
    court.accept(job_id, sender=verifier)
    court.post_verdict(job_id, False, sender=verifier)
    fund(staked_node, DISPUTE_BOND)
    market.deposit(DISPUTE_BOND, sender=staked_node)
    court.appeal(job_id, sender=staked_node)
    tx = court.draw(job_id, sender=keeper)
    [drawn] = tx.decode_logs(court.PanelDrawn)
    panel = [by_addr[m] for m in drawn.panel]
    assert not court.key_info(job_id)[1]
    tx = court.panel_vote(job_id, True, sender=panel[0])  # no key handed to the panel yet
    assert bool(tx.decode_logs(court.PanelVoted)[0].valid) is False
    tx = court.hand_key(job_id, P.wrap_for(job_key, [NODE_KEY.pubkey] * 3), sender=staked_node)
    assert list(tx.decode_logs(court.KeyHanded)[0].recipients) == [p.address for p in panel]
    assert court.key_info(job_id)[1]
    tx = court.panel_vote(job_id, True, sender=panel[1])
    assert bool(tx.decode_logs(court.PanelVoted)[0].valid) is True
    assert court.dispute_info(job_id).phase == APPEALED
    assert market.job_status(job_id) == VERIFYING


def test_public_job__third_party_dispute_and_verdict_unchanged(
    court, published_job, funded_challenger, keeper, by_addr, pool
):
    job_id, job = published_job
    court.dispute(job_id, job.as_tuple(), sender=funded_challenger)  # a third party may
    assert court.key_info(job_id) == (False, False, 0, 0)
    verifier = _draw(court, job_id, keeper, by_addr)
    court.accept(job_id, sender=verifier)
    tx = court.post_verdict(job_id, False, sender=verifier)  # no key involved: as posted
    assert bool(tx.decode_logs(court.VerdictPosted)[0].valid) is False
    assert court.dispute_info(job_id).challenger == funded_challenger


def test_code_size__market_and_court_under_eip170(market, court, chain):
    web3 = chain.provider.web3
    for contract in (market, court):
        assert 0 < len(web3.eth.get_code(contract.address)) <= 24_576
