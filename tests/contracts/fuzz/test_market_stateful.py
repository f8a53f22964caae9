"""Stateful fuzzing of the market (and court) on titanoboa, against a ghost model.

Each rule is one user action, choosing actors and jobs by index. Before calling, the rule
asks the model (model.py) whether the contract must revert and with which reason; a
predicted revert is asserted with `boa.reverts(reason)`, a predicted success must succeed
and its effects are applied to the model. Invariants compare the contract with the model
after every step; the teardown drives every job to a terminal state with permissionless
calls only and withdraws everything.

Blocks: boa mines no blocks by itself; the harness moves the block number with the clock
(`travel`, `mine`) and gives every block a hash derived from a per-example salt, so that
`blockhash` (audit selection, the court's draws) sees the same values as the model. Every
draw, whoever calls it, must pick exactly what the model's uniform lowest-ticket draw over
the same candidates picks.

Adversarial actors besides the honest ones:
- an attacker with a grinding contract (contracts/test/GrindingChallenger.vy) that opens
  disputes and audits, appeals and calls `draw`, and reverts unless its sybil is picked:
  no pick may ever be visible when an opening returns, and a draw's outcome must not
  depend on who calls it or how often it was reverted;
- sybil verifiers (two of the nodes) that always rule and vote against the truth;
- filler nodes that try to join the active set with zero or too little stake;
- nodes whose own sybil (a shadow account or another node) disputes or audits their jobs.

Run with three tokens: a plain ERC20, a fee-on-transfer token and a no-return-value token.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import boa
from eth_utils import keccak, to_checksum_address
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from verinfer.digest import SamplingParams, encode_params, model_id
from verinfer.jobs import settlement_of

from .deployers import deployer
from .model import (
    ACCEPTED,
    APPEALED,
    ASSIGNED,
    BLOCKHASH_DEPTH,
    CLAIMED,
    DRAWING,
    KEEPER_CUT,
    KIND_AUDIT,
    KIND_DISPUTE,
    LIVE,
    MAX_BPS,
    MAX_ROUNDS,
    OPEN,
    PANEL_DRAWING,
    PUBLISHED,
    SETTLED,
    TERMINAL,
    UNRESOLVED,
    VERDICT,
    VERIFYING,
    ZERO,
    Books,
    CourtBooks,
    CourtParams,
    Dispute,
    Job,
    JobState,
    NodeState,
    Params,
    audit_selected,
)

MODEL = ("verinfer/fuzz", "r1", keccak(b"fuzz manifest"))
MODEL_ID = model_id(*MODEL)
INPUT = b"fuzz prompt"
PRIVATE_INPUT = b"\x02 a private job's envelope (the market reads only its first byte)"
PRIVATE_FLAG = 2**63  # Market.vy: top bit of a private job's submitted_at
WALLET = 10**12
MIN_STAKE = 1_000
PUBKEY = bytes(range(64))
N_CLIENTS, N_NODES, N_FILLERS, N_SHADOWS = 3, 6, 2, 2
N_SYBILS = 2  # the last nodes are the attacker's: they rule and vote against the truth
DISPUTE_BOND, APPEAL_BOND, VERIFIER_FEE, NO_SHOW_PENALTY, AUDIT_FEE = 100, 300, 20, 50, 50
P_AUDIT_RATE_BPS = 10
P_SLASH_CHALLENGER_BPS = 8
P_MIN_STAKE = 4
P_COLLATERAL_BPS = 5
BLOCK_TIME = 12  # seconds per block when the harness moves the clock
FULL_EVERY = 10  # steps between full reads of every account and node (see the invariant)
# Sybil picks above a uniform draw's expectation: fail beyond this Hoeffding tail.
UNIFORM_TAIL = 1e-6

STEPS_RUN: dict[str, int] = {}  # contract calls made, per machine (reported at the end)
index = st.integers(min_value=0, max_value=2**16)
small_amount = st.integers(min_value=1, max_value=5_000)
extra_tokens = st.one_of(st.integers(0, 8), st.integers(0, 70))  # > max_tokens: too many
time_step = st.sampled_from([1, 30, 61, 600, 3_601, 7_201, 86_400, 7 * 86_400 + 1])
low_stake = st.sampled_from([0, 1, MIN_STAKE // 2, MIN_STAKE - 1])


def address(alias: str) -> str:
    """A fixed address per role, so that a failing example replays with the same tickets
    (boa's generate_address draws from a stream shared by all examples)."""
    addr = to_checksum_address(keccak(b"verinfer fuzz " + alias.encode())[-20:])
    boa.env.alias(addr, alias)
    return addr


def now() -> int:
    """The timestamp the next call will see."""
    return boa.env.evm.patch.timestamp


def block() -> int:
    """The block number the next call will see."""
    return boa.env.evm.patch.block_number


class MarketMachine(RuleBasedStateMachine):
    """Market actions against a ghost model; subclasses pick the token."""

    TOKEN = "contracts/test/TestToken.vy"
    TOKEN_FEE_BPS = 0

    def __init__(self) -> None:
        super().__init__()
        self._anchor = boa.env.anchor()
        self._anchor.__enter__()
        self.salt = b"\x00" * 32
        self.sync_hashes()
        self.owner = address("owner")
        self.fee_recipient = address("fees")
        self.keeper = address("keeper")
        self.attacker = address("attacker")
        self.clients = [address(f"client{i}") for i in range(N_CLIENTS)]
        self.nodes = [address(f"node{i}") for i in range(N_NODES)]
        self.fillers = [address(f"filler{i}") for i in range(N_FILLERS)]
        self.shadows = [address(f"shadow{i}") for i in range(N_SHADOWS)]
        self.sybils = self.nodes[-N_SYBILS:]
        with boa.env.prank(self.owner):
            self.token = deployer(self.TOKEN).deploy("Fuzz Token", "FUZZ", 18)
            self.market = deployer("contracts/Market.vy").deploy(
                self.token.address, MIN_STAKE, self.fee_recipient
            )
            self.market.register_model(*MODEL)
            self.court = deployer("contracts/Court.vy").deploy(
                self.market.address,
                DISPUTE_BOND,
                APPEAL_BOND,
                VERIFIER_FEE,
                NO_SHOW_PENALTY,
                AUDIT_FEE,
            )
            self.market.set_court(self.court.address)
        with boa.env.prank(self.attacker):
            self.grinder = deployer("contracts/test/GrindingChallenger.vy").deploy(
                self.market.address, self.court.address, self.token.address
            )
        m = self.market
        params = Params(
            fee_bps=m.fee_bps(),
            audit_share_bps=m.audit_share_bps(),
            challenge_window=m.challenge_window(),
            exclusive_window=m.exclusive_window(),
            min_stake=m.min_stake(),
            collateral_bps=m.collateral_bps(),
            expire_penalty_bps=m.expire_penalty_bps(),
            unbonding_delay=m.unbonding_delay(),
            token_fee_bps=self.TOKEN_FEE_BPS,
        )
        self.books = Books(params)
        self.court_books = CourtBooks(self.books, self.court_params())
        for account in self.accounts:
            self.books.wallet[account] = 0
            self.books.balance[account] = 0
            self.books.claimable[account] = 0
        for account in [*self.clients, *self.all_nodes, *self.shadows, self.grinder.address]:
            self.token.mint(account, WALLET)
            self.books.wallet[account] = WALLET
        for account in [*self.clients, *self.all_nodes, *self.shadows]:
            with boa.env.prank(account):
                self.token.approve(self.market.address, 2**256 - 1)
        for node in self.all_nodes:
            self.books.nodes[node] = NodeState()
        self.terminal_seen: dict[int, int] = {}
        self.allies: dict[int, str] = {}  # job id -> the node's sybil that opened its dispute
        self.below_min_ok: set[str] = set()  # in the set below min after the owner raised it
        self.sybil_draws: list[tuple[float, bool]] = []  # (uniform chance, sybil picked)
        self.steps = 0
        self.seen_accounts: dict[str, Any] = {}
        self.seen_nodes: dict[str, Any] = {}

    def court_params(self) -> CourtParams:
        c = self.court
        return CourtParams(
            dispute_bond=c.dispute_bond(),
            appeal_bond=c.appeal_bond(),
            verifier_fee=c.verifier_fee(),
            no_show_penalty=c.no_show_penalty(),
            audit_fee=c.audit_fee(),
            accept_window=c.accept_window(),
            verdict_window=c.verdict_window(),
            appeal_window=c.appeal_window(),
            vote_window=c.vote_window(),
            slash_challenger_bps=c.slash_challenger_bps(),
            slash_verifier_bps=c.slash_verifier_bps(),
            audit_rate_bps=c.audit_rate_bps(),
        )

    # ---- helpers ----
    @property
    def all_nodes(self) -> list[str]:
        """Node accounts: the regular nodes (last ones the attacker's sybils) and fillers."""
        return [*self.nodes, *self.fillers]

    @property
    def accounts(self) -> list[str]:
        """Every account that can hold a balance or a credit in the market."""
        return [
            self.owner,
            self.fee_recipient,
            self.keeper,
            self.attacker,
            self.grinder.address,
            *self.clients,
            *self.all_nodes,
            *self.shadows,
        ]

    @property
    def eoas(self) -> list[str]:
        return [a for a in self.accounts if a != self.grinder.address]

    def act(self, reason: str | None, sender: str, fn: Any, *args: Any) -> bool:
        """Call the contract function `fn(*args)` from `sender`; expect the revert `reason`
        if it is not None."""
        event(f"{fn.func_t.name}: {reason or 'ok'}")
        STEPS_RUN[type(self).__name__] = STEPS_RUN.get(type(self).__name__, 0) + 1
        with boa.env.prank(sender):
            if reason is not None:
                with boa.reverts(reason):
                    fn(*args)
                return False
            fn(*args)
            return True

    def event(self, contract: Any, name: str) -> Any:
        """The single `name` event of the last call of `contract`."""
        logs = [log for log in contract.get_logs() if type(log).__name__ == name]
        assert len(logs) == 1, f"expected one {name} event, got {contract.get_logs()}"
        return logs[0]

    def pick(self, items: list[Any], i: int) -> Any:
        return items[i % len(items)]

    def jobs_in(self, *statuses: int) -> list[JobState]:
        return [j for j in self.books.jobs if j.status in statuses]

    def choose(self, j: int, *statuses: int) -> JobState:
        """Mostly a job in one of `statuses` (if any), sometimes any job at all."""
        candidates = self.jobs_in(*statuses)
        if candidates and j % 5:
            return self.pick(candidates, j // 5)
        return self.pick(self.books.jobs, j)

    def params_for(self, max_tokens: int) -> bytes:
        return encode_params(SamplingParams(max_tokens=max_tokens))

    # ---- blocks and their hashes ----
    def block_hash(self, number: int) -> bytes:
        """The hash of block `number` in this example's chain."""
        return keccak(self.salt + number.to_bytes(32, "big"))

    def sync_hashes(self) -> None:
        """Expose the last 256 block hashes to BLOCKHASH (boa keeps none of its own)."""
        bn = block()
        depth = min(BLOCKHASH_DEPTH, bn)
        boa.env.evm.patch.prev_hashes = [self.block_hash(bn - 1 - i) for i in range(depth)]

    def travel(self, seconds: int | None = None, blocks: int | None = None) -> None:
        """Move the clock (a block per 12 s) and the block hashes with it."""
        boa.env.time_travel(seconds=seconds, blocks=blocks, block_delta=BLOCK_TIME)
        self.sync_hashes()

    def seed_hash(self, seed_block: int) -> bytes | None:
        """What the court's block_hash(seed_block) returns now (None: empty)."""
        delta = block() - seed_block
        return self.block_hash(seed_block) if 0 < delta <= BLOCKHASH_DEPTH else None

    # ---- setup ----
    @initialize(
        stakes=st.lists(
            st.integers(min_value=3 * MIN_STAKE, max_value=10_000),
            min_size=N_NODES,
            max_size=N_NODES,
        ),
        prices=st.lists(st.integers(min_value=0, max_value=40), min_size=N_NODES, max_size=N_NODES),
        audit_rate_bps=st.sampled_from([600, 5_000, 10_000]),
        salt=st.binary(min_size=32, max_size=32),
        jobs=st.lists(st.integers(min_value=1, max_value=200), min_size=2, max_size=4),
        honest=st.lists(st.booleans(), min_size=4, max_size=4),
    )
    def start(
        self,
        stakes: list[int],
        prices: list[int],
        audit_rate_bps: int,
        salt: bytes,
        jobs: list[int],
        honest: list[bool],
    ) -> None:
        """Clients, nodes, shadows and the attacker's contract start with a deposit; the
        nodes (the sybils too) start registered, staked and serving (the fillers try to
        join by rules); a client submits a few jobs that nodes run, truly or not (so that
        short runs reach the court too)."""
        self.salt = salt
        self.sync_hashes()
        with boa.env.prank(self.owner):
            self.court.set_param(P_AUDIT_RATE_BPS, audit_rate_bps)
        self.court_books.p = self.court_params()
        for payer in range(len(self.payers)):
            self.deposit(payer, 2_000)
        self.grinder_deposit(2_000)
        for node, amount, price in zip(self.nodes, stakes, prices, strict=False):
            self.register_node(self.nodes.index(node))
            self.stake(self.nodes.index(node), amount)
            self.serve_model(self.nodes.index(node), price)
        self.travel(blocks=1)
        self.submit_many(0, jobs, 32, 7_200)
        for i, js in enumerate(self.books.jobs):
            self.step(js, i, 1, honest[i])  # claim
            self.step(js, i, 1, honest[i])  # publish
        # and one private job (docs/protocol.md §5a), run the same way
        self.submit(0, 50, 32, -1, 7_200, 7_200, 0, True)
        private = self.books.jobs[-1]
        for _ in range(2):
            self.step(private, len(self.books.jobs) - 1, 1, honest[0])

    # ---- clients: balances ----
    @property
    def payers(self) -> list[str]:
        """Accounts that deposit, dispute and appeal (clients, nodes, shadows)."""
        return [*self.clients, *self.nodes, *self.shadows]

    @rule(c=index, amount=small_amount)
    def deposit(self, c: int, amount: int) -> None:
        """A client (or any payer) tops up its prepaid balance."""
        payer = self.pick(self.payers, c)
        self.act(None, payer, self.market.deposit, amount)
        received = self.books.pull(payer, amount)
        self.books.balance[payer] += received
        ev = self.event(self.market, "Deposited")
        assert (ev.account, ev.amount, ev.balance) == (payer, received, self.books.balance[payer])

    @rule(amount=small_amount)
    def grinder_deposit(self, amount: int) -> None:
        """The attacker funds its contract's prepaid balance (bonds)."""
        grinder = self.grinder.address
        if self.act(None, self.attacker, self.grinder.deposit, amount):
            self.books.balance[grinder] += self.books.pull(grinder, amount)

    @rule(c=index, amount=st.integers(min_value=0, max_value=5_000))
    def withdraw_deposit(self, c: int, amount: int) -> None:
        """A payer takes (part of) its prepaid balance back."""
        payer = self.pick(self.payers, c)
        reason = None
        if amount == 0:
            reason = "market: zero amount"
        elif self.books.balance[payer] < amount:
            reason = "market: insufficient balance"
        if self.act(reason, payer, self.market.withdraw_deposit, amount):
            self.books.balance[payer] -= amount
            self.books.push(payer, amount)

    @rule(a=index)
    def withdraw(self, a: int) -> None:
        """Any account withdraws its claimable credit (the attacker's contract, to the
        attacker through withdraw_to)."""
        account = self.pick(self.accounts, a)
        amount = self.books.claimable[account]
        reason = None if amount else "market: nothing to withdraw"
        if account == self.grinder.address:
            if self.act(reason, self.attacker, self.grinder.withdraw_to, self.attacker):
                self.books.claimable[account] = 0
                self.books.push(self.attacker, amount)
            return
        if self.act(reason, account, self.market.withdraw):
            self.books.claimable[account] = 0
            self.books.push(account, amount)
            ev = self.event(self.market, "Withdrawn")
            assert (ev.account, ev.amount) == (account, amount)

    @rule(a=index, r=st.integers(min_value=-1, max_value=2**16))
    def withdraw_to(self, a: int, r: int) -> None:
        """An account (say, one whose token transfers are blocked) has its credit paid to
        another address."""
        account = self.pick(self.eoas, a)
        recipient = ZERO if r < 0 else self.pick(self.eoas, r)
        amount = self.books.claimable[account]
        reason = "market: zero recipient" if recipient == ZERO else None
        reason = reason or (None if amount else "market: nothing to withdraw")
        if self.act(reason, account, self.market.withdraw_to, recipient):
            self.books.claimable[account] = 0
            self.books.push(recipient, amount)
            ev = self.event(self.market, "Withdrawn")
            assert (ev.account, ev.amount) == (account, amount)

    @rule()
    def withdraw_fees(self) -> None:
        """The owner sends the protocol fee to the fee recipient's credit."""
        amount = self.books.protocol_fees
        reason = None if amount else "market: no fees"
        if self.act(reason, self.owner, self.market.withdraw_fees):
            self.books.protocol_fees = 0
            self.books.credit(self.fee_recipient, amount)

    # ---- clients: jobs ----
    @rule(
        c=index,
        max_payment=st.integers(min_value=1, max_value=200),  # collateral is 25x
        max_tokens=st.integers(min_value=1, max_value=64),
        preferred=st.sampled_from([-1, -1, -1, -1, *range(N_NODES)]),
        claim_in=st.integers(min_value=1, max_value=7_200),
        result_after=st.integers(min_value=1, max_value=7_200),
        top_up=st.one_of(st.just(0), st.integers(min_value=1, max_value=1_500)),
        private=st.sampled_from([False, False, True]),
    )
    def submit(
        self,
        c: int,
        max_payment: int,
        max_tokens: int,
        preferred: int,
        claim_in: int,
        result_after: int,
        top_up: int,
        private: bool,
    ) -> None:
        """A client submits a job from its balance (or deposits and submits at once)."""
        client = self.pick(self.clients, c)
        preferred_node = ZERO if preferred < 0 else self.nodes[preferred]
        params = self.params_for(max_tokens)
        claim_deadline = now() + claim_in
        result_deadline = claim_deadline + result_after
        received = self.books.received(top_up) if top_up else 0
        reason = None
        if self.books.balance[client] + received < max_payment:
            reason = "market: insufficient balance"
        args = (
            MODEL_ID,
            PRIVATE_INPUT if private else INPUT,
            params,
            max_payment,
            preferred_node,
            claim_deadline,
            result_deadline,
        )
        if top_up:
            ok = self.act(reason, client, self.market.deposit_and_submit, top_up, *args)
        else:
            ok = self.act(reason, client, self.market.submit, *args)
        if not ok:
            return
        if top_up:
            self.books.balance[client] += self.books.pull(client, top_up)
        ev = self.event(self.market, "JobSubmitted")
        self.record_submitted(
            ev, client, max_tokens, max_payment, preferred_node, claim_deadline, result_deadline,
            private,
        )  # fmt: skip

    @rule(
        c=index,
        payments=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=4),
        max_tokens=st.integers(min_value=1, max_value=64),
        claim_in=st.integers(min_value=1, max_value=7_200),
    )
    def submit_many(self, c: int, payments: list[int], max_tokens: int, claim_in: int) -> None:
        """A client submits several jobs in one call; the first it cannot pay for makes the
        whole call revert."""
        client, n = self.pick(self.clients, c), len(payments)
        params = self.params_for(max_tokens)
        claim_deadline, result_deadline = now() + claim_in, now() + claim_in + 600
        reason, left = None, self.books.balance[client]
        for payment in payments:
            if left < payment:
                reason = "market: insufficient balance"
                break
            left -= payment
        columns = ([MODEL_ID] * n, [INPUT] * n, [params] * n, payments, [ZERO] * n)
        deadlines = ([claim_deadline] * n, [result_deadline] * n)
        if not self.act(reason, client, self.market.submit_many, *columns, *deadlines):
            return
        logs = [e for e in self.market.get_logs() if type(e).__name__ == "JobSubmitted"]
        assert len(logs) == n, logs
        for ev, payment in zip(logs, payments, strict=True):
            self.record_submitted(
                ev, client, max_tokens, payment, ZERO, claim_deadline, result_deadline
            )

    def record_submitted(
        self,
        ev: Any,
        client: str,
        max_tokens: int,
        max_payment: int,
        preferred_node: str,
        claim_deadline: int,
        result_deadline: int,
        private: bool = False,
    ) -> None:
        """Book a submitted job; check its event and the stored hash."""
        self.books.balance[client] -= max_payment
        job_id = len(self.books.jobs) + 1
        job = Job(
            client=client,
            model_id=MODEL_ID,
            input_hash=keccak(PRIVATE_INPUT if private else INPUT),
            params_hash=keccak(self.params_for(max_tokens)),
            max_tokens=max_tokens,
            max_payment=max_payment,
            preferred_node=preferred_node,
            submitted_at=now() | (PRIVATE_FLAG if private else 0),
            claim_deadline=claim_deadline,
            result_deadline=result_deadline,
        )
        self.books.jobs.append(JobState(job_id, job, private=private))
        assert (ev.job_id, ev.client, ev.max_payment, ev.max_tokens) == (
            job_id,
            client,
            max_payment,
            max_tokens,
        )
        assert bytes(self.market.hash_job(job)) == bytes(self.market.job_hash(job_id))

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, by_client=st.sampled_from([True, False, False, False]))
    def cancel(self, j: int, by_client: bool) -> None:
        """The client (any time) or a keeper (after the claim deadline) cancels."""
        js = self.choose(j, OPEN)
        self.do_cancel(js, js.job.client if by_client else self.keeper)

    def do_cancel(self, js: JobState, sender: str) -> None:
        reason = self.books.cancel_reason(js, sender, now())
        if self.act(reason, sender, self.market.cancel, js.job_id, js.job):
            self.books.balance[js.job.client] += js.job.max_payment
            js.status = 6
            ev = self.event(self.market, "JobCancelled")
            assert (ev.job_id, ev.refund) == (js.job_id, js.job.max_payment)

    # ---- nodes ----
    @rule(n=index)
    def register_node(self, n: int) -> None:
        """An account registers as a node."""
        node = self.pick(self.all_nodes, n)
        reason = "market: node exists" if self.books.nodes[node].registered else None
        if self.act(reason, node, self.market.register_node, PUBKEY, "http://node"):
            self.books.nodes[node].registered = True

    @rule(n=index, amount=st.integers(min_value=0, max_value=5_000))
    def stake(self, n: int, amount: int) -> None:
        """A node adds stake."""
        self.do_stake(self.pick(self.all_nodes, n), amount)

    def do_stake(self, node: str, amount: int) -> None:
        reason = self.books.node_reason(node) or (None if amount else "market: zero amount")
        if self.act(reason, node, self.market.stake, amount):
            received = self.books.pull(node, amount)
            self.books.apply_stake(node, received, block())
            ev = self.event(self.market, "Staked")
            assert (ev.node, ev.amount, ev.stake) == (node, received, self.books.nodes[node].stake)

    @rule(n=index, amount=st.integers(min_value=0, max_value=5_000))
    def unbond(self, n: int, amount: int) -> None:
        """A node starts unbonding free stake (below the minimum: it leaves the set)."""
        self.do_unbond(self.pick(self.all_nodes, n), amount)

    def do_unbond(self, node: str, amount: int) -> None:
        ns = self.books.nodes[node]
        reason = self.books.node_reason(node)
        if reason is None and amount == 0:
            reason = "market: zero amount"
        elif reason is None and ns.stake - ns.locked < amount:
            reason = "market: amount exceeds free stake"
        if self.act(reason, node, self.market.unbond, amount):
            self.books.apply_unbond(node, amount, now())

    @rule(n=index)
    def complete_unbond(self, n: int) -> None:
        """A node takes its unbonded stake once the delay has passed and no court role of
        it is open."""
        node = self.pick(self.all_nodes, n)
        ns = self.books.nodes[node]
        reason = self.books.complete_unbond_reason(node, now())
        if self.act(reason, node, self.market.complete_unbond):
            self.books.credit(node, ns.unbonding)
            ns.unbonding = 0

    @rule(n=index, price=st.integers(min_value=0, max_value=40))
    def serve_model(self, n: int, price: int) -> None:
        """A node serves the model (or changes its price); it needs the minimum stake."""
        self.do_serve(self.pick(self.all_nodes, n), price)

    def do_serve(self, node: str, price: int) -> None:
        reason = self.books.serve_reason(node)
        if self.act(reason, node, self.market.serve_model, MODEL_ID, price):
            self.books.apply_serve(node, price, block())

    @rule(n=index)
    def stop_serving(self, n: int) -> None:
        """A node leaves the model's active set."""
        node = self.pick(self.all_nodes, n)
        ns = self.books.nodes[node]
        reason = None if ns.serving else "market: model not served"
        if self.act(reason, node, self.market.stop_serving, MODEL_ID):
            self.books.leave_sets(node)

    @rule(n=index, by=index)
    def remove_node(self, n: int, by: int) -> None:
        """Anyone removes a node below the minimum stake from the active set."""
        node, sender = self.pick(self.all_nodes, n), self.pick(self.eoas, by)
        reason = self.books.remove_reason(node)
        if self.act(reason, sender, self.market.remove_node, MODEL_ID, node):
            self.books.leave_sets(node)

    @rule(f=index, amount=low_stake, price=st.integers(min_value=0, max_value=40))
    def filler_join(self, f: int, amount: int, price: int) -> None:
        """A filler registers, stakes nothing or less than the minimum, and tries to take
        a slot in the active set."""
        filler = self.pick(self.fillers, f)
        ns = self.books.nodes[filler]
        if not ns.registered:
            self.register_node(self.all_nodes.index(filler))
        if amount and ns.stake + self.books.received(amount) < self.books.params.min_stake:
            self.do_stake(filler, amount)
        self.do_serve(filler, price)

    @rule(value=st.sampled_from([MIN_STAKE, MIN_STAKE, 2 * MIN_STAKE, 4 * MIN_STAKE]))
    def set_min_stake(self, value: int) -> None:
        """The owner changes the minimum stake; nodes below a raised one stay in the set
        until someone removes them."""
        if self.act(None, self.owner, self.market.set_param, P_MIN_STAKE, value):
            self.books.set_min_stake(value)
            for node, ns in self.books.nodes.items():
                if ns.serving and ns.stake < value:
                    self.below_min_ok.add(node)

    @rule(
        param=st.sampled_from(["audit_rate", "challenger_share", "collateral"]),
        value=st.sampled_from([0, 50, 533, 534, 600, 801, 2_500, 5_000, 10_000, 250_000]),
    )
    def set_deterrence_param(self, param: str, value: int) -> None:
        """The owner moves a parameter of the deterrence product: audit rate x collateral
        ratio x (1 - challenger share) must stay above 1, counting the challenger's share
        that a cheater's own sybil can take back."""
        p, collateral = self.court_books.p, self.books.params.collateral_bps
        rate, challenger = p.audit_rate_bps, p.slash_challenger_bps
        if param == "audit_rate":
            contract, pid, bounds = self.court, P_AUDIT_RATE_BPS, 50 <= value <= MAX_BPS
            rate, prefix = value, "court"
        elif param == "challenger_share":
            contract, pid, bounds = self.court, P_SLASH_CHALLENGER_BPS, value <= 5_000
            challenger, prefix = value, "court"
        else:
            contract, pid, bounds = self.market, P_COLLATERAL_BPS, 10_000 <= value <= 1_000_000
            collateral, prefix = value, "market"
        reason = None
        if not bounds:
            reason = f"{prefix}: param out of bounds"
        elif rate * collateral * (MAX_BPS - challenger) <= MAX_BPS**3:
            reason = f"{prefix}: breaks deterrence"
        if self.act(reason, self.owner, contract.set_param, pid, value):
            self.court_books.p = replace(p, audit_rate_bps=rate, slash_challenger_bps=challenger)
            self.books.params = replace(self.books.params, collateral_bps=collateral)
            assert self.court.deters(collateral)

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, n=index)
    def claim(self, j: int, n: int) -> None:
        """A node claims a job."""
        self.do_claim(self.choose(j, OPEN), self.pick(self.all_nodes, n))

    def do_claim(self, js: JobState, node: str) -> None:
        reason = self.books.claim_reason(js, node, now())
        if self.act(reason, node, self.market.claim, js.job_id, js.job):
            self.books.apply_claim(js, node)
            ev = self.event(self.market, "JobClaimed")
            assert (ev.node, ev.price_per_token, ev.collateral) == (
                node,
                js.job.price_per_token,
                js.job.collateral,
            )

    def _output(self, js: JobState, extra: int, honest: bool) -> tuple[int, bytes, bytes]:
        tokens = max(0, js.job.max_tokens - extra)
        if extra > js.job.max_tokens:
            tokens = js.job.max_tokens + 1  # one too many: must revert
        packed = b"".join(t.to_bytes(4, "big") for t in range(tokens))
        digest = keccak(packed + js.job_id.to_bytes(32, "big") + (b"" if honest else b"lie"))
        return tokens, packed, digest

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, n=index, as_claimant=st.booleans(), extra=extra_tokens, honest=st.booleans())
    def publish(self, j: int, n: int, as_claimant: bool, extra: int, honest: bool) -> None:
        """The claimant (or an impostor) publishes a result, true or not."""
        js = self.choose(j, CLAIMED)
        sender = js.job.node if as_claimant and js.job.node != ZERO else self.pick(self.nodes, n)
        self.do_publish(js, sender, extra, honest)

    def do_publish(self, js: JobState, sender: str, extra: int, honest: bool) -> None:
        tokens, packed, digest = self._output(js, extra, honest)
        reason = self.books.publish_reason(js, sender, tokens, now())
        if self.act(
            reason, sender, self.market.publish, js.job_id, js.job, packed, tokens, 1, digest
        ):
            self.books.apply_publish(js, tokens, 1, digest, now(), block(), honest)

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, n=index, extra=extra_tokens, honest=st.booleans())
    def claim_and_publish(self, j: int, n: int, extra: int, honest: bool) -> None:
        """A node claims a job and publishes its result in one call."""
        js, node = self.choose(j, OPEN), self.pick(self.all_nodes, n)
        tokens, packed, digest = self._output(js, extra, honest)
        reason = self.books.claim_reason(js, node, now())
        if reason is None and tokens > js.job.max_tokens:
            reason = "market: too many output tokens"
        if self.act(
            reason,
            node,
            self.market.claim_and_publish,
            js.job_id,
            js.job,
            packed,
            tokens,
            0,
            digest,
        ):
            self.books.apply_claim(js, node)
            self.books.apply_publish(js, tokens, 0, digest, now(), block(), honest)

    @precondition(lambda self: self.jobs_in(OPEN, CLAIMED))
    @rule(
        picks=st.lists(index, min_size=1, max_size=4, unique=True),
        n=index,
        extra=extra_tokens,
        honest=st.booleans(),
    )
    def publish_many(self, picks: list[int], n: int, extra: int, honest: bool) -> None:
        """A node claims (where open) and publishes several jobs in one call; the first item
        that cannot be makes the whole call revert with its reason."""
        live, node = self.jobs_in(OPEN, CLAIMED), self.pick(self.nodes, n)
        batch = list({id(js): js for js in (self.pick(live, i) for i in picks)}.values())
        outputs = [self._output(js, extra, honest) for js in batch]
        trial = copy.deepcopy(self.books)  # later items see the locks of earlier claims
        reason = None
        for js, (tokens, _, digest) in zip(batch, outputs, strict=True):
            t = trial.jobs[self.books.jobs.index(js)]
            if t.status == OPEN:
                reason = trial.claim_reason(t, node, now())
                if reason is None:
                    trial.apply_claim(t, node)
            reason = reason or trial.publish_reason(t, node, tokens, now())
            if reason is not None:
                break
            trial.apply_publish(t, tokens, 0, digest, now(), block())
        columns = [list(c) for c in zip(*outputs, strict=True)]
        if self.act(
            reason,
            node,
            self.market.publish_many,
            [js.job_id for js in batch],
            [js.job for js in batch],
            columns[1],
            columns[0],
            [0] * len(batch),
            columns[2],
        ):
            for js, (tokens, _, digest) in zip(batch, outputs, strict=True):
                if js.status == OPEN:
                    self.books.apply_claim(js, node)
                self.books.apply_publish(js, tokens, 0, digest, now(), block(), honest)

    # ---- keepers ----
    def _finalized(self, js: JobState) -> None:
        earned, refund, fee, audit = self.books.pay(js)
        ev = [e for e in self.market.get_logs() if type(e).__name__ == "JobFinalized"]
        assert any(
            (e.job_id, e.payment, e.refund, e.fee, e.audit_share)
            == (js.job_id, earned, refund, fee, audit)
            for e in ev
        ), ev

    @precondition(lambda self: self.books.jobs)
    @rule(j=index)
    def finalize(self, j: int) -> None:
        """A keeper finalizes a published job."""
        self.do_finalize(self.choose(j, PUBLISHED))

    def do_finalize(self, js: JobState) -> None:
        reason = self.books.finalize_reason(js, now())
        if self.act(reason, self.keeper, self.market.finalize, js.job_id, settlement_of(js.job)):
            self._finalized(js)

    @precondition(lambda self: self.jobs_in(PUBLISHED))
    @rule(picks=st.lists(index, min_size=1, max_size=5, unique=True))
    def finalize_many(self, picks: list[int]) -> None:
        """A keeper finalizes a batch; one job not due makes the whole batch revert."""
        published = self.jobs_in(PUBLISHED)
        batch = list({id(js): js for js in (self.pick(published, i) for i in picks)}.values())
        reasons = [self.books.finalize_reason(js, now()) for js in batch]
        reason = next((r for r in reasons if r is not None), None)
        ids, settlements = [js.job_id for js in batch], [settlement_of(js.job) for js in batch]
        if self.act(reason, self.keeper, self.market.finalize_many, ids, settlements):
            for js in batch:
                self._finalized(js)

    @precondition(lambda self: self.books.jobs)
    @rule(j=index)
    def expire(self, j: int) -> None:
        """A keeper expires a claimed job whose result deadline passed."""
        self.do_expire(self.choose(j, CLAIMED))

    def do_expire(self, js: JobState) -> None:
        reason = self.books.expire_reason(js, now())
        if self.act(reason, self.keeper, self.market.expire, js.job_id, js.job):
            refund, penalty = self.books.expire(js)
            ev = self.event(self.market, "JobExpired")
            assert (ev.job_id, ev.refund, ev.penalty) == (js.job_id, refund, penalty)

    @rule(seconds=time_step)
    def time_travel(self, seconds: int) -> None:
        """Time passes (a block per 12 s)."""
        self.travel(seconds=seconds)

    @rule(blocks=st.sampled_from([1, 1, 1, 2, 3, BLOCKHASH_DEPTH, BLOCKHASH_DEPTH + 1]))
    def mine(self, blocks: int) -> None:
        """Blocks are mined (a draw's seed block is final; 257 blocks: its hash is gone)."""
        self.travel(blocks=blocks)

    # ---- court: disputes, audits, draws ----
    def dispute_of(self, js: JobState) -> Dispute | None:
        return self.court_books.disputes.get(js.job_id)

    def disputed(self, j: int) -> JobState:
        """Mostly a job under verification, sometimes any job."""
        return self.choose(j, VERIFYING)

    def check_requested(self, js: JobState, d: Dispute) -> None:
        """A draw was requested in this block: nothing is picked yet."""
        info = self.court.dispute_info(js.job_id)
        want = PANEL_DRAWING if d.appellant != ZERO else DRAWING
        assert (info.phase, info.seed_block) == (want, block()), (info.phase, info.seed_block)
        if want == DRAWING:
            assert info.verifier == ZERO

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, p=index)
    def dispute(self, j: int, p: int) -> None:
        """Anyone but the node disputes a published result, posting the bond (a private
        job: mostly its client, the only one who may)."""
        js = self.choose(j, PUBLISHED)
        sender = self.pick(self.payers, p)
        if js.private and p % 4 and js.job.client in self.payers:
            sender = js.job.client
        self.do_dispute(js, sender)

    def dispute_reason(self, js: JobState, sender: str) -> str | None:
        bond = self.court_books.p.dispute_bond
        reason = "court: node cannot dispute own job" if sender == js.job.node else None
        if reason is None and js.private and sender != js.job.client:
            reason = "court: only the client disputes a private job"
        return reason or self.court_books.open_reason(js, sender, bond, now(), block())

    def do_dispute(self, js: JobState, sender: str) -> bool:
        reason = self.dispute_reason(js, sender)
        if not self.act(reason, sender, self.court.dispute, js.job_id, js.job):
            return False
        bond = self.court_books.p.dispute_bond
        d = self.court_books.open(js, KIND_DISPUTE, sender, bond, block())
        self.check_requested(js, d)
        return True

    def audit_reason(self, js: JobState, sender: str) -> str | None:
        """Why `sender` may not start the audit of `js` now (selection by the hash of
        published_block + 2, computed here and checked against the court's view)."""
        target = js.job.published_block + 2
        if block() <= target:
            return "court: audit seed not yet available"
        if block() > target + 256:
            return "court: audit seed expired"
        rate = self.court_books.p.audit_rate_bps
        selected = audit_selected(self.block_hash(target), js.job_id, rate)
        assert selected == self.court.is_audit_selected(js.job_id, js.job.published_block)
        if not selected:
            return "court: not selected for audit"
        return self.court_books.open_reason(js, sender, 0, now(), block())

    @precondition(lambda self: self.books.jobs)
    @rule(j=index)
    def start_audit(self, j: int) -> None:
        """A keeper starts the audit of a published job selected by a later block hash."""
        self.do_audit(self.choose(j, PUBLISHED), self.keeper)

    def do_audit(self, js: JobState, sender: str) -> bool:
        reason = self.audit_reason(js, sender)
        if not self.act(reason, sender, self.court.start_audit, js.job_id, js.job):
            return False
        d = self.court_books.open(js, KIND_AUDIT, sender, 0, block())
        self.check_requested(js, d)
        return True

    @precondition(lambda self: self.jobs_in(PUBLISHED))
    @rule(j=index, s=index, audit=st.booleans())
    def self_dispute(self, j: int, s: int, audit: bool) -> None:
        """A node's own sybil (a shadow account or one of the attacker's nodes) disputes
        or audits the node's job: it is excluded from the draw like any challenger, and
        what flows back to it is checked at settlement."""
        js = self.pick(self.jobs_in(PUBLISHED), j)
        ally = self.pick([*self.shadows, *self.sybils], s)
        if ally == js.job.node:
            ally = self.shadows[0]
        if (self.do_audit if audit else self.do_dispute)(js, ally):
            self.allies[js.job_id] = ally

    @precondition(lambda self: self.court_books.disputes)
    @rule(j=index, by=index)
    def draw(self, j: int, by: int) -> None:
        """Anyone draws a requested verifier or panel."""
        self.do_draw(self.disputed(j), self.pick(self.eoas, by))

    def do_draw(self, js: JobState, sender: str) -> None:
        d = self.dispute_of(js)
        reason = self.court_books.draw_reason(d, block())
        if self.act(reason, sender, self.court.draw, js.job_id):
            assert d is not None
            self.drawn(js, d)

    def drawn(self, js: JobState, d: Dispute) -> None:
        """A draw went through: the chain must have picked what the model picks."""
        panel = d.phase == PANEL_DRAWING
        outcome = self.court_books.draw_outcome(js.job_id, d, block(), self.seed_hash(d.seed_block))
        if outcome:
            cands = self.court_books.books.draw_candidates(d.seed_block, d.min_stake)
            cands = [a for a in cands if a not in d.excluded()]
            n, k, size = len(cands), len(set(cands) & set(self.sybils)), len(outcome)
            chance = 1 - math.comb(n - k, size) / math.comb(n, size)
            self.sybil_draws.append((chance, bool(set(outcome) & set(self.sybils))))
        self.court_books.apply_draw(d, outcome, block(), now())
        info = self.court.dispute_info(js.job_id)
        if outcome is None:
            event("draw: seed hash gone, requested anew")
            self.check_requested(js, d)
        elif panel:
            event(f"draw: panel of {len(outcome)}")
            assert list(info.panel) == d.panel, ("chain pick != model pick", info.panel, d.panel)
        else:
            event(f"draw: {'verifier' if outcome else 'none left'}")
            assert info.verifier == d.verifier, ("chain pick != model pick", info.verifier)

    # ---- the attacker's grinding contract ----
    @precondition(lambda self: self.books.jobs)
    @rule(j=index, s=index, audit=st.booleans())
    def grind_open(self, j: int, s: int, audit: bool) -> None:
        """The grinder disputes (or audits), tries to draw in the same transaction and
        reverts unless its sybil verifies: it never can, as nothing is picked yet."""
        js, sybil = self.choose(j, PUBLISHED), self.pick(self.sybils, s)
        grinder = self.grinder.address
        if audit:
            reason = self.audit_reason(js, grinder)
            fn: Callable[..., Any] = self.grinder.grind_audit
        else:
            reason = self.dispute_reason(js, grinder)
            fn = self.grinder.grind_dispute
        self.act(reason or "grinder: sybil not picked", self.attacker, fn, js.job_id, js.job, sybil)

    @precondition(lambda self: self.books.jobs)
    @rule(j=index)
    def grind_peek(self, j: int) -> None:
        """The grinder disputes for real and records what it can see before returning:
        a requested draw, no verifier, and a same-block draw that fails."""
        js, grinder = self.choose(j, PUBLISHED), self.grinder.address
        reason = self.dispute_reason(js, grinder)
        if self.act(reason, self.attacker, self.grinder.peek_dispute, js.job_id, js.job):
            d = self.court_books.open(
                js, KIND_DISPUTE, grinder, self.court_books.p.dispute_bond, block()
            )
            self.check_requested(js, d)
            seen = (self.grinder.seen_phase(), self.grinder.seen_verifier())
            assert seen == (DRAWING, ZERO), seen
            assert not self.grinder.seen_draw_ok(), "a draw succeeded in the request's block"

    @precondition(lambda self: self.court_books.disputes)
    @rule(j=index, s=index)
    def grind_appeal(self, j: int, s: int) -> None:
        """The grinder appeals and reverts unless its sybil sits on the panel: never."""
        js, sybil, grinder = self.disputed(j), self.pick(self.sybils, s), self.grinder.address
        reason = self.court_books.appeal_reason(self.dispute_of(js), grinder, now(), block())
        self.act(
            reason or "grinder: sybil not picked",
            self.attacker,
            self.grinder.grind_appeal,
            js.job_id,
            sybil,
        )

    @precondition(lambda self: self.court_books.disputes)
    @rule(j=index, s=index)
    def grind_draw(self, j: int, s: int) -> None:
        """The grinder calls draw and reverts unless its sybil is picked: it goes through
        exactly when an honest draw would have picked the sybil anyway."""
        js, sybil = self.disputed(j), self.pick(self.sybils, s)
        d = self.dispute_of(js)
        reason = self.court_books.draw_reason(d, block())
        if reason is None:
            assert d is not None
            outcome = self.court_books.draw_outcome(
                js.job_id, d, block(), self.seed_hash(d.seed_block)
            )
            if not outcome or sybil not in outcome:
                reason = "grinder: sybil not picked"
        if self.act(reason, self.attacker, self.grinder.grind_draw, js.job_id, sybil):
            assert d is not None
            self.drawn(js, d)

    # ---- court: verifiers, appeals, settlement ----
    def verifier_or_other(self, d: Dispute | None, as_verifier: bool, n: int) -> str:
        if d is not None and as_verifier and d.verifier != ZERO:
            return d.verifier
        return self.pick(self.nodes, n)

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, as_verifier=st.sampled_from([True, True, True, False]), n=index)
    def accept(self, j: int, as_verifier: bool, n: int) -> None:
        """The assigned verifier (or an impostor) accepts the task."""
        js = self.disputed(j)
        self.do_accept(js, self.verifier_or_other(self.dispute_of(js), as_verifier, n))

    def do_accept(self, js: JobState, sender: str) -> None:
        d = self.dispute_of(js)
        reason: str | None
        if d is None or d.phase != ASSIGNED:
            reason = "court: not awaiting acceptance"
        elif sender != d.verifier:
            reason = "court: not the verifier"
        else:
            reason = "court: accept deadline passed" if now() > d.deadline else None
        if self.act(reason, sender, self.court.accept, js.job_id):
            assert d is not None
            d.phase, d.deadline = ACCEPTED, now() + self.court_books.p.verdict_window

    @precondition(lambda self: self.books.jobs)
    @rule(
        j=index,
        valid=st.booleans(),
        as_verifier=st.sampled_from([True, True, True, False]),
        n=index,
    )
    def post_verdict(self, j: int, valid: bool, as_verifier: bool, n: int) -> None:
        """The verifier (or an impostor) posts any verdict."""
        js = self.disputed(j)
        sender = self.verifier_or_other(self.dispute_of(js), as_verifier, n)
        self.do_verdict(js, sender, valid)

    def do_verdict(self, js: JobState, sender: str, valid: bool) -> None:
        d = self.dispute_of(js)
        reason: str | None
        if d is None or d.phase != ACCEPTED:
            reason = "court: not awaiting verdict"
        elif sender != d.verifier:
            reason = "court: not the verifier"
        else:
            reason = "court: verdict deadline passed" if now() > d.deadline else None
        if self.act(reason, sender, self.court.post_verdict, js.job_id, valid):
            assert d is not None
            if d.withheld():  # the court fixes it: audit -> fraud, dispute -> fails
                valid = d.kind == KIND_DISPUTE
            d.phase, d.verdict_valid = VERDICT, valid
            assert self.event(self.court, "VerdictPosted").valid == valid
            d.deadline = now() + self.court_books.p.appeal_window

    def vote_of(self, js: JobState, member: str) -> bool:
        """An honest node rules by the truth; the attacker's sybils against it."""
        return js.honest != (member in self.sybils)

    @precondition(lambda self: self.jobs_in(VERIFYING))
    @rule(j=index)
    def sybils_act(self, j: int) -> None:
        """A sybil verifier accepts and rules against the truth; a sybil on a panel votes
        against it."""
        js = self.pick(self.jobs_in(VERIFYING), j)
        d = self.dispute_of(js)
        assert d is not None
        if d.verifier in self.sybils and d.phase == ASSIGNED:
            self.do_accept(js, d.verifier)
        elif d.verifier in self.sybils and d.phase == ACCEPTED:
            self.do_verdict(js, d.verifier, self.vote_of(js, d.verifier))
        elif d.phase == APPEALED:
            for member in d.panel:
                if member in self.sybils and member not in d.votes:
                    self.do_vote(js, member, self.vote_of(js, member))

    @precondition(lambda self: self.books.jobs)
    @rule(j=index)
    def replace_verifier(self, j: int) -> None:
        """A keeper replaces a verifier that missed its deadline."""
        self.do_replace(self.disputed(j))

    def do_replace(self, js: JobState) -> None:
        d = self.dispute_of(js)
        reason = self.court_books.replace_reason(d, now())
        if self.act(reason, self.keeper, self.court.replace_verifier, js.job_id):
            assert d is not None
            late = d.verifier
            penalty = self.court_books.apply_replace(d, block(), now())
            ev = self.event(self.court, "VerifierReplaced")
            assert (ev.verifier, ev.penalty) == (late, penalty)
            if d.phase == DRAWING:
                self.check_requested(js, d)

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, p=index, accused=st.sampled_from([False, False, True]))
    def appeal(self, j: int, p: int, accused: bool) -> None:
        """Anyone appeals a verdict to a panel of three (the accused node, with the
        dispute bond; anyone else with the appeal bond)."""
        js = self.disputed(j)
        sender = js.job.node if accused and js.job.node != ZERO else self.pick(self.payers, p)
        self.do_appeal(js, sender)

    def do_appeal(self, js: JobState, sender: str) -> None:
        d = self.dispute_of(js)
        reason = self.court_books.appeal_reason(d, sender, now(), block())
        if self.act(reason, sender, self.court.appeal, js.job_id):
            assert d is not None
            self.court_books.apply_appeal(d, sender, block())
            ev = self.event(self.court, "AppealOpened")
            assert (ev.appellant, ev.bond) == (sender, d.appeal_bond)
            self.check_requested(js, d)

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, m=index, valid=st.booleans(), member=st.sampled_from([True, True, False]))
    def panel_vote(self, j: int, m: int, valid: bool, member: bool) -> None:
        """A panel member (or an outsider) votes."""
        js = self.disputed(j)
        d = self.dispute_of(js)
        sender = self.pick(d.panel, m) if d and d.panel and member else self.pick(self.nodes, m)
        self.do_vote(js, sender, valid)

    def do_vote(self, js: JobState, sender: str, valid: bool) -> None:
        d = self.dispute_of(js)
        reason: str | None
        if d is None or d.phase != APPEALED:
            reason = "court: not in appeal"
        elif sender not in d.panel:
            reason = "court: not on the panel"
        elif sender in d.votes:
            reason = "court: already voted"
        else:
            reason = "court: vote deadline passed" if now() > d.deadline else None
        if self.act(reason, sender, self.court.panel_vote, js.job_id, valid):
            assert d is not None
            if d.private and not d.panel_handed:  # no key: recorded as the verdict
                valid = d.verdict_valid
            d.votes[sender] = valid

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, who=st.sampled_from(["node", "node", "challenger", "other"]))
    def hand_key(self, j: int, who: str) -> None:
        """The node (or the disputing client, or an outsider) hands a private job's key."""
        private = [js for js in self.jobs_in(VERIFYING) if js.private]
        js = self.pick(private, j) if private and j % 4 else self.disputed(j)
        d = self.dispute_of(js)
        sender = {"node": js.job.node, "challenger": d.challenger if d else ZERO}.get(who, ZERO)
        if sender == ZERO:
            sender = self.keeper
        reason: str | None = None
        if d is None or not d.private:
            reason = "court: not a private job"
        elif sender != d.node and not (d.kind == KIND_DISPUTE and sender == d.challenger):
            reason = "court: not a key holder"
        elif d.phase not in (ASSIGNED, ACCEPTED, APPEALED):
            reason = "court: nobody to hand the key to"
        elif now() > d.hand_deadline:
            reason = "court: key deadline passed"
        if self.act(reason, sender, self.court.hand_key, js.job_id, b"\x01" * 81):
            assert d is not None
            if d.phase == APPEALED:
                d.panel_handed = True
            else:
                d.handed_round = d.rounds
            ev = self.event(self.court, "KeyHanded")
            assert list(ev.recipients) == (d.panel if d.phase == APPEALED else [d.verifier])

    @precondition(lambda self: self.books.jobs)
    @rule(j=index)
    def settle(self, j: int) -> None:
        """A keeper settles a dispute whose outcome is due."""
        self.do_settle(self.disputed(j))

    def do_settle(self, js: JobState) -> None:
        d = self.dispute_of(js)
        reason = self.court_books.settle_reason(d, now())
        if not self.act(reason, self.keeper, self.court.settle, js.job_id, js.job):
            return
        assert d is not None
        reward = self.court_books.audit_reward(js) if d.kind == KIND_AUDIT else 0
        result = self.court_books.settle(js, d)
        ev = self.event(self.court, "DisputeSettled")
        assert (ev.job_id, ev.valid) == (js.job_id, result.final)
        assert self.market.job_status(js.job_id) == js.status
        event(f"settled {'valid' if result.final else 'fraud'}, truth {js.honest}")
        ally = self.allies.get(js.job_id)
        if ally is not None and not result.final and d.appellant != ally:
            # a cheater's own challenger/keeper recovers at most the challenger's share of
            # the slash and the keeper's tenth of the audit reward: cheating still costs
            p = self.court_books.p
            back = result.credits.get(ally, 0) - d.bond
            cut = reward // KEEPER_CUT
            assert back <= result.slashed * p.slash_challenger_bps // MAX_BPS + cut, back
            if result.slashed * (MAX_BPS - p.slash_challenger_bps) > cut * MAX_BPS:
                assert back < result.slashed, (back, result.slashed)
            event("self-dispute of a fraud: the cheater's sybil recovered less than the slash")

    # ---- driver: push one live job one step further along its natural path ----
    @precondition(lambda self: self.jobs_in(*LIVE))
    @rule(
        j=index,
        choice=st.integers(0, 3),
        honest=st.booleans(),
        steps=st.sampled_from([1, 2, 4, 8]),
    )
    def advance(self, j: int, choice: int, honest: bool, steps: int) -> None:
        """Take up to `steps` next natural steps of a live job (uniform rule choice alone
        rarely gets a job through claim, publish, dispute, draw, verdict, appeal and
        settlement). Honest verifiers and panel members rule by the truth, sybils against
        it; a selected job is audited, some disputes come from the node's own sybil."""
        js = self.pick(self.jobs_in(*LIVE), j)
        for _ in range(steps):
            if js.status not in LIVE:
                return
            self.step(js, j, choice, honest)

    @precondition(lambda self: self.jobs_in(PUBLISHED, VERIFYING))
    @rule(
        j=index,
        choice=st.integers(1, 3),
        honest=st.booleans(),
        steps=st.sampled_from([2, 4, 8, 16]),
    )
    def advance_dispute(self, j: int, choice: int, honest: bool, steps: int) -> None:
        """The same for a published job or one under verification (no finalize): the
        court's paths are the long ones."""
        js = self.pick(self.jobs_in(PUBLISHED, VERIFYING), j)
        for _ in range(steps):
            if js.status not in LIVE:
                return
            self.step(js, j, choice, honest)

    def step(self, js: JobState, j: int, choice: int, honest: bool) -> None:
        d = self.dispute_of(js)
        if js.status == OPEN:
            nodes = [n for n in self.all_nodes if self.books.claim_reason(js, n, now()) is None]
            if nodes:
                self.do_claim(js, self.pick(nodes, choice))
        elif js.status == CLAIMED:
            self.do_publish(js, js.job.node, choice, honest)
        elif js.status == PUBLISHED and choice == 0:
            self.do_finalize(js)
        elif js.status == PUBLISHED and self.audit_reason(js, self.keeper) is None:
            self.do_audit(js, self.keeper)
        elif js.status == PUBLISHED and choice == 3:
            ally = self.pick([a for a in [*self.shadows, *self.sybils] if a != js.job.node], j)
            if self.do_dispute(js, ally):
                self.allies[js.job_id] = ally
        elif js.status == PUBLISHED:
            payers = [a for a in self.payers if a != js.job.node]
            self.do_dispute(js, self.pick(payers, j))
        elif d is not None and d.phase in (DRAWING, PANEL_DRAWING):
            if block() <= d.seed_block:
                self.travel(blocks=1)
            self.do_draw(js, self.keeper)
        elif d is not None and d.phase == ASSIGNED:
            self.do_accept(js, d.verifier)
        elif d is not None and d.phase == ACCEPTED:
            self.do_verdict(js, d.verifier, self.vote_of(js, d.verifier))
        elif d is not None and d.phase == VERDICT and choice < 2 and d.appellant == ZERO:
            wronged = d.verdict_valid != js.honest
            if wronged and not d.verdict_valid and choice == 0:
                self.do_appeal(js, js.job.node)  # the accused appeals a false "invalid"
            else:
                self.do_appeal(js, self.pick(self.payers, j))
        elif d is not None and d.phase == APPEALED and len(d.votes) < len(d.panel):
            member = next(m for m in d.panel if m not in d.votes)
            self.do_vote(js, member, self.vote_of(js, member))
        elif d is not None and d.phase in (VERDICT, APPEALED) and now() <= d.deadline:
            if choice < 2:
                self.travel(seconds=d.deadline - now() + 1)
            self.do_settle(js)
        else:
            self.do_settle(js)

    # ---- invariants ----
    # One invariant, run after every step, in a fixed order. Per account and per node it
    # reads the chain where the model changed since the last step (the totals, read every
    # step, catch a change the model did not make), and everything every FULL_EVERY steps
    # and at the end: reading 20 accounts and 8 nodes after each of 100 steps would double
    # the harness's time.
    @invariant()
    def books_match_chain(self) -> None:
        """The contract equals the model: conservation, job statuses (terminal stays
        terminal), stakes, the active set and the court's records."""
        self.steps += 1
        full = self.steps % FULL_EVERY == 0
        self.statuses_match_and_terminal_stays_terminal()
        self.conservation_and_books(full)
        self.stakes_match(full)
        self.active_set_is_staked(full)
        self.disputes_match_court(full)

    def statuses_match_and_terminal_stays_terminal(self) -> None:
        """Job statuses equal the model's; a terminal status never changes again."""
        for js in self.books.jobs:
            status = self.market.job_status(js.job_id)
            assert status == js.status, (js.job_id, status, js.status)
            if js.job_id in self.terminal_seen:
                assert status == self.terminal_seen[js.job_id]
            elif status in TERMINAL:
                self.terminal_seen[js.job_id] = status

    def changed(self, seen: dict[str, Any], key: str, value: Any, full: bool) -> bool:
        """Whether the model's `value` for `key` changed since the last check (or `full`)."""
        if not full and seen.get(key) == value:
            return False
        seen[key] = value
        return True

    def conservation_and_books(self, full: bool = True) -> None:
        """PROTOCOL §2: the market's token balance equals what it owes, from the model's
        books and (full) from the contract's own getters; every bucket the contract exposes
        equals the model's."""
        m, b = self.market, self.books
        held = self.token.balanceOf(m.address)
        assert held == b.owed(), (held, b.owed())
        totals = (m.total_stake(), m.court_funds(), m.protocol_fees(), m.audit_pool())
        assert totals == (b.total_stake(), b.court_funds, b.protocol_fees, b.audit_pool)
        seen = self.seen_accounts
        for a in self.accounts:
            mine = (b.balance[a], b.claimable[a], b.wallet[a])
            if self.changed(seen, a, mine, full):
                chain = (m.balance_of(a), m.claimable(a), self.token.balanceOf(a))
                assert chain == mine, (a, chain, mine)
        if full:
            live = sum(js.job.max_payment for js in b.jobs if js.status in LIVE)
            balances = sum(b.balance[a] for a in self.accounts)
            claimables = sum(b.claimable[a] for a in self.accounts)
            assert held == balances + live + claimables + sum(totals)

    def stakes_match(self, full: bool = True) -> None:
        """stake >= locked for every node; a slashed node keeps nothing."""
        seen = self.seen_nodes
        for node in self.all_nodes:
            ns = self.books.nodes[node]
            mine = (ns.registered, ns.slashed, ns.stake, ns.locked, ns.unbonding)
            if not self.changed(seen, node, mine, full):
                continue
            info = self.market.node_info(node)
            chain = (info.registered, info.slashed, info.stake, info.locked, info.unbonding)
            assert chain == mine, (node, chain, mine)
            assert info.stake >= info.locked
            if info.slashed:
                assert info.stake == info.locked == info.unbonding == 0

    def active_set_is_staked(self, full: bool = True) -> None:
        """The active set is the model's, and no node in it has less than the minimum
        stake, unless the owner raised the minimum since it joined (then anyone may remove
        it): serve needs it, and unbond, expire and the court's slashes below it leave."""
        b, min_stake = self.books, self.books.params.min_stake
        serving = {a for a, n in b.nodes.items() if n.serving}
        assert set(self.market.model_nodes(MODEL_ID)) == serving
        for node in list(self.below_min_ok):
            if node not in serving or b.nodes[node].stake >= min_stake:
                self.below_min_ok.discard(node)
        for node in serving:
            ns = b.nodes[node]
            assert ns.stake >= min_stake or node in self.below_min_ok, (node, ns.stake)
            assert not ns.slashed and ns.registered
            if full:
                assert self.market.serve_price(node, MODEL_ID) == ns.price
        now_cands = self.market.draw_candidates(MODEL_ID, block() + 1, min_stake)
        assert set(now_cands) == set(b.draw_candidates(block() + 1, min_stake))

    def disputes_match_court(self, full: bool = True) -> None:
        """The court's record of every open dispute (full: every dispute) matches the
        model's: phase, seed block, verifier, panel, appeal, votes; the model's court holds
        are the open roles."""
        for job_id, d in self.court_books.disputes.items():
            if d.phase == SETTLED and not full:
                continue
            info = self.court.dispute_info(job_id)
            valid, invalid = self.court_books.tally(d)
            assert (info.kind, info.phase, info.challenger, info.bond, info.node) == (
                d.kind,
                d.phase,
                d.challenger,
                d.bond,
                d.node,
            )
            assert (info.rounds, info.seed_block, info.deadline) == (
                d.rounds,
                d.seed_block,
                d.deadline,
            )
            assert (info.verifier, list(info.panel)) == (d.verifier, d.panel)
            assert (info.appellant, info.appeal_bond) == (d.appellant, d.appeal_bond)
            assert (info.votes_valid, info.votes_invalid) == (valid, invalid)
        roles: dict[str, int] = {}
        for d in self.court_books.disputes.values():
            if d.phase != SETTLED:
                for member in [d.verifier, *d.panel]:
                    roles[member] = roles.get(member, 0) + 1
        for node, ns in self.books.nodes.items():
            assert ns.holds == roles.get(node, 0), ("court holds", node, ns.holds)

    # ---- teardown: everything can end and be withdrawn ----
    def settle_everything(self) -> None:
        """Drive every live job to a terminal state with keeper calls, then withdraw all."""
        latest = max((js.job.result_deadline for js in self.books.jobs), default=now())
        self.travel(seconds=max(0, latest - now()) + 1)
        self.travel(seconds=self.books.params.challenge_window + 1)
        for js in self.books.jobs:
            if js.status == OPEN:
                self.do_cancel(js, self.keeper)
            elif js.status == CLAIMED:
                self.do_expire(js)
            elif js.status == PUBLISHED:
                self.do_finalize(js)
        self.settle_disputes()
        for js in self.books.jobs:
            assert js.status in TERMINAL, (js.job_id, js.status)
        self.statuses_match_and_terminal_stays_terminal()
        for node in self.all_nodes:
            ns = self.books.nodes[node]
            assert ns.locked == 0, node
            assert ns.holds == 0, ("court role still open after settlement", node)
            if ns.stake and not ns.slashed:
                self.do_unbond(node, ns.stake)
        self.travel(seconds=self.books.params.unbonding_delay + 1)
        for i, node in enumerate(self.all_nodes):
            if self.books.nodes[node].unbonding:
                self.complete_unbond(i)
        if self.books.protocol_fees:
            self.withdraw_fees()
        for c, payer in enumerate(self.payers):
            if self.books.balance[payer]:
                self.withdraw_deposit(c, self.books.balance[payer])
        grinder = self.grinder.address
        if self.books.balance[grinder]:
            amount = self.books.balance[grinder]
            self.act(None, self.attacker, self.grinder.withdraw_deposit, amount)
            self.books.balance[grinder] = 0
            self.books.push(grinder, amount)
        for a, account in enumerate(self.accounts):
            if self.books.claimable[account]:
                self.withdraw(a)
        self.conservation_and_books(full=True)
        self.stakes_match(full=True)
        self.disputes_match_court(full=True)
        self.check_uniform_draws()
        assert self.books.court_funds == 0, "bonds or slashed stake left undistributed"
        assert self.token.balanceOf(self.market.address) == self.books.audit_pool
        assert self.books.total_stake() == 0
        assert not any(self.books.balance.values()) and not any(self.books.claimable.values())

    def settle_disputes(self) -> None:
        """Draws are made, late verifiers replaced and due outcomes settled until none is
        left."""
        p = self.court_books.p
        longest = max(p.accept_window, p.verdict_window, p.appeal_window, p.vote_window)
        for _ in range(4 * MAX_ROUNDS + 4):
            verifying = self.jobs_in(VERIFYING)
            if not verifying:
                return
            for _ in range(2):  # a draw whose seed hash was gone is requested anew: again
                self.travel(blocks=1)
                for js in verifying:
                    d = self.dispute_of(js)
                    assert d is not None, js.job_id
                    if d.phase in (DRAWING, PANEL_DRAWING):
                        self.do_draw(js, self.keeper)
            self.travel(seconds=longest + 1)
            for js in verifying:
                d = self.dispute_of(js)
                assert d is not None
                if d.phase in (ASSIGNED, ACCEPTED):
                    self.do_replace(js)
                elif d.phase in (VERDICT, APPEALED, UNRESOLVED):
                    self.do_settle(js)
        stuck = [(js.job_id, self.dispute_of(js)) for js in self.jobs_in(VERIFYING)]
        assert not stuck, [(i, d and (d.phase, d.rounds, d.seed_block)) for i, d in stuck]

    def check_uniform_draws(self) -> None:
        """Over the whole run the attacker's sybils were picked no more often than a
        uniform draw allows (Hoeffding bound; the exact check is chain pick == model pick
        at every draw)."""
        n = len(self.sybil_draws)
        if not n:
            return
        excess = sum(hit for _, hit in self.sybil_draws) - sum(p for p, _ in self.sybil_draws)
        assert excess <= math.sqrt(n * math.log(1 / UNIFORM_TAIL) / 2), (excess, n)

    def teardown(self) -> None:
        try:
            self.settle_everything()
        finally:
            self._anchor.__exit__(None, None, None)


class FeeOnTransferMachine(MarketMachine):
    """The same, paid in a token that burns 1 % of every transfer."""

    TOKEN = "contracts/test/FeeOnTransferToken.vy"
    TOKEN_FEE_BPS = 100


class NoReturnMachine(MarketMachine):
    """The same, paid in a token whose transfer functions return nothing."""

    TOKEN = "contracts/test/NoReturnToken.vy"


for _machine in (MarketMachine, FeeOnTransferMachine, NoReturnMachine):
    _machine.TestCase.settings = settings.get_profile("verinfer-fuzz")

TestMarketStateful = MarketMachine.TestCase
TestMarketFeeOnTransferStateful = FeeOnTransferMachine.TestCase
TestMarketNoReturnStateful = NoReturnMachine.TestCase
