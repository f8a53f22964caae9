"""Ghost model of the market for the stateful fuzz harness.

The model is written from PROTOCOL.md and the market's documented rules, independently
of the contract: every rule asks it first which revert reason (if any) the contract must
give, and after a successful call it applies the same effects to its own books. The
invariants then compare the contract with these books and with the token balance.
The court's draws are computed here too, from the block hash that seeds them, so the
harness can check that the chain picked exactly the verifier or panel a uniform
lowest-ticket draw gives, whoever asked for it and whoever called `draw`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

from eth_abi import encode
from eth_utils import keccak

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
    honest: bool = True  # whether the published result is the true one (harness's truth)
    private: bool = False  # input with format byte 0x02 (docs/protocol.md §5a)


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
    joined: int = 0  # block it joined the active set (or last topped up from below min)
    holds: int = 0  # open court roles (verifier, panel seat): no complete_unbond


@dataclass(frozen=True)
class Params:  # replaced (dataclasses.replace) when the owner changes min_stake
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

    def set_min_stake(self, value: int) -> None:
        """The owner changes the minimum stake (nodes below it stay in the active set
        until someone calls remove_node)."""
        self.params = replace(self.params, min_stake=value)

    def expire(self, js: JobState) -> tuple[int, int]:
        """A claimed job ran out of time; returns (refund, penalty). The penalty comes
        from the node's stake; below the minimum, the node leaves the active set."""
        job = js.job
        node = self.nodes[job.node]
        node.locked -= min(node.locked, job.collateral)
        penalty = min(job.collateral * self.params.expire_penalty_bps // MAX_BPS, node.stake)
        node.stake -= penalty
        if penalty and node.stake < self.params.min_stake:
            self.leave_sets(job.node)
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
        self.leave_sets(node_addr)
        self.court_funds += taken
        return taken

    def slash_partial(self, node_addr: str, amount: int) -> int:
        """Partial slash (no-show penalty) from free, then unbonding, then locked stake,
        into the court funds; a node left below the minimum leaves the active sets."""
        node = self.nodes[node_addr]
        from_free = min(amount, node.stake - node.locked)
        from_unbonding = min(amount - from_free, node.unbonding)
        from_locked = min(amount - from_free - from_unbonding, node.locked)
        node.stake -= from_free + from_locked
        node.locked -= from_locked
        node.unbonding -= from_unbonding
        if node.stake < self.params.min_stake:
            self.leave_sets(node_addr)
        taken = from_free + from_unbonding + from_locked
        self.court_funds += taken
        return taken

    # ---- active set ----
    def leave_sets(self, node_addr: str) -> None:
        """The node leaves the model's active set (price and joined block cleared)."""
        node = self.nodes[node_addr]
        node.serving, node.price, node.joined = False, 0, 0

    def serve_reason(self, node_addr: str) -> str | None:
        """Why `node_addr` may not serve the model (join its active set or reprice)."""
        reason = self.node_reason(node_addr)
        if reason is None and self.nodes[node_addr].stake < self.params.min_stake:
            return "market: stake too low"
        return reason

    def apply_serve(self, node_addr: str, price: int, block: int) -> None:
        node = self.nodes[node_addr]
        if not node.serving:
            node.serving, node.joined = True, block
        node.price = price

    def apply_stake(self, node_addr: str, received: int, block: int) -> None:
        """Stake arrives; a serving node that was below the minimum is re-stamped (it is a
        draw candidate only for draws requested after this block)."""
        node = self.nodes[node_addr]
        if node.stake < self.params.min_stake and node.serving:
            node.joined = block
        node.stake += received

    def apply_unbond(self, node_addr: str, amount: int, now: int) -> None:
        node = self.nodes[node_addr]
        node.stake -= amount
        node.unbonding += amount
        node.unbond_ready_at = now + self.params.unbonding_delay
        if node.stake < self.params.min_stake:
            self.leave_sets(node_addr)

    def remove_reason(self, node_addr: str) -> str | None:
        """Why nobody may remove `node_addr` from the active set."""
        node = self.nodes.get(node_addr, NodeState())
        if not node.serving:
            return "market: model not served"
        if node.stake >= self.params.min_stake:
            return "market: node stake sufficient"
        return None

    def complete_unbond_reason(self, node_addr: str, now: int) -> str | None:
        node = self.nodes[node_addr]
        if node.unbonding == 0:
            return "market: nothing unbonding"
        if node.holds:
            return "market: stake held by court"
        if now < node.unbond_ready_at:
            return "market: unbonding not ready"
        return None

    def draw_candidates(self, joined_before: int, min_stake: int) -> list[str]:
        """market.draw_candidates (as a set: the draw does not depend on the order)."""
        return [
            a
            for a, n in self.nodes.items()
            if n.serving and n.joined < joined_before and n.stake >= min_stake
        ]

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
        if self.nodes[sender].slashed:
            return "market: node slashed"
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
        honest: bool = True,
    ) -> None:
        """Record a successful publish (`honest`: the harness's truth about the result)."""
        js.honest = honest
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
ASSIGNED, ACCEPTED, VERDICT, APPEALED, UNRESOLVED, SETTLED, DRAWING, PANEL_DRAWING = range(1, 9)
MAX_ROUNDS = 3
PANEL_SIZE = 3
KEEPER_CUT = 10  # an audit's keeper earns a tenth of the audit reward
BLOCKHASH_DEPTH = 256  # no EIP-2935 history contract on the test chain


