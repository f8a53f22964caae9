"""Contract findings of the court v2 fuzz work, as short deterministic sequences on boa
(regression tests now that the contract handles them; the stateful model in model.py
follows the same rules)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boa
import pytest
from eth_utils import keccak
from verinfer.digest import SamplingParams, encode_params, model_id

from .deployers import deployer
from .model import ZERO, Job

MODEL = ("verinfer/findings", "r1", keccak(b"findings manifest"))
MODEL_ID = model_id(*MODEL)
MIN_STAKE = 1_000
PARAMS = encode_params(SamplingParams(max_tokens=8))
DIGEST = keccak(b"the true result")


class Chain:
    """A market and its court with funded, approved accounts."""

    def __init__(self) -> None:
        self.owner = boa.env.generate_address("owner")
        self.client = boa.env.generate_address("client")
        with boa.env.prank(self.owner):
            self.token = deployer("contracts/test/TestToken.vy").deploy("T", "T", 18)
            self.market = deployer("contracts/Market.vy").deploy(
                self.token.address, MIN_STAKE, self.owner
            )
            self.market.register_model(*MODEL)
            self.court = deployer("contracts/Court.vy").deploy(
                self.market.address, 100, 300, 20, 50, 50
            )
            self.market.set_court(self.court.address)
        boa.env.evm.patch.prev_hashes = [keccak(b"block %d" % i) for i in range(256)]
        self.fund(self.client)

    def fund(self, account: str) -> None:
        self.token.mint(account, 10**9)
        with boa.env.prank(account):
            self.token.approve(self.market.address, 2**256 - 1)
            self.market.deposit(10_000)

    def node(self, alias: str, stake: int = 5_000) -> str:
        """A registered node with `stake`, serving the model."""
        node = boa.env.generate_address(alias)
        self.fund(node)
        with boa.env.prank(node):
            self.market.register_node(bytes(range(64)), "")
            self.market.stake(stake)
            self.market.serve_model(MODEL_ID, 1)
        return node

    def job(self, max_payment: int = 40) -> tuple[int, Job]:
        now = boa.env.evm.patch.timestamp
        with boa.env.prank(self.client):
            job_id = self.market.submit(
                MODEL_ID, b"prompt", PARAMS, max_payment, ZERO, now + 1_000, now + 2_000
            )
        job = Job(
            client=self.client,
            model_id=MODEL_ID,
            input_hash=keccak(b"prompt"),
            params_hash=keccak(PARAMS),
            max_tokens=8,
            max_payment=max_payment,
            preferred_node=ZERO,
            submitted_at=now,
            claim_deadline=now + 1_000,
            result_deadline=now + 2_000,
        )
        return job_id, job

    def claim(self, job_id: int, job: Job, node: str) -> Job:
        with boa.env.prank(node):
            self.market.claim(job_id, job)
        collateral = job.max_payment * self.market.collateral_bps() // 10_000
        return job._replace(node=node, price_per_token=1, collateral=collateral)

    def publish(self, job_id: int, job: Job) -> Job:
        with boa.env.prank(job.node):
            self.market.publish(job_id, job, b"\x00" * 32, 8, 0, DIGEST)
        return job._replace(
            output_tokens=8,
            result_digest=DIGEST,
            published_at=boa.env.evm.patch.timestamp,
            published_block=boa.env.evm.patch.block_number,
        )


def mine(blocks: int = 1) -> None:
    boa.env.time_travel(blocks=blocks)


@pytest.fixture
def chain() -> Iterator[Chain]:
    with boa.env.anchor():
        yield Chain()


def dispute_info(chain: Chain, job_id: int) -> Any:
    return chain.court.dispute_info(job_id)


def _framed(chain: Chain) -> tuple[str, str, str, int, Any]:
    """An attacker disputes an honest result and the only candidate, its verifier, rules
    'invalid' (a lie): returns (accused, verifier, attacker, job_id, job)."""
    accused, verifier = chain.node("accused"), chain.node("lying verifier")
    mine()
    attacker = boa.env.generate_address("attacker")
    chain.fund(attacker)
    job_id, job = chain.job()
    job = chain.publish(job_id, chain.claim(job_id, job, accused))
    with boa.env.prank(attacker):
        chain.court.dispute(job_id, job)
    mine()
    chain.court.draw(job_id)
    assert dispute_info(chain, job_id).verifier == verifier
    with boa.env.prank(verifier):
        chain.court.accept(job_id)
        chain.court.post_verdict(job_id, False)  # a lie: the result is the true one
    return accused, verifier, attacker, job_id, job


def test_accused_keeps_its_appeal_when_a_front_runners_panel_thins_out(chain: Chain) -> None:
    """An attacker challenges an honest result, its verifier rules 'invalid', and the
    attacker appeals first while two of its own nodes serve the model, then takes them out
    of the set (unbond below the minimum) before the panel draw. Found on the first court
    v2: the draw came up short of 3, returned the bond, kept the appeal as used and let
    the verdict stand, so the accused got 'court: already appealed' and lost its whole
    stake. Now the members left form the panel and their majority decides; with nobody
    left the appeal is void and the accused can appeal."""
    accused, verifier, attacker, job_id, job = _framed(chain)
    honest = [chain.node("honest 1"), chain.node("honest 2")]
    sybils = [chain.node("attacker node 1"), chain.node("attacker node 2")]
    mine()
    with boa.env.prank(attacker):
        chain.court.appeal(job_id)  # 4 candidates now
    for sybil in sybils:
        with boa.env.prank(sybil):
            chain.market.unbond(5_000)  # below the minimum: out of the set
    mine()
    chain.court.draw(job_id)
    info = dispute_info(chain, job_id)
    assert (info.phase, sorted(info.panel)) == (4, sorted(honest))  # the 2 left
    for member in honest:
        with boa.env.prank(member):
            chain.court.panel_vote(job_id, True)
    chain.court.settle(job_id, job)
    assert chain.court.dispute_info(job_id).final_valid
    assert not chain.market.node_info(accused).slashed
    assert chain.market.node_info(verifier).slashed


def test_void_appeal_reopens_the_window_for_the_accused(chain: Chain) -> None:
    """The same, but every panel candidate leaves before the draw: the appeal is void, its
    bond goes back, and the accused appeals once nodes serve the model again."""
    accused, _, attacker, job_id, job = _framed(chain)
    sybils = [chain.node(f"attacker node {i}") for i in range(3)]
    mine()
    balance = chain.market.balance_of(attacker)
    with boa.env.prank(attacker):
        chain.court.appeal(job_id)
    for sybil in sybils:
        with boa.env.prank(sybil):
            chain.market.unbond(5_000)
    mine()
    chain.court.draw(job_id)
    info = dispute_info(chain, job_id)
    assert (info.phase, list(info.panel), info.appellant) == (3, [], ZERO)
    assert chain.market.balance_of(attacker) + chain.market.claimable(attacker) == balance
    honest = [chain.node(f"honest {i}") for i in range(3)]
    mine()
    with boa.env.prank(accused):
        chain.court.appeal(job_id)  # with the dispute bond
    mine()
    chain.court.draw(job_id)
    assert sorted(dispute_info(chain, job_id).panel) == sorted(honest)
    for member in honest[:2]:
        with boa.env.prank(member):
            chain.court.panel_vote(job_id, True)
    chain.court.settle(job_id, job)
    assert not chain.market.node_info(accused).slashed


def test_expire_penalty_below_min_stake_leaves_the_active_set(chain: Chain) -> None:
    """A node with 1,100 staked claims a job with 1,000 collateral and lets it expire: the
    50 % penalty leaves it 600 < 1,000 = min_stake. Like unbond and the no-show penalty,
    that takes it out of the model's active set (found on the first court v2: it stayed
    until someone called remove_node)."""
    node = chain.node("node", stake=1_100)
    job_id, job = chain.job(max_payment=40)  # collateral 25x: 1,000
    job = chain.claim(job_id, job, node)
    boa.env.time_travel(seconds=2_001)
    chain.market.expire(job_id, job)
    assert chain.market.node_info(node).stake == 600
    assert node not in chain.market.model_nodes(MODEL_ID)
