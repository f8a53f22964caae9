"""Stateful fuzzing of the market (and court) on titanoboa, against a ghost model.

Each rule is one user action, choosing actors and jobs by index. Before calling, the rule
asks the model (model.py) whether the contract must revert and with which reason; a
predicted revert is asserted with `boa.reverts(reason)`, a predicted success must succeed
and its effects are applied to the model. Invariants compare the contract with the model
after every step; the teardown drives every job to a terminal state with permissionless
calls only and withdraws everything.

Run with three tokens: a plain ERC20, a fee-on-transfer token and a no-return-value token.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import boa
from eth_utils import keccak
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
    CLAIMED,
    KIND_AUDIT,
    KIND_DISPUTE,
    LIVE,
    MAX_ROUNDS,
    OPEN,
    PUBLISHED,
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
)

MODEL = ("verinfer/fuzz", "r1", keccak(b"fuzz manifest"))
MODEL_ID = model_id(*MODEL)
INPUT = b"fuzz prompt"
WALLET = 10**12
MIN_STAKE = 1_000
PUBKEY = bytes(range(64))
N_CLIENTS, N_NODES = 3, 6
DISPUTE_BOND, APPEAL_BOND, VERIFIER_FEE, NO_SHOW_PENALTY, AUDIT_FEE = 100, 300, 20, 50, 5
P_AUDIT_RATE_BPS = 10

STEPS_RUN: dict[str, int] = {}  # contract calls made, per machine (reported at the end)
index = st.integers(min_value=0, max_value=2**16)
small_amount = st.integers(min_value=1, max_value=5_000)
extra_tokens = st.one_of(st.integers(0, 8), st.integers(0, 70))  # > max_tokens: too many
time_step = st.sampled_from([1, 30, 61, 600, 3_601, 7_201, 86_400, 7 * 86_400 + 1])


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
        self.owner = boa.env.generate_address("owner")
        self.fee_recipient = boa.env.generate_address("fees")
        self.keeper = boa.env.generate_address("keeper")
        self.clients = [boa.env.generate_address(f"client{i}") for i in range(N_CLIENTS)]
        self.nodes = [boa.env.generate_address(f"node{i}") for i in range(N_NODES)]
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
        m, c = self.market, self.court
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
        self.court_books = CourtBooks(
            self.books,
            CourtParams(
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
            ),
        )
        for account in self.accounts:
            self.books.wallet[account] = 0
            self.books.balance[account] = 0
            self.books.claimable[account] = 0
        for account in [*self.clients, *self.nodes]:
            self.token.mint(account, WALLET)
            self.books.wallet[account] = WALLET
            with boa.env.prank(account):
                self.token.approve(self.market.address, 2**256 - 1)
        for node in self.nodes:
            self.books.nodes[node] = NodeState()
        self.terminal_seen: dict[int, int] = {}

    # ---- helpers ----
    @property
    def accounts(self) -> list[str]:
        """Every account that can hold a balance or a credit in the market."""
        return [self.owner, self.fee_recipient, self.keeper, *self.clients, *self.nodes]

    def act(self, reason: str | None, sender: str, fn: Callable[..., Any], *args: Any) -> bool:
        """Call `fn(*args)` from `sender`; expect the revert `reason` if it is not None."""
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

    # ---- setup ----
    @initialize(
        stakes=st.lists(
            st.integers(min_value=3 * MIN_STAKE, max_value=10_000), min_size=5, max_size=5
        ),
        prices=st.lists(st.integers(min_value=0, max_value=40), min_size=5, max_size=5),
        audit_rate_bps=st.sampled_from([500, 5_000, 10_000]),
    )
    def start(self, stakes: list[int], prices: list[int], audit_rate_bps: int) -> None:
        """Clients start with a deposit; five nodes start registered, staked and serving
        (the last node joins by rules)."""
        with boa.env.prank(self.owner):
            self.court.set_param(P_AUDIT_RATE_BPS, audit_rate_bps)
        for c in range(N_CLIENTS):
            self.deposit(c, 2_000)
        for node, amount, price in zip(self.nodes, stakes, prices, strict=False):
            self.register_node(self.nodes.index(node))
            self.stake(self.nodes.index(node), amount)
            self.serve_model(self.nodes.index(node), price)

    # ---- clients: balances ----
    @rule(c=index, amount=small_amount)
    def deposit(self, c: int, amount: int) -> None:
        """A client tops up its prepaid balance."""
        client = self.pick(self.clients, c)
        self.act(None, client, self.market.deposit, amount)
        received = self.books.pull(client, amount)
        self.books.balance[client] += received
        ev = self.event(self.market, "Deposited")
        assert (ev.account, ev.amount, ev.balance) == (client, received, self.books.balance[client])

    @rule(c=index, amount=st.integers(min_value=0, max_value=5_000))
    def withdraw_deposit(self, c: int, amount: int) -> None:
        """A client takes (part of) its prepaid balance back."""
        client = self.pick(self.clients, c)
        reason = None
        if amount == 0:
            reason = "market: zero amount"
        elif self.books.balance[client] < amount:
            reason = "market: insufficient balance"
        if self.act(reason, client, self.market.withdraw_deposit, amount):
            self.books.balance[client] -= amount
            self.books.push(client, amount)

    @rule(a=index)
    def withdraw(self, a: int) -> None:
        """Any account withdraws its claimable credit."""
        account = self.pick(self.accounts, a)
        amount = self.books.claimable[account]
        reason = None if amount else "market: nothing to withdraw"
        if self.act(reason, account, self.market.withdraw):
            self.books.claimable[account] = 0
            self.books.push(account, amount)
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
            INPUT,
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
            ev, client, max_tokens, max_payment, preferred_node, claim_deadline, result_deadline
        )

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
    ) -> None:
        """Book a submitted job; check its event and the stored hash."""
        self.books.balance[client] -= max_payment
        job_id = len(self.books.jobs) + 1
        job = Job(
            client=client,
            model_id=MODEL_ID,
            input_hash=keccak(INPUT),
            params_hash=keccak(self.params_for(max_tokens)),
            max_tokens=max_tokens,
            max_payment=max_payment,
            preferred_node=preferred_node,
            submitted_at=now(),
            claim_deadline=claim_deadline,
            result_deadline=result_deadline,
        )
        self.books.jobs.append(JobState(job_id, job))
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
        node = self.pick(self.nodes, n)
        reason = "market: node exists" if self.books.nodes[node].registered else None
        if self.act(reason, node, self.market.register_node, PUBKEY, "http://node"):
            self.books.nodes[node].registered = True

    @rule(n=index, amount=st.integers(min_value=0, max_value=5_000))
    def stake(self, n: int, amount: int) -> None:
        """A node adds stake."""
        node = self.pick(self.nodes, n)
        reason = self.books.node_reason(node) or (None if amount else "market: zero amount")
        if self.act(reason, node, self.market.stake, amount):
            received = self.books.pull(node, amount)
            self.books.nodes[node].stake += received
            ev = self.event(self.market, "Staked")
            assert (ev.node, ev.amount, ev.stake) == (node, received, self.books.nodes[node].stake)

    @rule(n=index, amount=st.integers(min_value=0, max_value=5_000))
    def unbond(self, n: int, amount: int) -> None:
        """A node starts unbonding free stake."""
        node = self.pick(self.nodes, n)
        ns = self.books.nodes[node]
        reason = self.books.node_reason(node)
        if reason is None and amount == 0:
            reason = "market: zero amount"
        elif reason is None and ns.stake - ns.locked < amount:
            reason = "market: amount exceeds free stake"
        if self.act(reason, node, self.market.unbond, amount):
            ns.stake -= amount
            ns.unbonding += amount
            ns.unbond_ready_at = now() + self.books.params.unbonding_delay

    @rule(n=index)
    def complete_unbond(self, n: int) -> None:
        """A node takes its unbonded stake once the delay has passed."""
        node = self.pick(self.nodes, n)
        ns = self.books.nodes[node]
        reason = None
        if ns.unbonding == 0:
            reason = "market: nothing unbonding"
        elif now() < ns.unbond_ready_at:
            reason = "market: unbonding not ready"
        if self.act(reason, node, self.market.complete_unbond):
            self.books.credit(node, ns.unbonding)
            ns.unbonding = 0

    @rule(n=index, price=st.integers(min_value=0, max_value=40))
    def serve_model(self, n: int, price: int) -> None:
        """A node serves the model (or changes its price)."""
        node = self.pick(self.nodes, n)
        reason = self.books.node_reason(node)
        if self.act(reason, node, self.market.serve_model, MODEL_ID, price):
            self.books.nodes[node].serving = True
            self.books.nodes[node].price = price

    @rule(n=index)
    def stop_serving(self, n: int) -> None:
        """A node leaves the model's active set."""
        node = self.pick(self.nodes, n)
        ns = self.books.nodes[node]
        reason = None if ns.serving else "market: model not served"
        if self.act(reason, node, self.market.stop_serving, MODEL_ID):
            ns.serving = False
            ns.price = 0

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, n=index)
    def claim(self, j: int, n: int) -> None:
        """A node claims a job."""
        self.do_claim(self.choose(j, OPEN), self.pick(self.nodes, n))

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

    def _output(self, js: JobState, extra: int) -> tuple[int, bytes, bytes]:
        tokens = max(0, js.job.max_tokens - extra)
        if extra > js.job.max_tokens:
            tokens = js.job.max_tokens + 1  # one too many: must revert
        packed = b"".join(t.to_bytes(4, "big") for t in range(tokens))
        digest = keccak(packed + js.job_id.to_bytes(32, "big"))
        return tokens, packed, digest

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, n=index, as_claimant=st.booleans(), extra=extra_tokens)
    def publish(self, j: int, n: int, as_claimant: bool, extra: int) -> None:
        """The claimant (or an impostor) publishes a result."""
        js = self.choose(j, CLAIMED)
        sender = js.job.node if as_claimant and js.job.node != ZERO else self.pick(self.nodes, n)
        self.do_publish(js, sender, extra)

    def do_publish(self, js: JobState, sender: str, extra: int) -> None:
        tokens, packed, digest = self._output(js, extra)
        reason = self.books.publish_reason(js, sender, tokens, now())
        if self.act(
            reason, sender, self.market.publish, js.job_id, js.job, packed, tokens, 1, digest
        ):
            self.books.apply_publish(js, tokens, 1, digest, now(), block())

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, n=index, extra=extra_tokens)
    def claim_and_publish(self, j: int, n: int, extra: int) -> None:
        """A node claims a job and publishes its result in one call."""
        js, node = self.choose(j, OPEN), self.pick(self.nodes, n)
        tokens, packed, digest = self._output(js, extra)
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
            self.books.apply_publish(js, tokens, 0, digest, now(), block())

    @precondition(lambda self: self.jobs_in(OPEN, CLAIMED))
    @rule(picks=st.lists(index, min_size=1, max_size=4, unique=True), n=index, extra=extra_tokens)
    def publish_many(self, picks: list[int], n: int, extra: int) -> None:
        """A node claims (where open) and publishes several jobs in one call; the first item
        that cannot be makes the whole call revert with its reason."""
        live, node = self.jobs_in(OPEN, CLAIMED), self.pick(self.nodes, n)
        batch = list({id(js): js for js in (self.pick(live, i) for i in picks)}.values())
        outputs = [self._output(js, extra) for js in batch]
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
                self.books.apply_publish(js, tokens, 0, digest, now(), block())

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
        """Time passes."""
        boa.env.time_travel(seconds=seconds)

    # ---- court: disputes, audits, verifiers, appeals ----
    @property
    def payers(self) -> list[str]:
        """Accounts that may dispute or appeal (clients and nodes)."""
        return [*self.clients, *self.nodes]

    def dispute_of(self, js: JobState) -> Dispute | None:
        return self.court_books.disputes.get(js.job_id)

    def check_assigned(self, js: JobState, d: Dispute) -> None:
        """Read the verifier the court picked; the model checks it was a fair pick."""
        info = self.court.dispute_info(js.job_id)
        if info.verifier == ZERO:
            assert not self.court_books.candidates(d.excluded), "court missed a verifier"
            d.verifier, d.phase = ZERO, UNRESOLVED
            assert info.phase == UNRESOLVED
            return
        assert self.court_books.eligible(info.verifier, d.excluded), info.verifier
        d.verifier, d.phase, d.rounds = info.verifier, ASSIGNED, d.rounds + 1
        d.deadline = now() + self.court_books.p.accept_window
        d.excluded.add(info.verifier)
        assert (info.phase, info.rounds, info.deadline) == (ASSIGNED, d.rounds, d.deadline)

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, p=index)
    def dispute(self, j: int, p: int) -> None:
        """Anyone but the node disputes a published result, posting the bond."""
        self.do_dispute(self.choose(j, PUBLISHED), self.pick(self.payers, p))

    def do_dispute(self, js: JobState, sender: str) -> None:
        bond = self.court_books.p.dispute_bond
        reason = "court: node cannot dispute own job" if sender == js.job.node else None
        reason = reason or self.court_books.open_reason(js, sender, bond, now())
        if self.act(reason, sender, self.court.dispute, js.job_id, js.job):
            self.court_books.take_bond(sender, bond)
            js.status = VERIFYING
            d = Dispute(KIND_DISPUTE, sender, bond, js.job.node, {js.job.node, sender})
            self.court_books.disputes[js.job_id] = d
            self.check_assigned(js, d)

    @precondition(lambda self: self.books.jobs)
    @rule(j=index)
    def start_audit(self, j: int) -> None:
        """A keeper starts the audit of a published job selected by a later block hash."""
        js = self.choose(j, PUBLISHED)
        target = js.job.published_block + 2
        if block() <= target:
            reason = "court: audit seed not yet available"
        elif block() > target + 256:
            reason = "court: audit seed expired"
        elif not self.court.is_audit_selected(js.job_id, js.job.published_block):
            reason = "court: not selected for audit"
        else:
            reason = self.court_books.open_reason(js, self.keeper, 0, now())
        if self.act(reason, self.keeper, self.court.start_audit, js.job_id, js.job):
            js.status = VERIFYING
            d = Dispute(KIND_AUDIT, self.keeper, 0, js.job.node, {js.job.node, self.keeper})
            self.court_books.disputes[js.job_id] = d
            self.check_assigned(js, d)

    def disputed(self, j: int) -> JobState:
        """Mostly a job under verification, sometimes any job."""
        return self.choose(j, VERIFYING)

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
        """The verifier (or an impostor) posts a verdict."""
        js = self.disputed(j)
        sender = self.verifier_or_other(self.dispute_of(js), as_verifier, n)
        self.do_verdict(js, sender, valid)

    def do_verdict(self, js: JobState, sender: str, valid: bool) -> None:
        d = self.dispute_of(js)
        if d is None or d.phase != ACCEPTED:
            reason = "court: not awaiting verdict"
        elif sender != d.verifier:
            reason = "court: not the verifier"
        else:
            reason = "court: verdict deadline passed" if now() > d.deadline else None
        if self.act(reason, sender, self.court.post_verdict, js.job_id, valid):
            assert d is not None
            d.phase, d.verdict_valid = VERDICT, valid
            d.deadline = now() + self.court_books.p.appeal_window

    @precondition(lambda self: self.books.jobs)
    @rule(j=index)
    def replace_verifier(self, j: int) -> None:
        """A keeper replaces a verifier that missed its deadline."""
        self.do_replace(self.disputed(j))

    def do_replace(self, js: JobState) -> None:
        d = self.dispute_of(js)
        if d is None or d.phase not in (ASSIGNED, ACCEPTED):
            reason = "court: no verifier to replace"
        else:
            reason = "court: verifier not late" if now() <= d.deadline else None
        if self.act(reason, self.keeper, self.court.replace_verifier, js.job_id):
            assert d is not None
            penalty = self.court_books.penalise(d.verifier)
            ev = self.event(self.court, "VerifierReplaced")
            assert (ev.verifier, ev.penalty) == (d.verifier, penalty)
            if d.rounds < MAX_ROUNDS:
                self.check_assigned(js, d)
            else:
                d.verifier, d.phase = ZERO, UNRESOLVED

    @precondition(lambda self: self.books.jobs)
    @rule(j=index, p=index)
    def appeal(self, j: int, p: int) -> None:
        """Anyone appeals a verdict to a panel of three, posting the larger bond."""
        self.do_appeal(self.disputed(j), self.pick(self.payers, p))

    def do_appeal(self, js: JobState, sender: str) -> None:
        d = self.dispute_of(js)
        bond = self.court_books.p.appeal_bond
        if d is not None and d.appellant != ZERO:
            reason = "court: already appealed"
        elif d is None or d.phase != VERDICT:
            reason = "court: no verdict to appeal"
        elif now() > d.deadline:
            reason = "court: appeal window closed"
        elif len(self.court_books.candidates(d.excluded)) < 3:
            reason = "court: panel unavailable"
        elif self.books.balance[sender] < bond:
            reason = "market: insufficient balance for bond"
        else:
            reason = None
        if self.act(reason, sender, self.court.appeal, js.job_id):
            assert d is not None
            panel = list(self.court.dispute_info(js.job_id).panel)
            assert len(set(panel)) == 3
            assert all(self.court_books.eligible(m, d.excluded) for m in panel), panel
            self.court_books.take_bond(sender, bond)
            d.phase, d.appellant, d.appeal_bond, d.panel = APPEALED, sender, bond, panel
            d.deadline = now() + self.court_books.p.vote_window

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
            d.votes[sender] = valid

    @precondition(lambda self: self.books.jobs)
    @rule(j=index)
    def settle(self, j: int) -> None:
        """A keeper settles a dispute whose outcome is due."""
        self.do_settle(self.disputed(j))

    def do_settle(self, js: JobState) -> None:
        d = self.dispute_of(js)
        reason = self.court_books.settle_reason(d, now())
        if self.act(reason, self.keeper, self.court.settle, js.job_id, js.job):
            assert d is not None
            final = self.court_books.settle(js, d)
            ev = self.event(self.court, "DisputeSettled")
            assert (ev.job_id, ev.valid) == (js.job_id, final)
            assert self.market.job_status(js.job_id) == js.status

    # ---- driver: push one live job one step further along its natural path ----
    @precondition(lambda self: self.jobs_in(*LIVE))
    @rule(j=index, choice=st.integers(0, 3), valid=st.booleans())
    def advance(self, j: int, choice: int, valid: bool) -> None:
        """Take a live job's next natural step (uniform rule choice alone rarely gets a job
        through claim, publish, dispute, verdict, appeal and settlement)."""
        js = self.pick(self.jobs_in(*LIVE), j)
        d = self.dispute_of(js)
        if js.status == OPEN:
            nodes = [n for n in self.nodes if self.books.claim_reason(js, n, now()) is None]
            if nodes:
                self.do_claim(js, self.pick(nodes, choice))
        elif js.status == CLAIMED:
            self.do_publish(js, js.job.node, choice)
        elif js.status == PUBLISHED and choice == 0:
            self.do_finalize(js)
        elif js.status == PUBLISHED:
            payers = [a for a in self.payers if a != js.job.node]
            self.do_dispute(js, self.pick(payers, j))
        elif d is not None and d.phase == ASSIGNED:
            self.do_accept(js, d.verifier)
        elif d is not None and d.phase == ACCEPTED:
            self.do_verdict(js, d.verifier, valid)
        elif d is not None and d.phase == VERDICT and choice < 2:
            self.do_appeal(js, self.pick(self.payers, j))
        elif d is not None and d.phase == APPEALED and len(d.votes) < len(d.panel):
            member = next(m for m in d.panel if m not in d.votes)
            self.do_vote(js, member, valid)
        else:
            self.do_settle(js)

    @invariant()
    def disputes_match_court(self) -> None:
        """The court's record of every dispute matches the model's."""
        for job_id, d in self.court_books.disputes.items():
            info = self.court.dispute_info(job_id)
            assert (info.kind, info.phase, info.challenger, info.bond) == (
                d.kind,
                d.phase,
                d.challenger,
                d.bond,
            )
            if d.phase in (ASSIGNED, ACCEPTED, VERDICT, APPEALED):
                assert (info.verifier, info.deadline) == (d.verifier, d.deadline)

    # ---- invariants ----
    @invariant()
    def conservation_and_books(self) -> None:
        """PROTOCOL §2 from the model's books and from the contract's own getters; every
        bucket the contract exposes equals the model's."""
        m, b = self.market, self.books
        held = self.token.balanceOf(m.address)
        assert held == b.owed(), (held, b.owed())
        balances = [m.balance_of(a) for a in self.accounts]
        claimables = [m.claimable(a) for a in self.accounts]
        live_escrow = sum(js.job.max_payment for js in b.jobs if m.job_status(js.job_id) in LIVE)
        totals = (m.total_stake(), m.court_funds(), m.protocol_fees(), m.audit_pool())
        assert held == sum(balances) + live_escrow + sum(claimables) + sum(totals)
        assert totals == (b.total_stake(), b.court_funds, b.protocol_fees, b.audit_pool)
        assert balances == [b.balance[a] for a in self.accounts]
        assert claimables == [b.claimable[a] for a in self.accounts]
        assert [self.token.balanceOf(a) for a in self.accounts] == [
            b.wallet[a] for a in self.accounts
        ]

    @invariant()
    def stake_covers_locks(self) -> None:
        """stake >= locked for every node; a slashed node keeps nothing."""
        for node in self.nodes:
            info = self.market.node_info(node)
            ns = self.books.nodes[node]
            assert (info.registered, info.slashed) == (ns.registered, ns.slashed)
            assert (info.stake, info.locked, info.unbonding) == (ns.stake, ns.locked, ns.unbonding)
            assert info.stake >= info.locked
            if info.slashed:
                assert info.stake == info.locked == info.unbonding == 0

    @invariant()
    def statuses_match_and_terminal_stays_terminal(self) -> None:
        """Job statuses equal the model's; a terminal status never changes again."""
        for js in self.books.jobs:
            status = self.market.job_status(js.job_id)
            assert status == js.status, (js.job_id, status, js.status)
            if js.job_id in self.terminal_seen:
                assert status == self.terminal_seen[js.job_id]
            elif status in TERMINAL:
                self.terminal_seen[js.job_id] = status

    # ---- teardown: everything can end and be withdrawn ----
    def settle_everything(self) -> None:
        """Drive every live job to a terminal state with keeper calls, then withdraw all."""
        latest = max((js.job.result_deadline for js in self.books.jobs), default=now())
        boa.env.time_travel(seconds=max(0, latest - now()) + 1)
        boa.env.time_travel(seconds=self.books.params.challenge_window + 1)
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
        for i, node in enumerate(self.nodes):
            ns = self.books.nodes[node]
            assert ns.locked == 0, node
            if ns.stake and not ns.slashed:
                self.unbond(i, ns.stake)
        boa.env.time_travel(seconds=self.books.params.unbonding_delay + 1)
        for i, node in enumerate(self.nodes):
            if self.books.nodes[node].unbonding:
                self.complete_unbond(i)
        if self.books.protocol_fees:
            self.withdraw_fees()
        for c, client in enumerate(self.clients):
            if self.books.balance[client]:
                self.withdraw_deposit(c, self.books.balance[client])
        for a, account in enumerate(self.accounts):
            if self.books.claimable[account]:
                self.withdraw(a)
        self.conservation_and_books()
        assert self.books.court_funds == 0, "bonds or slashed stake left undistributed"
        assert self.token.balanceOf(self.market.address) == self.books.audit_pool
        assert self.books.total_stake() == 0
        assert not any(self.books.balance.values()) and not any(self.books.claimable.values())

    def settle_disputes(self) -> None:
        """Late verifiers are replaced and due outcomes settled until none is left."""
        p = self.court_books.p
        longest = max(p.accept_window, p.verdict_window, p.appeal_window, p.vote_window)
        for _ in range(2 * MAX_ROUNDS + 2):
            verifying = self.jobs_in(VERIFYING)
            if not verifying:
                return
            boa.env.time_travel(seconds=longest + 1)
            for js in verifying:
                d = self.dispute_of(js)
                assert d is not None, js.job_id
                if d.phase in (ASSIGNED, ACCEPTED):
                    self.do_replace(js)
                else:
                    self.do_settle(js)

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
