"""Ghost model of the market for the stateful fuzz harness.

The model is written from PROTOCOL.md and the market's documented rules, independently
of the contract: every rule asks it first which revert reason (if any) the contract must
give, and after a successful call it applies the same effects to its own books. The
invariants then compare the contract with these books and with the token balance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

MAX_BPS = 10_000
ZERO = "0x" + "00" * 20
OPEN, CLAIMED, PUBLISHED, VERIFYING, FINALIZED, CANCELLED, EXPIRED, SLASHED = range(1, 9)
LIVE = (OPEN, CLAIMED, PUBLISHED, VERIFYING)
TERMINAL = (FINALIZED, CANCELLED, EXPIRED, SLASHED)
STATUS_REASON = {
    OPEN: "market: job not open",
    CLAIMED: "market: job not claimed",
    PUBLISHED: "market: job not published",
    VERIFYING: "market: job not verifying",
}


class Job(NamedTuple):
    """IMarket.Job in ABI order (boa takes it as a tuple)."""

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


@dataclass
class JobState:
    """A job as the model knows it: its fields and status."""

    job_id: int
    job: Job
    status: int = OPEN


@dataclass
class NodeState:
    """A node's registration and stake accounting."""

    registered: bool = False
    slashed: bool = False
    stake: int = 0
    locked: int = 0
    unbonding: int = 0
    unbond_ready_at: int = 0
    serving: bool = False
    price: int = 0


@dataclass(frozen=True)
class Params:
    """The market parameters the model needs (read once after deployment)."""

    fee_bps: int
    audit_share_bps: int
    challenge_window: int
    exclusive_window: int
    min_stake: int
    collateral_bps: int
    expire_penalty_bps: int
    unbonding_delay: int
    token_fee_bps: int  # burnt by the token on every transfer (0 for plain tokens)


