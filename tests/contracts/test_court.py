"""Court: disputes, verifier replacement, appeals to a 3-node panel and random audits (§7)."""

from dataclasses import replace

import ape
import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak
from web3.exceptions import ContractLogicError as Web3LogicError

from tests.contracts.conftest import (
    APPEAL_BOND,
    AUDIT_FEE,
    DISPUTE_BOND,
    FINALIZED,
    MAX_PAYMENT,
    MIN_STAKE,
    NO_SHOW_PENALTY,
    OUTPUT_TOKENS,
    PRICE,
    PUBLISHED,
    SLASHED,
    UNIT,
    VERIFIER_FEE,
    VERIFYING,
    ZERO,
    assert_conserved,
)

PAYMENT = len(OUTPUT_TOKENS) * PRICE


def expected_pick(court, market, job_id, d, *excluded, count: int = 1) -> list | str:
    """The draw rule recomputed off chain: seed = keccak(blockhash(seed_block), job_id,
    rounds, phase); the candidates with the lowest keccak(seed, candidate) win. `d` is the
    record as it was while the draw was pending (phase 7 or 8) or right after it."""
    chain = ape.chain
    seed_hash = bytes(chain.provider.web3.eth.get_block(d.seed_block)["hash"])
    phase = DRAWING if count == 1 else PANEL_DRAWING
    rounds = d.rounds - 1 if count == 1 and d.phase == ASSIGNED else d.rounds
    seed = keccak(
        abi_encode(["bytes32", "uint256", "uint8", "uint8"], [seed_hash, job_id, rounds, phase])
    )
    candidates = market.draw_candidates(d.model_id, d.seed_block, market.min_stake())
    pool = [c for c in candidates if c not in excluded]
    ranked = sorted(pool, key=lambda c: keccak(abi_encode(["bytes32", "address"], [seed, c])))
    return ranked[0] if count == 1 else ranked[:count]


NODE_STAKE = 2 * MIN_STAKE
ASSIGNED, ACCEPTED, VERDICT, APPEALED, UNRESOLVED, SETTLED, DRAWING, PANEL_DRAWING = range(1, 9)


@pytest.fixture(scope="module")
def court(deploy_court, market):
    return deploy_court(market)


@pytest.fixture
def pool(court, make_node, verifiers):
    """Four staked nodes serving the model besides node_op (verifier and panel candidates)."""
    return [make_node(v) for v in verifiers]


@pytest.fixture
def opened(court, market, published_job, pool, funded_challenger, by_addr, keeper):
    """A published job disputed by the challenger, its verifier drawn by a keeper; returns
    (job_id, job, verifier, draw tx)."""
    job_id, job = published_job
    court.dispute(job_id, job.as_tuple(), sender=funded_challenger)
    tx = court.draw(job_id, sender=keeper)
    [assigned] = tx.decode_logs(court.VerifierAssigned)
    return job_id, job, by_addr[assigned.verifier], tx


def _verdict(court, job_id, verifier, valid):
    court.accept(job_id, sender=verifier)
    return court.post_verdict(job_id, valid, sender=verifier)


def audit_and_settle(court, chain, job_id, job, keeper, by_addr, valid: bool):
    """A keeper starts the audit of a selected job and draws; the verifier rules `valid`;
    settled after the appeal window. Returns the verifier."""
    chain.mine(3)
    court.start_audit(job_id, job.as_tuple(), sender=keeper)
    tx = court.draw(job_id, sender=keeper)
    [assigned] = tx.decode_logs(court.VerifierAssigned)
    verifier = by_addr[assigned.verifier]
    _verdict(court, job_id, verifier, valid)
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    court.settle(job_id, job.as_tuple(), sender=keeper)
    return verifier


def _appeal(court, job_id, appellant, by_addr, keeper):
    """Appeals and draws the panel; returns the members."""
    court.appeal(job_id, sender=appellant)
    tx = court.draw(job_id, sender=keeper)
    [drawn] = tx.decode_logs(court.PanelDrawn)
    return [by_addr[m] for m in drawn.panel]


