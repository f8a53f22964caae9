"""Shared fixtures for the contract unit tests: roles, deploy factories, job helpers.

Everything runs on a real Anvil chain through ape, with the project's real ERC20 test
token. ape snapshots the chain around every test, so module-scoped deployments are cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import pytest
from eth_utils import keccak
from verinfer.digest import SamplingParams, encode_params, model_id, result_digest
from verinfer.jobs import settlement_of

UNIT = 10**18
MIN_STAKE = 1_000 * UNIT
DISPUTE_BOND = 100 * UNIT
APPEAL_BOND = 300 * UNIT
VERIFIER_FEE = 20 * UNIT
NO_SHOW_PENALTY = 50 * UNIT
AUDIT_FEE = 5 * UNIT
PRICE = 10**15  # per output token
MAX_PAYMENT = 10**17
ZERO = "0x" + "00" * 20
PUBKEY = bytes(range(64))
MODEL = ("verinfer/tiny", "r1", keccak(b"manifest"))
MODEL_ID = model_id(*MODEL)
INPUT = bytes((i * 7 + 1) % 256 or 1 for i in range(256))
PARAMS = encode_params(SamplingParams(max_tokens=64))
OUTPUT_TOKENS = list(range(1, 65))

OPEN, CLAIMED, PUBLISHED, VERIFYING, FINALIZED, CANCELLED, EXPIRED, SLASHED = range(1, 9)


@dataclass(frozen=True)
class Job:
    """Python mirror of IMarket.Job, in ABI order."""

    client: str
    model_id: bytes
    input_hash: bytes
    params_hash: bytes
    max_tokens: int
    max_payment: int
    preferred_node: str
    submitted_at: int
    claim_deadline: int
    result_deadline: int
    node: str = ZERO
    price_per_token: int = 0
    collateral: int = 0
    output_tokens: int = 0
    finish_reason: int = 0
    result_digest: bytes = b"\x00" * 32
    published_at: int = 0
    published_block: int = 0

    def as_tuple(self) -> tuple[Any, ...]:
        """The struct as ape expects it for a tuple argument."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def as_settlement(self) -> tuple[Any, ...]:
        """The `IMarket.Settlement` that finalize takes."""
        return settlement_of(self)


def job_from_submitted(log: Any, input_data: bytes, params: bytes) -> Job:
    """Rebuild the Job from a JobSubmitted log (as an off-chain node would)."""
    return Job(
        client=log.client,
        model_id=bytes(log.model_id),
        input_hash=keccak(input_data),
        params_hash=keccak(params),
        max_tokens=log.max_tokens,
        max_payment=log.max_payment,
        preferred_node=log.preferred_node,
        submitted_at=log.submitted_at,
        claim_deadline=log.claim_deadline,
        result_deadline=log.result_deadline,
    )


def job_after_claim(job: Job, log: Any) -> Job:
    """Apply a JobClaimed log."""
    return replace(
        job, node=log.node, price_per_token=log.price_per_token, collateral=log.collateral
    )


def job_after_publish(job: Job, log: Any) -> Job:
    """Apply a ResultPublished log."""
    return replace(
        job,
        output_tokens=log.output_tokens,
        finish_reason=log.finish_reason,
        result_digest=bytes(log.result_digest),
        published_at=log.published_at,
        published_block=log.published_block,
    )


def pack(tokens: list[int]) -> bytes:
    """Packed big-endian uint32 token ids."""
    return b"".join(t.to_bytes(4, "big") for t in tokens)


# ---- roles ----
@pytest.fixture(scope="session")
def owner(accounts):
    return accounts[0]


@pytest.fixture(scope="session")
def client(accounts):
    return accounts[1]


@pytest.fixture(scope="session")
def node_op(accounts):
    return accounts[2]


@pytest.fixture(scope="session")
def challenger(accounts):
    return accounts[3]


@pytest.fixture(scope="session")
def keeper(accounts):
    return accounts[4]


@pytest.fixture(scope="session")
def fee_recipient(accounts):
    return accounts[5]


@pytest.fixture(scope="session")
def verifiers(accounts):
    """Further staked nodes that can be picked as verifiers or panel members."""
    return [accounts[6], accounts[7], accounts[8], accounts[9]]


# ---- deploy factories ----
@pytest.fixture(scope="module")
def deploy_token(project, owner):
    def _deploy(kind: str = "TestToken"):
        return getattr(project, kind).deploy("Test Token", "TT", 18, sender=owner)

    return _deploy