@dataclass
class Books:
    """Everything the market owes, per bucket, plus the actors' wallets."""

    params: Params
    wallet: dict[str, int] = field(default_factory=dict)
    balance: dict[str, int] = field(default_factory=dict)
    claimable: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    jobs: list[JobState] = field(default_factory=list)
    protocol_fees: int = 0
    audit_pool: int = 0
    court_funds: int = 0

    # ---- token movements ----
    def received(self, amount: int) -> int:
        """What arrives when `amount` is transferred with this token."""
        return amount - amount * self.params.token_fee_bps // MAX_BPS

    def pull(self, account: str, amount: int) -> int:
        """Tokens move from `account`'s wallet into the market; returns what arrived."""
        self.wallet[account] -= amount
        return self.received(amount)

    def push(self, account: str, amount: int) -> None:
        """The market transfers `amount` to `account`'s wallet."""
        self.wallet[account] = self.wallet.get(account, 0) + self.received(amount)

    def credit(self, account: str, amount: int) -> None:
        """Credit `claimable[account]` (pull payment)."""
        self.claimable[account] = self.claimable.get(account, 0) + amount

    # ---- totals ----
    def live_escrow(self) -> int:
        """Sum of max payments of jobs that are not terminal."""
        return sum(j.job.max_payment for j in self.jobs if j.status in LIVE)

    def total_stake(self) -> int:
        """Bonded plus unbonding stake of every node."""
        return sum(n.stake + n.unbonding for n in self.nodes.values())

    def owed(self) -> int:
        """The right side of the conservation invariant (PROTOCOL §2)."""
        return (
            sum(self.balance.values())
            + self.live_escrow()
            + self.total_stake()
            + self.court_funds
            + sum(self.claimable.values())
            + self.protocol_fees
            + self.audit_pool
        )

    # ---- job effects ----
    def pay(self, js: JobState) -> tuple[int, int, int, int]:
        """Settle a job whose result stands; returns (earned, refund, fee, audit_share)."""
        job, p = js.job, self.params
        price = min(job.output_tokens * job.price_per_token, job.max_payment)
        fee = price * p.fee_bps // MAX_BPS
        audit = price * p.audit_share_bps // MAX_BPS
        earned = price - fee - audit
        refund = job.max_payment - price
        node = self.nodes[job.node]
        node.locked -= min(node.locked, job.collateral)
        if earned:
            self.credit(job.node, earned)
        self.balance[job.client] += refund
        self.protocol_fees += fee
        self.audit_pool += audit
        js.status = FINALIZED
        return earned, refund, fee, audit

    def expire(self, js: JobState) -> tuple[int, int]:
        """A claimed job ran out of time; returns (refund, penalty)."""
        job = js.job
        node = self.nodes[job.node]
        node.locked -= min(node.locked, job.collateral)
        penalty = min(job.collateral * self.params.expire_penalty_bps // MAX_BPS, node.stake)
        node.stake -= penalty
        refund = job.max_payment + penalty
        self.balance[job.client] += refund
        js.status = EXPIRED
        return refund, penalty

    def slash_whole(self, node_addr: str) -> int:
        """Whole-stake slash: stake and unbonding go to the court funds."""
        node = self.nodes[node_addr]
        taken = node.stake + node.unbonding
        node.stake = node.locked = node.unbonding = 0
        node.slashed = True
        node.serving = False
        node.price = 0
        self.court_funds += taken
        return taken

    def slash_partial(self, node_addr: str, amount: int) -> int:
        """Partial slash from free then unbonding stake, into the court funds."""
        node = self.nodes[node_addr]
        from_free = min(amount, node.stake - node.locked)
        from_unbonding = min(amount - from_free, node.unbonding)
        node.stake -= from_free
        node.unbonding -= from_unbonding
        self.court_funds += from_free + from_unbonding
        return from_free + from_unbonding

    # ---- predictions (the revert reason the contract must give, or None) ----
    def claim_reason(self, js: JobState, node_addr: str, now: int) -> str | None:
        """Why `node_addr` may not claim `js` now."""
        job, p = js.job, self.params
        node = self.nodes.get(node_addr, NodeState())
        if js.status != OPEN:
            return STATUS_REASON[OPEN]
        if now > job.claim_deadline:
            return "market: claim deadline passed"
        if (
            job.preferred_node != ZERO
            and node_addr != job.preferred_node
            and now < job.submitted_at + p.exclusive_window
        ):
            return "market: reserved for preferred node"
        if not node.registered:
            return "market: not a node"
        if node.slashed:
            return "market: node slashed"
        if not node.serving:
            return "market: model not served"
        if node.stake < p.min_stake:
            return "market: stake too low"
        if node.stake - node.locked < self.collateral(job):
            return "market: free stake too low"
        return None

    def collateral(self, job: Job) -> int:
        """Stake locked when `job` is claimed."""
        return job.max_payment * self.params.collateral_bps // MAX_BPS

    def apply_claim(self, js: JobState, node_addr: str) -> None:
        """Record a successful claim."""
        node = self.nodes[node_addr]
        collateral = self.collateral(js.job)
        node.locked += collateral
        js.job = js.job._replace(node=node_addr, price_per_token=node.price, collateral=collateral)
        js.status = CLAIMED

    def publish_reason(
        self, js: JobState, sender: str, output_tokens: int, now: int, status: int = CLAIMED
    ) -> str | None:
        """Why `sender` may not publish `output_tokens` for `js` now."""
        if js.status != status:
            return STATUS_REASON[status]
        if sender != js.job.node:
            return "market: not the claimant"
        if now > js.job.result_deadline:
            return "market: result deadline passed"
        if output_tokens > js.job.max_tokens:
            return "market: too many output tokens"
        return None

    def apply_publish(
        self,
        js: JobState,
        output_tokens: int,
        finish_reason: int,
        digest: bytes,
        now: int,
        block: int,
    ) -> None:
        """Record a successful publish."""
        js.job = js.job._replace(
            output_tokens=output_tokens,
            finish_reason=finish_reason,
            result_digest=digest,
            published_at=now,
            published_block=block,
        )
        js.status = PUBLISHED

    def finalize_reason(self, js: JobState, now: int) -> str | None:
        """Why `js` may not be finalized now."""
        if js.status != PUBLISHED:
            return STATUS_REASON[PUBLISHED]
        if now <= js.job.published_at + self.params.challenge_window:
            return "market: challenge window open"
        return None

    def expire_reason(self, js: JobState, now: int) -> str | None:
        """Why `js` may not be expired now."""
        if js.status != CLAIMED:
            return STATUS_REASON[CLAIMED]
        if now <= js.job.result_deadline:
            return "market: result deadline not passed"
        return None

    def cancel_reason(self, js: JobState, sender: str, now: int) -> str | None:
        """Why `sender` may not cancel `js` now."""
        if js.status != OPEN:
            return STATUS_REASON[OPEN]
        if sender != js.job.client and now <= js.job.claim_deadline:
            return "market: claim deadline not passed"
        return None

    def node_reason(self, node_addr: str) -> str | None:
        """Why `node_addr` may not act as a node (stake, unbond, serve)."""
        node = self.nodes.get(node_addr, NodeState())
        if not node.registered:
            return "market: not a node"
        if node.slashed:
            return "market: node slashed"
        return None


# ---- court ----
KIND_DISPUTE, KIND_AUDIT = 1, 2
ASSIGNED, ACCEPTED, VERDICT, APPEALED, UNRESOLVED, SETTLED = range(1, 7)
MAX_ROUNDS = 3


@dataclass(frozen=True)
class CourtParams:
    """The court parameters the model needs."""

    dispute_bond: int
    appeal_bond: int
    verifier_fee: int
    no_show_penalty: int
    audit_fee: int
    accept_window: int
    verdict_window: int
    appeal_window: int
    vote_window: int
    slash_challenger_bps: int
    slash_verifier_bps: int


@dataclass
class Dispute:
    """A dispute or audit as the model knows it."""

    kind: int
    challenger: str
    bond: int
    node: str
    excluded: set[str]
    verifier: str = ZERO
    phase: int = ASSIGNED
    rounds: int = 0
    deadline: int = 0
    verdict_valid: bool = False
    appellant: str = ZERO
    appeal_bond: int = 0
    panel: list[str] = field(default_factory=list)
    votes: dict[str, bool] = field(default_factory=dict)


class CourtBooks:
    """The court's rules applied to the market's books (the court itself holds nothing)."""

    def __init__(self, books: Books, params: CourtParams) -> None:
        self.books, self.p = books, params
        self.disputes: dict[int, Dispute] = {}

    def eligible(self, node_addr: str, excluded: set[str]) -> bool:
        """Can `node_addr` be picked as verifier or panel member?"""
        n = self.books.nodes.get(node_addr, NodeState())
        return (
            node_addr not in excluded
            and n.registered
            and not n.slashed
            and n.serving
            and n.stake >= self.books.params.min_stake
        )

    def candidates(self, excluded: set[str]) -> list[str]:
        return [a for a in self.books.nodes if self.eligible(a, excluded)]

    def open_reason(self, js: JobState, sender: str, bond: int, now: int) -> str | None:
        """Why `sender` may not open a dispute/audit with `bond` on `js` now."""
        if js.status != PUBLISHED:
            return STATUS_REASON[PUBLISHED]
        if now > js.job.published_at + self.books.params.challenge_window:
            return "market: challenge window closed"
        if bond and self.books.balance.get(sender, 0) < bond:
            return "market: insufficient balance for bond"
        if not self.candidates({js.job.node, sender}):
            return "court: no eligible verifier"
        return None

    def take_bond(self, payer: str, amount: int) -> None:
        self.books.balance[payer] -= amount
        self.books.court_funds += amount

    def pay(self, account: str, amount: int) -> None:
        """court_pay: court funds -> claimable."""
        assert self.books.court_funds >= amount, "model: court funds short"
        self.books.court_funds -= amount
        self.books.credit(account, amount)

    def to_audit_pool(self, amount: int) -> None:
        self.books.court_funds -= amount
        self.books.audit_pool += amount

    def pay_from_audit_pool(self, account: str, amount: int) -> None:
        paid = min(amount, self.books.audit_pool)
        self.books.audit_pool -= paid
        if paid:
            self.books.credit(account, paid)

    def penalise(self, node_addr: str) -> int:
        """No-show penalty: partial slash moved into the audit pool."""
        taken = self.books.slash_partial(node_addr, self.p.no_show_penalty)
        self.to_audit_pool(taken)
        return taken

    def split(self, members: list[str], amount: int) -> None:
        if amount == 0:
            return
        paid = 0
        if members:
            share = amount // len(members)
            for m in members:
                if share:
                    self.pay(m, share)
                    paid += share
        if amount > paid:
            self.to_audit_pool(amount - paid)

    def settle_reason(self, d: Dispute | None, now: int) -> str | None:
        """Why the dispute `d` may not be settled now."""
        if d is None:
            return "court: nothing to settle"
        if d.phase == VERDICT:
            return "court: appeal window open" if now <= d.deadline else None
        if d.phase == APPEALED:
            decided = max(self.tally(d)) >= 2
            return None if decided or now > d.deadline else "court: vote in progress"
        return None if d.phase == UNRESOLVED else "court: nothing to settle"

    def tally(self, d: Dispute) -> tuple[int, int]:
        valid = sum(1 for v in d.votes.values() if v)
        return valid, len(d.votes) - valid

    def settle(self, js: JobState, d: Dispute) -> bool:
        """Apply the outcome of a due dispute; returns the final verdict."""
        b, p = self.books, self.p
        appealed, unresolved = d.phase == APPEALED, d.phase == UNRESOLVED
        final, overturned = True, False
        if d.phase == VERDICT:
            final = d.verdict_valid
        elif appealed:
            valid, invalid = self.tally(d)
            decided = valid >= 2 or invalid >= 2
            final = valid >= 2 if decided else d.verdict_valid
            overturned = final != d.verdict_valid
        d.phase = SETTLED
        slashed = 0
        if final:
            b.pay(js)
        else:
            b.balance[js.job.client] += js.job.max_payment
            slashed = b.slash_whole(js.job.node)
            js.status = SLASHED
        workers = [d.verifier]
        if appealed:
            valid, invalid = self.tally(d)
            majority = []
            if valid >= 2 or invalid >= 2:
                majority = [m for m, v in d.votes.items() if v == final]
            if overturned:
                taken = b.slash_whole(d.verifier)
                to_appellant = taken * p.slash_challenger_bps // MAX_BPS
                self.pay(d.appellant, d.appeal_bond + to_appellant)
                to_panel = taken * p.slash_verifier_bps // MAX_BPS
                self.split(majority, to_panel)
                if taken - to_appellant - to_panel:
                    self.to_audit_pool(taken - to_appellant - to_panel)
                workers = majority
            else:
                self.split(majority, d.appeal_bond)
            for member in d.panel:
                if member not in d.votes:
                    self.penalise(member)
        if unresolved:
            if d.bond:
                self.pay(d.challenger, d.bond)
        elif final:
            if d.kind == KIND_AUDIT:
                for w in workers:
                    self.pay_from_audit_pool(w, p.audit_fee // len(workers))
            else:
                fee = min(p.verifier_fee, d.bond)
                self.split(workers, fee)
                if d.bond > fee:
                    self.pay(js.job.node, d.bond - fee)
        else:
            to_challenger = slashed * p.slash_challenger_bps // MAX_BPS
            to_verifier = slashed * p.slash_verifier_bps // MAX_BPS
            if d.bond + to_challenger:
                self.pay(d.challenger, d.bond + to_challenger)
            self.split(workers, to_verifier)
            if slashed - to_challenger - to_verifier:
                self.to_audit_pool(slashed - to_challenger - to_verifier)
            if d.kind == KIND_AUDIT:
                for w in workers:
                    self.pay_from_audit_pool(w, p.audit_fee // len(workers))
        return final