# ---- dispute ----
def test_dispute__takes_bond_requests_draw__draw_assigns_verifier(
    court, market, published_job, pool, funded_challenger, staked_node, keeper, by_addr
):
    job_id, job = published_job
    tx = court.dispute(job_id, job.as_tuple(), sender=funded_challenger)
    assert market.job_status(job_id) == VERIFYING
    assert market.balance_of(funded_challenger) == 1_000 * UNIT - DISPUTE_BOND
    assert market.court_funds() == DISPUTE_BOND
    d = court.dispute_info(job_id)
    # nobody is picked in the disputing transaction: a caller cannot see (and revert) it
    assert (d.kind, d.phase, d.rounds, d.bond, d.verifier) == (1, DRAWING, 0, DISPUTE_BOND, ZERO)
    assert d.seed_block == tx.block_number
    assert not tx.decode_logs(court.VerifierAssigned)
    [log] = tx.decode_logs(court.DisputeOpened)
    assert (log.job_id, log.challenger, log.node, log.bond) == (
        job_id,
        funded_challenger,
        staked_node,
        DISPUTE_BOND,
    )
    [requested] = tx.decode_logs(court.DrawRequested)
    assert (requested.job_id, requested.seed_block, requested.panel) == (
        job_id,
        tx.block_number,
        False,
    )
    [verifying] = tx.decode_logs(market.JobVerifying)
    assert (verifying.payer, verifying.bond) == (funded_challenger, DISPUTE_BOND)

    tx = court.draw(job_id, sender=keeper)
    d = court.dispute_info(job_id)
    assert (d.phase, d.rounds) == (ASSIGNED, 1)
    assert d.verifier == expected_pick(court, market, job_id, d, staked_node, funded_challenger)
    assert d.verifier in pool and d.verifier != staked_node
    [assigned] = tx.decode_logs(court.VerifierAssigned)
    assert (assigned.verifier, assigned.round, assigned.accept_deadline) == (
        d.verifier,
        1,
        d.deadline,
    )
    with ape.reverts("court: nothing to draw"):
        court.draw(job_id, sender=keeper)


def test_dispute__by_the_node_itself__reverts(court, published_job, staked_node, pool):
    job_id, job = published_job
    with ape.reverts("court: node cannot dispute own job"):
        court.dispute(job_id, job.as_tuple(), sender=staked_node)


def test_dispute__too_late__reverts(court, published_job, funded_challenger, pool, chain):
    job_id, job = published_job
    chain.pending_timestamp = job.published_at + 3_601
    with ape.reverts("market: challenge window closed"):
        court.dispute(job_id, job.as_tuple(), sender=funded_challenger)


def test_dispute__without_bond_balance__reverts(court, published_job, challenger, pool):
    job_id, job = published_job
    with ape.reverts("market: insufficient balance for bond"):
        court.dispute(job_id, job.as_tuple(), sender=challenger)


def test_dispute__with_no_other_node__reverts(court, published_job, funded_challenger):
    job_id, job = published_job
    with ape.reverts("court: no eligible verifier"):
        court.dispute(job_id, job.as_tuple(), sender=funded_challenger)


def test_dispute__twice__reverts(court, opened, funded_challenger):
    job_id, job, _, _ = opened
    with ape.reverts("market: job not published"):
        court.dispute(job_id, job.as_tuple(), sender=funded_challenger)


def test_finalize__while_verifying__reverts(market, opened, keeper, chain):
    job_id, job, _, _ = opened
    chain.pending_timestamp = job.published_at + 3_601
    with ape.reverts("market: job not published"):
        market.finalize(job_id, job.as_settlement(), sender=keeper)


# ---- verifier ----
def test_accept__and_verdict__by_verifier__log(court, opened):
    job_id, _, verifier, _ = opened
    tx = court.accept(job_id, sender=verifier)
    d = court.dispute_info(job_id)
    assert d.phase == ACCEPTED
    [log] = tx.decode_logs(court.VerifierAccepted)
    assert (log.verifier, log.verdict_deadline) == (verifier, d.deadline)
    tx = court.post_verdict(job_id, False, sender=verifier)
    d = court.dispute_info(job_id)
    assert (d.phase, d.verdict_valid) == (VERDICT, False)
    [log] = tx.decode_logs(court.VerdictPosted)
    assert (log.verifier, log.valid, log.appeal_deadline) == (verifier, False, d.deadline)