def draw_seed(seed_hash: bytes, job_id: int, rounds: int, phase: int) -> bytes:
    """keccak256(abi_encode(blockhash(seed_block), job_id, rounds, phase))."""
    return keccak(
        encode(["bytes32", "uint256", "uint8", "uint8"], [seed_hash, job_id, rounds, phase])
    )


def ticket(seed: bytes, candidate: str) -> int:
    """A candidate's ticket in a draw: the lowest tickets win."""
    return int.from_bytes(keccak(encode(["bytes32", "address"], [seed, candidate])), "big")


def audit_selected(seed_hash: bytes, job_id: int, audit_rate_bps: int) -> bool:
    """Court._selected: is the job audited, given the hash of published_block + 2?"""
    digest = keccak(encode(["bytes32", "uint256"], [seed_hash, job_id]))
    return int.from_bytes(digest, "big") % MAX_BPS < audit_rate_bps


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
    audit_rate_bps: int


@dataclass
class Dispute:
    """A dispute or audit as the model knows it."""

    kind: int
    challenger: str
    bond: int
    node: str
    min_stake: int  # the minimum stake when it was opened: the floor of all its draws
    seed_block: int = 0  # block whose hash seeds the requested draw
    verifier: str = ZERO
    phase: int = DRAWING
    rounds: int = 0
    deadline: int = 0
    verdict_valid: bool = False
    appellant: str = ZERO
    appeal_bond: int = 0
    panel: list[str] = field(default_factory=list)
    votes: dict[str, bool] = field(default_factory=dict)
    replaced: set[str] = field(default_factory=set)  # verifiers replaced for lateness
    private: bool = False  # a private job: Court.hand_key rules (docs/protocol.md §5a)
    handed_round: int = 0  # the verifier round the key was handed for
    panel_handed: bool = False
    hand_deadline: int = 0

    def withheld(self) -> bool:
        """A private job whose key was not handed to the current verifier's round."""
        return self.private and self.handed_round != self.rounds

    def excluded(self) -> set[str]:
        """Who a draw may never pick: the node, the challenger, the verifier, the
        appellant and every verifier replaced for lateness."""
        return {self.node, self.challenger, self.verifier, self.appellant, *self.replaced}


@dataclass
class Settlement:
    """What one settle moved, for the harness's incentive checks."""

    final: bool
    slashed: int  # taken from the accused node
    credits: dict[str, int]  # credited per account by this settlement