@pytest.fixture(scope="module")
def deploy_market(project, owner, fee_recipient):
    def _deploy(token, min_stake: int = MIN_STAKE):
        return project.Market.deploy(token, min_stake, fee_recipient, sender=owner)

    return _deploy


@pytest.fixture(scope="module")
def deploy_court(project, owner):
    def _deploy(market):
        court = project.Court.deploy(
            market,
            DISPUTE_BOND,
            APPEAL_BOND,
            VERIFIER_FEE,
            NO_SHOW_PENALTY,
            AUDIT_FEE,
            sender=owner,
        )
        market.set_court(court, sender=owner)
        return court

    return _deploy


@pytest.fixture(scope="module")
def token(deploy_token):
    return deploy_token()


@pytest.fixture(scope="module")
def market(deploy_market, token):
    return deploy_market(token)


@pytest.fixture
def fund(token, market):
    """Mint `amount` to `account` and approve the market for it."""

    def _fund(account, amount: int = 10_000 * UNIT):
        token.mint(account, amount, sender=account)
        token.approve(market, amount, sender=account)

    return _fund


@pytest.fixture
def registered_model(market, owner):
    market.register_model(*MODEL, sender=owner)
    return MODEL_ID


@pytest.fixture
def make_node(market, fund, registered_model):
    """Register, stake and serve the model for an account."""

    def _make(account, stake: int = 2 * MIN_STAKE, price: int = PRICE):
        fund(account, stake)
        market.register_node(PUBKEY, f"http://{account.address[:8]}", sender=account)
        market.stake(stake, sender=account)
        market.serve_model(registered_model, price, sender=account)
        return account

    return _make


@pytest.fixture
def staked_node(make_node, node_op):
    return make_node(node_op)


@pytest.fixture
def funded_client(fund, market, client):
    fund(client)
    market.deposit(1_000 * UNIT, sender=client)
    return client


@pytest.fixture
def funded_challenger(fund, market, challenger):
    fund(challenger)
    market.deposit(1_000 * UNIT, sender=challenger)
    return challenger


@pytest.fixture
def by_addr(accounts):
    return {a.address: a for a in accounts}


@pytest.fixture
def submit(market, chain, registered_model, funded_client):
    """Submit a job; returns (job_id, Job, receipt)."""

    def _submit(
        preferred: str = ZERO,
        max_payment: int = MAX_PAYMENT,
        input_data: bytes = INPUT,
        params: bytes = PARAMS,
        claim_in: int = 600,
        result_in: int = 1_200,
        sender=None,
    ):
        sender = sender or funded_client
        now = chain.pending_timestamp
        tx = market.submit(
            registered_model,
            input_data,
            params,
            max_payment,
            preferred,
            now + claim_in,
            now + result_in,
            sender=sender,
        )
        [log] = tx.decode_logs(market.JobSubmitted)
        return log.job_id, job_from_submitted(log, input_data, params), tx

    return _submit


@pytest.fixture
def claim(market):
    def _claim(job_id: int, job: Job, node):
        tx = market.claim(job_id, job.as_tuple(), sender=node)
        [log] = tx.decode_logs(market.JobClaimed)
        return job_after_claim(job, log), tx

    return _claim


@pytest.fixture
def publish(market):
    def _publish(job_id: int, job: Job, node, tokens: list[int] | None = None, finish: int = 1):
        tokens = OUTPUT_TOKENS if tokens is None else tokens
        digest = result_digest(job_id, job.model_id, INPUT, PARAMS, tokens, finish)
        tx = market.publish(
            job_id, job.as_tuple(), pack(tokens), len(tokens), finish, digest, sender=node
        )
        [log] = tx.decode_logs(market.ResultPublished)
        return job_after_publish(job, log), tx

    return _publish


@pytest.fixture
def published_job(submit, claim, publish, staked_node):
    """A job submitted, claimed and published by `staked_node`."""
    job_id, job, _ = submit()
    job, _ = claim(job_id, job, staked_node)
    job, _ = publish(job_id, job, staked_node)
    return job_id, job


def assert_conserved(market, token, accounts, live_escrow: int = 0) -> None:
    """PROTOCOL §2: the market's token balance equals the sum of what it owes."""
    owed = (
        sum(market.balance_of(a) + market.claimable(a) for a in accounts)
        + live_escrow
        + market.total_stake()
        + market.court_funds()
        + market.protocol_fees()
        + market.audit_pool()
    )
    assert token.balanceOf(market) == owed