def test_accept__by_other__reverts(court, opened, keeper):
    job_id, _, _, _ = opened
    with ape.reverts("court: not the verifier"):
        court.accept(job_id, sender=keeper)


def test_accept__late__reverts(court, opened, chain):
    job_id, _, verifier, _ = opened
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    with ape.reverts("court: accept deadline passed"):
        court.accept(job_id, sender=verifier)


def test_post_verdict__before_accept__reverts(court, opened):
    job_id, _, verifier, _ = opened
    with ape.reverts("court: not awaiting verdict"):
        court.post_verdict(job_id, True, sender=verifier)


def test_post_verdict__late__reverts(court, opened, chain):
    job_id, _, verifier, _ = opened
    court.accept(job_id, sender=verifier)
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    with ape.reverts("court: verdict deadline passed"):
        court.post_verdict(job_id, True, sender=verifier)


def test_replace_verifier__when_not_late__reverts(court, opened, keeper):
    job_id, _, _, _ = opened
    with ape.reverts("court: verifier not late"):
        court.replace_verifier(job_id, sender=keeper)


def test_replace_verifier__penalises_and_draws_another(court, market, opened, keeper, chain):
    job_id, _, verifier, _ = opened
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    tx = court.replace_verifier(job_id, sender=keeper)
    d = court.dispute_info(job_id)
    assert (d.verifier, d.rounds, d.phase, d.seed_block) == (ZERO, 1, DRAWING, tx.block_number)
    assert market.node_info(verifier).stake == NODE_STAKE - NO_SHOW_PENALTY
    assert market.audit_pool() >= NO_SHOW_PENALTY
    [log] = tx.decode_logs(court.VerifierReplaced)
    assert (log.verifier, log.penalty) == (verifier, NO_SHOW_PENALTY)
    assert tx.decode_logs(court.DrawRequested)
    tx = court.draw(job_id, sender=keeper)
    d = court.dispute_info(job_id)
    assert d.verifier != verifier and d.rounds == 2 and d.phase == ASSIGNED
    [assigned] = tx.decode_logs(court.VerifierAssigned)
    assert (assigned.verifier, assigned.round) == (d.verifier, 2)


def test_replace_verifier__three_no_shows__unresolved_returns_bond(
    court, market, opened, keeper, chain, funded_challenger, staked_node
):
    job_id, job, _, _ = opened
    for round_ in range(3):
        chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
        court.replace_verifier(job_id, sender=keeper)
        if round_ < 2:
            court.draw(job_id, sender=keeper)
    assert court.dispute_info(job_id).phase == UNRESOLVED
    with ape.reverts("court: no verifier to replace"):
        court.replace_verifier(job_id, sender=keeper)
    tx = court.settle(job_id, job.as_tuple(), sender=keeper)
    assert market.job_status(job_id) == FINALIZED
    assert market.claimable(funded_challenger) == DISPUTE_BOND
    assert market.court_funds() == 0
    [log] = tx.decode_logs(court.DisputeSettled)
    assert (log.valid, log.appealed, log.verifier_overturned) == (True, False, False)


# ---- settlement ----
def test_settle__verdict_invalid__slashes_whole_stake_and_rewards(
    court, market, opened, keeper, chain, funded_client, funded_challenger, staked_node
):
    job_id, job, verifier, _ = opened
    _verdict(court, job_id, verifier, False)
    with ape.reverts("court: appeal window open"):
        court.settle(job_id, job.as_tuple(), sender=keeper)
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    audit_before = market.audit_pool()
    tx = court.settle(job_id, job.as_tuple(), sender=keeper)
    reward = NODE_STAKE * 2_500 // 10_000
    assert market.job_status(job_id) == SLASHED
    assert market.balance_of(funded_client) == 1_000 * UNIT  # full refund
    info = market.node_info(staked_node)
    assert info.slashed and (info.stake, info.locked, info.unbonding) == (0, 0, 0)
    assert not market.is_serving(staked_node, job.model_id)
    assert market.claimable(funded_challenger) == DISPUTE_BOND + reward
    assert market.claimable(verifier) == reward
    assert market.audit_pool() == audit_before + NODE_STAKE - 2 * reward
    assert market.court_funds() == 0
    assert court.dispute_info(job_id).phase == SETTLED
    [slash] = tx.decode_logs(market.NodeSlashed)
    assert (slash.node, slash.amount, slash.whole_stake) == (staked_node, NODE_STAKE, True)
    [log] = tx.decode_logs(court.DisputeSettled)
    assert (log.node, log.valid, log.appealed) == (staked_node, False, False)
    with ape.reverts("court: nothing to settle"):
        court.settle(job_id, job.as_tuple(), sender=keeper)