class CourtBooks:
    """The court's rules applied to the market's books (the court itself holds nothing)."""

    def __init__(self, books: Books, params: CourtParams) -> None:
        self.books, self.p = books, params
        self.disputes: dict[int, Dispute] = {}
        self._credits: dict[str, int] = {}

    # ---- draws ----
    def candidates_now(self, d: Dispute, block: int) -> list[str]:
        """Who a draw requested now could pick if nobody moved (the opening and appeal
        checks: joined before this block, the dispute's minimum stake)."""
        now = self.books.draw_candidates(block, d.min_stake)
        return [a for a in now if a not in d.excluded()]

    def pick(self, job_id: int, d: Dispute, seed_hash: bytes, count: int) -> list[str]:
        """The `count` lowest tickets among the draw's candidates, lowest first."""
        seed = draw_seed(seed_hash, job_id, d.rounds, d.phase)
        cands = [
            a
            for a in self.books.draw_candidates(d.seed_block, d.min_stake)
            if a not in d.excluded()
        ]
        return sorted(cands, key=lambda a: ticket(seed, a))[:count]

    def draw_reason(self, d: Dispute | None, block: int) -> str | None:
        if d is None or d.phase not in (DRAWING, PANEL_DRAWING):
            return "court: nothing to draw"
        if block <= d.seed_block:
            return "court: draw not ready"
        return None

    def draw_outcome(
        self, job_id: int, d: Dispute, block: int, seed_hash: bytes | None
    ) -> list[str] | None:
        """What `draw` picks now (None: the seed's hash is gone, the draw is requested
        anew): the verifier, or the panel (three, or those left), or nobody."""
        if seed_hash is None or block - d.seed_block > BLOCKHASH_DEPTH:
            return None
        return self.pick(job_id, d, seed_hash, 1 if d.phase == DRAWING else PANEL_SIZE)

    def apply_draw(self, d: Dispute, outcome: list[str] | None, block: int, now: int) -> None:
        nodes = self.books.nodes
        if outcome is None:
            d.seed_block = block
        elif d.phase == DRAWING and not outcome:
            d.phase, d.deadline = UNRESOLVED, now
        elif d.phase == DRAWING:
            d.verifier, d.rounds, d.phase = outcome[0], d.rounds + 1, ASSIGNED
            d.deadline = now + self.p.accept_window
            nodes[d.verifier].holds += 1
            d.hand_deadline, d.panel_handed = now + self.p.accept_window, False
        elif not outcome:
            # nobody left for the panel: the appeal is void, its bond goes back and the
            # appeal window opens again (for the accused too)
            self.pay(d.appellant, d.appeal_bond)
            d.appellant, d.appeal_bond = ZERO, 0
            d.phase, d.deadline = VERDICT, now + self.p.appeal_window
        else:
            d.panel, d.phase, d.deadline = list(outcome), APPEALED, now + self.p.vote_window
            d.hand_deadline, d.panel_handed = now + self.p.accept_window, False
            for member in d.panel:
                nodes[member].holds += 1

    # ---- opening ----
    def open_reason(self, js: JobState, sender: str, bond: int, now: int, block: int) -> str | None:
        """Why `sender` may not open a dispute/audit with `bond` on `js` now."""
        if js.status != PUBLISHED:
            return STATUS_REASON[PUBLISHED]
        if now > js.job.published_at + self.books.params.challenge_window:
            return "market: challenge window closed"
        if bond and self.books.balance.get(sender, 0) < bond:
            return "market: insufficient balance for bond"
        probe = Dispute(KIND_DISPUTE, sender, bond, js.job.node, self.books.params.min_stake)
        if not self.candidates_now(probe, block):
            return "court: no eligible verifier"
        return None

    def open(self, js: JobState, kind: int, sender: str, bond: int, block: int) -> Dispute:
        if bond:
            self.take_bond(sender, bond)
        js.status = VERIFYING
        d = Dispute(kind, sender, bond, js.job.node, self.books.params.min_stake, block)
        d.private = js.private
        self.disputes[js.job_id] = d
        return d

    # ---- verifier ----
    def replace_reason(self, d: Dispute | None, now: int) -> str | None:
        if d is None or d.phase not in (ASSIGNED, ACCEPTED):
            return "court: no verifier to replace"
        return "court: verifier not late" if now <= d.deadline else None

    def apply_replace(self, d: Dispute, block: int, now: int) -> int:
        """The late verifier pays the no-show penalty and is excluded; a new draw is
        requested (after MAX_ROUNDS verifiers: unresolved). Returns the penalty."""
        late = d.verifier
        penalty = self.penalise(late)
        self.books.nodes[late].holds -= 1
        d.replaced.add(late)
        d.verifier = ZERO
        if d.rounds < MAX_ROUNDS:
            d.phase, d.seed_block = DRAWING, block
        else:
            d.phase, d.deadline = UNRESOLVED, now
        return penalty

    # ---- appeal ----
    def appeal_bond_of(self, d: Dispute, sender: str) -> int:
        """The accused node appeals with the dispute bond, anyone else the appeal bond."""
        return self.p.dispute_bond if sender == d.node else self.p.appeal_bond

    def appeal_reason(self, d: Dispute | None, sender: str, now: int, block: int) -> str | None:
        if d is not None and d.appellant != ZERO:
            return "court: already appealed"
        if d is None or d.phase != VERDICT:
            return "court: no verdict to appeal"
        if now > d.deadline:
            return "court: appeal window closed"
        if d.withheld():
            return "court: key withheld"
        probe = replace(d, appellant=sender)
        if len(self.candidates_now(probe, block)) < PANEL_SIZE:
            return "court: panel unavailable"
        if self.books.balance.get(sender, 0) < self.appeal_bond_of(d, sender):
            return "market: insufficient balance for bond"
        return None

    def apply_appeal(self, d: Dispute, sender: str, block: int) -> None:
        bond = self.appeal_bond_of(d, sender)
        self.take_bond(sender, bond)
        d.appellant, d.appeal_bond = sender, bond
        d.phase, d.seed_block = PANEL_DRAWING, block

    # ---- money ----
    def take_bond(self, payer: str, amount: int) -> None:
        self.books.balance[payer] -= amount
        self.books.court_funds += amount

    def pay(self, account: str, amount: int) -> None:
        """court_pay: court funds -> claimable (or, to the empty address, the audit pool)."""
        assert self.books.court_funds >= amount, "model: court funds short"
        self.books.court_funds -= amount
        if account == ZERO:
            self.books.audit_pool += amount
        else:
            self.books.credit(account, amount)
            self._credits[account] = self._credits.get(account, 0) + amount

    def pay_from_audit_pool(self, account: str, amount: int) -> None:
        paid = min(amount, self.books.audit_pool)
        self.books.audit_pool -= paid
        if paid:
            self.books.credit(account, paid)
            self._credits[account] = self._credits.get(account, 0) + paid

    def penalise(self, node_addr: str) -> int:
        """No-show penalty: partial slash moved into the audit pool."""
        taken = self.books.slash_partial(node_addr, self.p.no_show_penalty)
        if taken:
            self.pay(ZERO, taken)
        return taken

    def split(self, members: list[str], amount: int, capped: bool) -> int:
        """Equal shares of `amount` to `members` (`capped`: each at most its own stake at
        risk, bonded + unbonding); returns what was paid."""
        if not members or amount == 0:
            return 0
        share, paid = amount // len(members), 0
        for m in members:
            n = self.books.nodes[m]
            pay = min(share, n.stake + n.unbonding) if capped else share
            if pay:
                self.pay(m, pay)
                paid += pay
        return paid

    def audit_reward(self, js: JobState) -> int:
        """An audit's reward: at most what the job's audit share funds on average."""
        job = js.job
        price = min(job.output_tokens * job.price_per_token, job.max_payment)
        share = price * self.books.params.audit_share_bps // self.p.audit_rate_bps
        return min(self.p.audit_fee, share)

    def pay_audit(self, js: JobState, d: Dispute, workers: list[str]) -> None:
        reward = self.audit_reward(js)
        keeper = reward // KEEPER_CUT
        if keeper:
            self.pay_from_audit_pool(d.challenger, keeper)
        share = (reward - keeper) // len(workers)
        if share:
            for w in workers:
                self.pay_from_audit_pool(w, share)

    # ---- settlement ----
    def settle_reason(self, d: Dispute | None, now: int) -> str | None:
        """Why the dispute `d` may not be settled now."""
        if d is None:
            return "court: nothing to settle"
        if d.phase == VERDICT:
            return "court: appeal window open" if now <= d.deadline else None
        if d.phase == APPEALED:
            decided = self.majority_side(d) is not None
            return None if decided or now > d.deadline else "court: vote in progress"
        return None if d.phase == UNRESOLVED else "court: nothing to settle"

    def tally(self, d: Dispute) -> tuple[int, int]:
        valid = sum(1 for v in d.votes.values() if v)
        return valid, len(d.votes) - valid

    def majority_side(self, d: Dispute) -> bool | None:
        """The side (valid?) more than half of the drawn panel voted for, if any."""
        valid, invalid = self.tally(d)
        if 2 * valid > len(d.panel):
            return True
        if 2 * invalid > len(d.panel):
            return False
        return None

    def settle(self, js: JobState, d: Dispute) -> Settlement:
        """Apply the outcome of a due dispute."""
        b, p = self.books, self.p
        self._credits = {}
        appealed, unresolved = d.phase == APPEALED, d.phase == UNRESOLVED
        final, overturned = True, False
        if d.phase == VERDICT:
            final = d.verdict_valid
        elif appealed:
            side = self.majority_side(d)
            final = d.verdict_valid if side is None else side
            overturned = final != d.verdict_valid
        d.phase = SETTLED
        slashed = 0
        if final:
            earned, _, _, _ = b.pay(js)
            if earned:
                self._credits[js.job.node] = earned
        else:
            b.balance[js.job.client] += js.job.max_payment
            slashed = b.slash_whole(js.job.node)
            js.status = SLASHED
        if d.verifier != ZERO:
            b.nodes[d.verifier].holds -= 1
        for member in d.panel:
            b.nodes[member].holds -= 1
        workers = [d.verifier]
        if appealed:
            majority = []
            if self.majority_side(d) is not None:
                majority = [m for m, v in d.votes.items() if v == final]
            if overturned:
                taken = b.slash_whole(d.verifier)
                to_appellant = taken * p.slash_challenger_bps // MAX_BPS
                self.pay(d.appellant, d.appeal_bond + to_appellant)
                paid = self.split(majority, taken * p.slash_verifier_bps // MAX_BPS, True)
                if taken - to_appellant - paid:
                    self.pay(ZERO, taken - to_appellant - paid)
                workers = majority
            else:
                paid = self.split(majority, d.appeal_bond, False)
                if d.appeal_bond > paid:
                    self.pay(ZERO, d.appeal_bond - paid)
            for member in d.panel:
                if member not in d.votes:
                    self.penalise(member)
        if unresolved:
            if d.bond:
                self.pay(d.challenger, d.bond)
        elif final and d.kind == KIND_AUDIT:
            self.pay_audit(js, d, workers)
        elif final:
            fee = min(p.verifier_fee, d.bond)
            paid = self.split(workers, fee, False)
            if fee > paid:
                self.pay(ZERO, fee - paid)
            if d.bond > fee:
                self.pay(js.job.node, d.bond - fee)
        else:
            to_challenger = slashed * p.slash_challenger_bps // MAX_BPS
            if d.bond + to_challenger:
                self.pay(d.challenger, d.bond + to_challenger)
            paid = self.split(workers, slashed * p.slash_verifier_bps // MAX_BPS, True)
            if slashed - to_challenger - paid:
                self.pay(ZERO, slashed - to_challenger - paid)
            if d.kind == KIND_AUDIT:
                self.pay_audit(js, d, workers)
        return Settlement(final, slashed, dict(self._credits))