def test_settle__verdict_valid__pays_node_and_verifier_from_bond(
    court, market, opened, keeper, chain, funded_challenger, staked_node
):
    job_id, job, verifier, _ = opened
    _verdict(court, job_id, verifier, True)
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    tx = court.settle(job_id, job.as_tuple(), sender=keeper)
    earned = PAYMENT - PAYMENT * 300 // 10_000
    assert market.job_status(job_id) == FINALIZED
    assert market.claimable(verifier) == VERIFIER_FEE
    assert market.claimable(staked_node) == earned + DISPUTE_BOND - VERIFIER_FEE
    assert market.balance_of(funded_challenger) == 1_000 * UNIT - DISPUTE_BOND
    assert market.court_funds() == 0
    [log] = tx.decode_logs(court.DisputeSettled)
    assert log.valid
    [fin] = tx.decode_logs(market.JobFinalized)
    assert fin.payment == earned


# ---- appeals ----
def test_appeal__panel_overturns_verifier_and_slashes_it(
    court, market, opened, chain, staked_node, by_addr, keeper, pool, funded_challenger, fund
):
    job_id, job, verifier, _ = opened
    _verdict(court, job_id, verifier, False)  # a lazy or wrong verifier
    fund(staked_node, DISPUTE_BOND)  # the node appeals from its prepaid balance
    market.deposit(DISPUTE_BOND, sender=staked_node)
    tx = court.appeal(job_id, sender=staked_node)
    d = court.dispute_info(job_id)
    # the accused appeals cheaply: the dispute bond, not the appeal bond
    assert d.phase == PANEL_DRAWING and d.appellant == staked_node and d.appeal_bond == DISPUTE_BOND
    assert market.balance_of(staked_node) == 0
    [log] = tx.decode_logs(court.AppealOpened)
    assert (log.appellant, log.bond) == (staked_node, DISPUTE_BOND)
    [requested] = tx.decode_logs(court.DrawRequested)
    assert requested.panel
    with ape.reverts("court: already appealed"):
        court.appeal(job_id, sender=funded_challenger)
    tx = court.draw(job_id, sender=keeper)
    d = court.dispute_info(job_id)
    assert d.phase == APPEALED
    assert len(d.panel) == 3 and verifier not in d.panel and staked_node not in d.panel
    [drawn] = tx.decode_logs(court.PanelDrawn)
    assert (list(drawn.panel), drawn.vote_deadline) == (list(d.panel), d.deadline)
    a, b, c = (by_addr[m] for m in d.panel)
    tx = court.panel_vote(job_id, True, sender=a)
    [vote] = tx.decode_logs(court.PanelVoted)
    assert (vote.member, vote.valid) == (a, True)
    with ape.reverts("court: already voted"):
        court.panel_vote(job_id, True, sender=a)
    with ape.reverts("court: not on the panel"):
        court.panel_vote(job_id, True, sender=keeper)
    with ape.reverts("court: vote in progress"):
        court.settle(job_id, job.as_tuple(), sender=keeper)
    court.panel_vote(job_id, True, sender=b)
    tx = court.settle(job_id, job.as_tuple(), sender=keeper)  # majority reached: no wait
    share = NODE_STAKE * 2_500 // 10_000
    assert market.job_status(job_id) == FINALIZED
    assert market.node_info(verifier).slashed
    assert market.claimable(staked_node) >= DISPUTE_BOND + share
    # the panel majority did the verification: it splits the verifier fee and its slash share
    assert market.claimable(a) == market.claimable(b) == share // 2 + VERIFIER_FEE // 2
    assert market.claimable(c) == 0
    assert market.node_info(c).stake == NODE_STAKE - NO_SHOW_PENALTY
    assert market.court_funds() == 0
    [log] = tx.decode_logs(court.DisputeSettled)
    assert (log.valid, log.appealed, log.verifier_overturned) == (True, True, True)


def test_appeal__upheld__bond_pays_panel(
    court, market, opened, chain, by_addr, keeper, funded_challenger, staked_node
):
    job_id, job, verifier, _ = opened
    _verdict(court, job_id, verifier, True)
    a, b, c = _appeal(court, job_id, funded_challenger, by_addr, keeper)
    court.panel_vote(job_id, True, sender=a)
    court.panel_vote(job_id, False, sender=b)
    court.panel_vote(job_id, True, sender=c)
    tx = court.settle(job_id, job.as_tuple(), sender=keeper)
    assert market.job_status(job_id) == FINALIZED
    assert market.claimable(a) == market.claimable(c) == APPEAL_BOND // 2
    assert market.claimable(b) == 0
    assert market.claimable(verifier) == VERIFIER_FEE
    assert not market.node_info(verifier).slashed
    assert market.balance_of(funded_challenger) == 1_000 * UNIT - DISPUTE_BOND - APPEAL_BOND
    [log] = tx.decode_logs(court.DisputeSettled)
    assert (log.valid, log.appealed, log.verifier_overturned) == (True, True, False)


def test_appeal__late__reverts(court, opened, chain, funded_challenger):
    job_id, _, verifier, _ = opened
    _verdict(court, job_id, verifier, True)
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    with ape.reverts("court: appeal window closed"):
        court.appeal(job_id, sender=funded_challenger)


def test_appeal__before_verdict__reverts(court, opened, funded_challenger):
    job_id, _, _, _ = opened
    with ape.reverts("court: no verdict to appeal"):
        court.appeal(job_id, sender=funded_challenger)


def test_panel_vote__late__reverts(court, opened, chain, funded_challenger, by_addr, keeper):
    job_id, _, verifier, _ = opened
    _verdict(court, job_id, verifier, True)
    _appeal(court, job_id, funded_challenger, by_addr, keeper)
    d = court.dispute_info(job_id)
    chain.pending_timestamp = d.deadline + 1
    with ape.reverts("court: vote deadline passed"):
        court.panel_vote(job_id, True, sender=by_addr[d.panel[0]])


def test_panel_vote__without_appeal__reverts(court, opened, keeper):
    job_id, _, _, _ = opened
    with ape.reverts("court: not in appeal"):
        court.panel_vote(job_id, True, sender=keeper)


# ---- audits ----
def test_start_audit__selected_job__requests_draw(
    court, market, owner, pool, submit, claim, publish, staked_node, keeper, chain
):
    court.set_param(10, 10_000, sender=owner)  # audit every job
    job_id, job, _ = submit()
    job, _ = claim(job_id, job, staked_node)
    job, _ = publish(job_id, job, staked_node)
    with ape.reverts("court: audit seed not yet available"):
        court.start_audit(job_id, job.as_tuple(), sender=keeper)
    chain.mine(3)
    assert court.is_audit_selected(job_id, job.published_block)
    tx = court.start_audit(job_id, job.as_tuple(), sender=keeper)
    assert market.job_status(job_id) == VERIFYING
    d = court.dispute_info(job_id)
    assert (d.kind, d.phase, d.challenger, d.bond) == (2, DRAWING, keeper, 0)
    [log] = tx.decode_logs(court.AuditStarted)
    assert (log.job_id, log.keeper) == (job_id, keeper)
    court.draw(job_id, sender=keeper)
    d = court.dispute_info(job_id)
    assert d.phase == ASSIGNED
    assert d.verifier == expected_pick(court, market, job_id, d, staked_node, keeper)


def test_start_audit__not_selected__reverts(
    court, market, submit, claim, publish, staked_node, pool, keeper, chain
):
    jobs = []
    for _ in range(3):
        job_id, job, _ = submit()
        job, _ = claim(job_id, job, staked_node)
        job, _ = publish(job_id, job, staked_node)
        jobs.append((job_id, job))
    chain.mine(3)
    unselected = [(i, j) for i, j in jobs if not court.is_audit_selected(i, j.published_block)]
    assert unselected  # p = 6 %: all three selected has probability 2.2e-4
    job_id, job = unselected[0]
    with ape.reverts("court: not selected for audit"):
        court.start_audit(job_id, job.as_tuple(), sender=keeper)
    assert market.job_status(job_id) == PUBLISHED


def test_audit__fraud__rewards_keeper_and_pays_audit_fee(
    court, market, owner, published_job, pool, keeper, chain, by_addr, funded_client
):
    job_id, job = published_job
    court.set_param(10, 10_000, sender=owner)
    verifier = audit_and_settle(court, chain, job_id, job, keeper, by_addr, valid=False)
    share = NODE_STAKE * 2_500 // 10_000
    # the audit reward is bounded by what the job's own audit share funds on average
    reward = min(AUDIT_FEE, PAYMENT * market.audit_share_bps() // court.audit_rate_bps())
    assert reward < AUDIT_FEE
    assert market.job_status(job_id) == SLASHED
    assert market.balance_of(funded_client) == 1_000 * UNIT
    assert market.claimable(keeper) == share + reward // 10
    assert market.claimable(verifier) == share + reward - reward // 10
    assert market.court_funds() == 0


def test_audit__too_old_seed__reverts(court, owner, published_job, pool, keeper, chain):
    job_id, job = published_job
    court.set_param(10, 10_000, sender=owner)
    chain.mine(260)
    assert not court.is_audit_selected(job_id, job.published_block)
    with ape.reverts("court: audit seed expired"):
        court.start_audit(job_id, job.as_tuple(), sender=keeper)


# ---- owner ----
def test_court_set_param__bounds(court, owner, client):
    tx = court.set_param(2, 120, sender=owner)
    assert court.accept_window() == 120
    [log] = tx.decode_logs(court.ParamChanged)
    assert (log.param, log.old_value, log.new_value) == (2, 600, 120)
    with ape.reverts("court: param out of bounds"):
        court.set_param(1, DISPUTE_BOND, sender=owner)  # appeal bond must exceed dispute bond
    with ape.reverts("court: param out of bounds"):
        court.set_param(10, 49, sender=owner)
    with ape.reverts("court: unknown param"):
        court.set_param(12, 1, sender=owner)
    with ape.reverts("ownable: caller is not the owner"):
        court.set_param(2, 120, sender=client)


def test_court_hooks__job_must_match(court, published_job, funded_challenger, pool):
    job_id, job = published_job
    bad = replace(job, max_payment=MAX_PAYMENT + 1).as_tuple()
    with ape.reverts("market: job fields mismatch"):
        court.dispute(job_id, bad, sender=funded_challenger)


def test_deterrence__params_that_break_it__revert(court, market, owner):
    with ape.reverts("market: breaks deterrence"):
        market.set_param(5, 20_000, sender=owner)  # 2x collateral with p = 5 %
    # the challenger's 25 % can flow back to a cheater (its own sybil keeper or challenger):
    # p x 25 x 0.75 must exceed 1, so p = 5 % (0.94) no longer deters; 5.34 % does
    assert court.deters(250_000) and not court.deters(200_000)
    with ape.reverts("court: breaks deterrence"):
        court.set_param(10, 500, sender=owner)
    with ape.reverts("court: breaks deterrence"):
        court.set_param(10, 533, sender=owner)
    tx = court.set_param(10, 534, sender=owner)
    assert court.audit_rate_bps() == 534
    [log] = tx.decode_logs(court.ParamChanged)
    assert (log.param, log.old_value, log.new_value) == (10, 600, 534)
    with ape.reverts("court: breaks deterrence"):
        court.set_param(8, 2_600, sender=owner)  # a larger challenger share at p = 5.34 %


def test_court_deploy__when_market_collateral_too_low__reverts(
    project, deploy_market, token, owner
):
    weak = deploy_market(token)
    weak.set_param(5, 10_000, sender=owner)
    assert court_deploy_revert(project, weak.address, owner) == "court: breaks deterrence"


# ---- more reverts ----
def test_accept__twice__reverts(court, opened):
    job_id, _, verifier, _ = opened
    court.accept(job_id, sender=verifier)
    with ape.reverts("court: not awaiting acceptance"):
        court.accept(job_id, sender=verifier)


def test_appeal__without_enough_panel_nodes__reverts(
    court, market, published_job, make_node, verifiers, funded_challenger, by_addr
):
    for v in verifiers[:3]:  # verifier + only 2 panel candidates left
        make_node(v)
    job_id, job = published_job
    court.dispute(job_id, job.as_tuple(), sender=funded_challenger)
    tx = court.draw(job_id, sender=funded_challenger)
    [assigned] = tx.decode_logs(court.VerifierAssigned)
    _verdict(court, job_id, by_addr[assigned.verifier], True)
    with ape.reverts("court: panel unavailable"):
        court.appeal(job_id, sender=funded_challenger)
    assert market.balance_of(funded_challenger) == 1_000 * UNIT - DISPUTE_BOND


def test_slashed_node__cannot_stake_update_or_claim(
    court, market, opened, keeper, chain, staked_node, fund, submit
):
    job_id, job, verifier, _ = opened
    _verdict(court, job_id, verifier, False)
    chain.pending_timestamp = court.dispute_info(job_id).deadline + 1
    court.settle(job_id, job.as_tuple(), sender=keeper)
    fund(staked_node, UNIT)
    with ape.reverts("market: node slashed"):
        market.stake(UNIT, sender=staked_node)
    with ape.reverts("market: node slashed"):
        market.update_node(b"\x01" * 64, "x", sender=staked_node)
    with ape.reverts("market: node slashed"):
        market.serve_model(job.model_id, 1, sender=staked_node)
    new_id, new_job, _ = submit()
    with ape.reverts("market: node slashed"):
        market.claim(new_id, new_job.as_tuple(), sender=staked_node)


def test_court_deploy__zero_market__reverts(project, owner):
    assert court_deploy_revert(project, ZERO, owner) == "court: zero market"


def court_deploy_revert(project, market: str, owner) -> str:
    """The revert reason of a Court deployment, simulated with eth_call (ape's deploy under
    `ape.reverts` sometimes fails to decode a constructor's revert in a long session)."""
    code = bytes.fromhex(project.Court.contract_type.deployment_bytecode.bytecode[2:])
    args = abi_encode(
        ["address"] + ["uint256"] * 5,
        [market, DISPUTE_BOND, APPEAL_BOND, VERIFIER_FEE, NO_SHOW_PENALTY, AUDIT_FEE],
    )
    with pytest.raises(Web3LogicError) as err:
        ape.chain.provider.web3.eth.call({"from": owner.address, "data": code + args})
    return err.value.message.removeprefix("execution reverted: ")


def test_conservation__holds_through_overturned_appeal_and_withdrawals(
    court, market, token, accounts, opened, chain, staked_node, fund, keeper, by_addr
):
    job_id, job, verifier, _ = opened
    assert_conserved(market, token, accounts, live_escrow=MAX_PAYMENT)
    _verdict(court, job_id, verifier, False)
    fund(staked_node, APPEAL_BOND)
    market.deposit(APPEAL_BOND, sender=staked_node)
    panel = _appeal(court, job_id, staked_node, by_addr, keeper)
    assert_conserved(market, token, accounts, live_escrow=MAX_PAYMENT)
    for member in panel[:2]:
        court.panel_vote(job_id, True, sender=member)
    court.settle(job_id, job.as_tuple(), sender=keeper)
    assert market.court_funds() == 0
    assert_conserved(market, token, accounts)
    for account in accounts:
        if market.claimable(account) > 0:
            market.withdraw(sender=account)
    assert_conserved(market, token, accounts)
