"""The verinfer client: pay for inference jobs on chain from Python, through ape.

    from ape import networks
    from verinfer.client import Client

    with networks.parse_network_choice("ethereum:local:http://127.0.0.1:8545"):
        client = Client(market="0x...", account="test:1")
        handle = client.submit("verinfer-tiny-llama", prompt="What is a GPU?", max_tokens=16)
        result = handle.wait(timeout=60)          # held: published, digest checked
        print(result.text, result.cost)
        final = handle.wait(timeout=7200, finalized=True)   # paid after the challenge window

A result is *held* once its ``ResultPublished`` log is in and the §5 digest recomputed from the
published output equals the digest the node committed (and the job's fields hash to what the
market stores). It is *final* once the market has paid the node and refunded the rest
(``JobFinalized``), or has slashed the node (``JobSlashed``) after a dispute.

Every expected failure is a ``ClientError`` whose message is one line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_utils import keccak, to_checksum_address

from verinfer.abi_types import contract_type
from verinfer.chain_errors import ClientError, JobNotFound, JobTimeout, guard
from verinfer.digest import SamplingParams
from verinfer.inputs import InputFormatError, check_input, encode_chat_input, encode_text_input
from verinfer.jobs import DRAW_PHASES, ZERO_ADDRESS, DisputePhase, JobRecord, JobStatus
from verinfer.private_jobs import JobKeys
from verinfer.tokenizers_local import context_error, decode_tokens

TERMINAL = frozenset(
    {JobStatus.FINALIZED, JobStatus.CANCELLED, JobStatus.EXPIRED, JobStatus.SLASHED}
)
# market events that move a job (topic1 = job_id for all of them)
JOB_EVENTS = (
    "JobClaimed",
    "ResultPublished",
    "JobVerifying",
    "JobFinalized",
    "JobCancelled",
    "JobExpired",
    "JobSlashed",
)
MAX_LOG_RANGE = 10_000  # blocks per eth_getLogs request


@dataclass(frozen=True)
class Balances:
    """An account's tokens: in its wallet, prepaid in the market, claimable, approved."""

    wallet: int
    prepaid: int
    claimable: int
    allowance: int


@dataclass(frozen=True)
class ModelInfo:
    """A registered model and the nodes serving it (address -> price per output token)."""

    model_id: bytes
    name: str
    revision: str
    manifest_hash: bytes
    nodes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Estimate:
    """What a submission will cost before it is sent (amounts in token base units)."""

    max_payment: int
    price_per_token: int
    deposit_needed: int
    approve_needed: bool
    gas: int
    gas_price: int
    warning: str = ""  # why no node would take the job ("" when some would)

    @property
    def fee_wei(self) -> int:
        """Gas fee of the submit transaction, in the chain's native unit (wei)."""
        return self.gas * self.gas_price


@dataclass(frozen=True)
class JobSpec:
    """One job for the gateway's batched submissions: resolved model id, input and params."""

    model_id: bytes
    input: bytes
    params: SamplingParams
    max_payment: int
    node: str = ZERO_ADDRESS
    claim_window: int = 600
    result_window: int = 1200

    def args(self, now: int) -> list[Any]:
        """Arguments of ``Market.submit`` for a chain time of ``now``."""
        return [
            self.model_id,
            self.input,
            self.params.encode(),
            self.max_payment,
            self.node,
            now + self.claim_window,
            now + self.result_window,
        ]


@dataclass(frozen=True)
class Result:
    """A job's outcome as far as the chain has got.

    ``held``: published and ``digest_ok``. ``final``: paid out or slashed; ``cost`` and
    ``refund`` are then the market's own figures (before, ``cost`` is price x tokens, the
    figure the market will charge unless the result is disputed).
    """

    job_id: int
    status: JobStatus
    node: str
    token_ids: list[int]
    text: str | None
    finish_reason: int
    digest: bytes
    digest_ok: bool
    held: bool
    final: bool
    cost: int
    refund: int
    max_payment: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (bytes as 0x-hex, status by name)."""
        return {
            "job_id": self.job_id,
            "status": self.status.name,
            "node": self.node,
            "text": self.text,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "digest": "0x" + self.digest.hex(),
            "digest_ok": self.digest_ok,
            "held": self.held,
            "final": self.final,
            "cost": self.cost,
            "refund": self.refund,
            "max_payment": self.max_payment,
        }


class JobHandle:
    """One submitted job: its record (rebuilt from events), status and outcome."""

    def __init__(self, client: Client, record: JobRecord, status: JobStatus, block: int) -> None:
        self.client = client
        self.record = record
        self.status = status
        self.cursor = block  # first block whose logs are not yet applied
        self.refund: int | None = None
        self.payment: int | None = None
        self.sent_at: float | None = None  # time.perf_counter() when the gateway sent it

    @property
    def job_id(self) -> int:
        """The market's id of the job."""
        return self.record.job_id

    def done(self, finalized: bool) -> bool:
        """True when the job has got as far as ``wait`` asks for."""
        if self.status in TERMINAL:
            return True
        return not finalized and self.status >= JobStatus.PUBLISHED

    def apply(self, log: Any) -> None:
        """Fold in a decoded market log of this job."""
        name = log.event_name
        if name == "JobClaimed":
            self.record.apply_claimed(log)
            self.status = max(self.status, JobStatus.CLAIMED)
        elif name == "ResultPublished":
            self.record.apply_published(log)
            self.status = max(self.status, JobStatus.PUBLISHED)
        elif name == "JobVerifying":
            self.status = max(self.status, JobStatus.VERIFYING)
        elif name == "JobFinalized":
            self.status = JobStatus.FINALIZED
            self.refund, self.payment = int(log.refund), int(log.payment)
        elif name == "JobSlashed":
            self.status = JobStatus.SLASHED
            self.refund = int(log.refund)
        elif name in ("JobCancelled", "JobExpired"):
            self.status = JobStatus.CANCELLED if name == "JobCancelled" else JobStatus.EXPIRED
            self.refund = int(log.refund)

    def result(self) -> Result:
        """The outcome so far (digest checked against the chain once published)."""
        return self.client.result_of(self)

    def wait(self, timeout: float = 120.0, finalized: bool = False, poll: float = 0.5) -> Result:
        """Block until the result is held (or final, with ``finalized``); JobTimeout after."""
        return self.client.wait_many([self], timeout, finalized, poll)[0]


class Client:
    """A client of one market, sending from one ape account on the connected ape network.

    Args:
        market: the Market contract's address (court and token are read from it).
        account: an ape account, ``"test:N"`` (the N-th ape test account, local networks
            only) or the alias of an ape keystore account, unlocked with ``passphrase``
            (default: ``$VERINFER_PASSPHRASE``).
        from_block: first block to search for the market's logs (its deployment block).
        chain_id: expected chain id; ClientError("wrong network ...") when it differs.
    """

    def __init__(
        self,
        market: str,
        account: Any = "test:0",
        passphrase: str | None = None,
        from_block: int = 0,
        chain_id: int | None = None,
    ) -> None:
        from ape import chain

        with guard("connect"):
            provider = chain.provider
            if not provider.is_connected:
                raise ClientError("no chain reachable: the ape provider is not connected")
            actual = int(provider.chain_id)
        if chain_id is not None and actual != chain_id:
            raise ClientError(f"wrong network: connected to chain {actual}, expected {chain_id}")
        self.chain_id = actual
        self.from_block = from_block
        address = to_checksum_address(market)
        with guard("connect"):
            code = provider.get_code(address)
        if not code or bytes(code) == b"":
            raise ClientError(f"contracts not deployed there: no code at market {address}")
        self.market = chain.contracts.instance_at(address, contract_type=contract_type("Market"))
        self.court = chain.contracts.instance_at(
            self.market.court(), contract_type=contract_type("Court")
        )
        self.token = chain.contracts.instance_at(
            self.market.token(), contract_type=contract_type("TestToken")
        )
        self.account = resolve_account(account, passphrase)
        self.address = str(self.account.address)
        self.job_keys = JobKeys(actual, address)  # keys of our private jobs (docs/privacy.md)
        self._topics = {
            keccak(text=getattr(self.market, name).abi.selector): name
            for name in (*JOB_EVENTS, "JobSubmitted")
        }
        self._abis = [getattr(self.market, name).abi for name in (*JOB_EVENTS, "JobSubmitted")]

    # ---- balances ----
    def balances(self, account: str | None = None) -> Balances:
        """Wallet, prepaid, claimable and allowance of ``account`` (default: ours)."""
        who = account or self.address
        with guard("balance"):
            return Balances(
                wallet=int(self.token.balanceOf(who)),
                prepaid=int(self.market.balance_of(who)),
                claimable=int(self.market.claimable(who)),
                allowance=int(self.token.allowance(who, self.market.address)),
            )

    def ensure_allowance(self, amount: int) -> bool:
        """Approve the market for ``amount`` if the allowance is short; True if it sent one."""
        if int(self.token.allowance(self.address, self.market.address)) >= amount:
            return False
        with guard("approve"):
            self.token.approve(self.market.address, amount, sender=self.account)
        return True

    def deposit(self, amount: int) -> int:
        """Move ``amount`` from the wallet into the prepaid balance; returns the new balance."""
        if amount <= 0:
            raise ClientError("amount must be positive")
        wallet = int(self.token.balanceOf(self.address))
        if wallet < amount:
            raise ClientError(
                f"insufficient token balance: wallet holds {self.fmt(wallet)}, "
                f"deposit needs {self.fmt(amount)}"
            )
        self.ensure_allowance(amount)
        with guard("deposit"):
            self.market.deposit(amount, sender=self.account)
        return int(self.market.balance_of(self.address))

    def fmt(self, base_units: int) -> str:
        """Base units as whole tokens with the token's symbol (``"12.5 vUSD"``), for people."""
        from decimal import Decimal

        if not hasattr(self, "_units"):
            self._units = (int(self.token.decimals()), str(self.token.symbol()))
        decimals, symbol = self._units
        value = Decimal(base_units) / (Decimal(10) ** decimals)
        return f"{format(value.normalize(), 'f') if value else '0'} {symbol}"

    def withdraw(self, amount: int | None = None) -> int:
        """Take ``amount`` (default: all) of the prepaid balance back; returns what is left."""
        prepaid = int(self.market.balance_of(self.address))
        amount = prepaid if amount is None else amount
        if amount <= 0 or amount > prepaid:
            raise ClientError(
                f"insufficient prepaid balance: {self.fmt(prepaid)}, asked for {self.fmt(amount)}"
            )
        with guard("withdraw"):
            self.market.withdraw_deposit(amount, sender=self.account)
        return int(self.market.balance_of(self.address))

    def collect(self, to: str | None = None) -> int:
        """Withdraw claimable credits (refund shares, bonds back, earnings); returns the sum.
        ``to``: pay them to that address instead (``Market.withdraw_to``, e.g. when the
        token blocks transfers to this account)."""
        claimable = int(self.market.claimable(self.address))
        if claimable == 0:
            raise ClientError("nothing to withdraw: claimable balance is 0")
        with guard("withdraw"):
            if to is None:
                self.market.withdraw(sender=self.account)
            else:
                self.market.withdraw_to(_address(to), sender=self.account)
        return claimable

    # ---- models and prices ----
    def models(self) -> list[ModelInfo]:
        """Every model registered in the market, with its serving nodes and their prices."""
        out = []
        for log in self._logs(["ModelRegistered"], None):
            mid = bytes(log.model_id)
            nodes = {
                str(n): int(self.market.serve_price(n, mid)) for n in self.market.model_nodes(mid)
            }
            out.append(
                ModelInfo(mid, log.name, log.revision, bytes(log.manifest_hash), nodes=nodes)
            )
        return out

    def resolve_model(self, model: str | bytes) -> bytes:
        """Model id of ``model``: a 0x id, ``name`` or ``name@revision``; UnknownModel error."""
        if isinstance(model, bytes) or (model.startswith("0x") and len(model) == 66):
            mid = model if isinstance(model, bytes) else bytes.fromhex(model[2:])
            if not self.market.model_registered(mid):
                raise ClientError(f"unknown model: 0x{mid.hex()} is not registered")
            return mid
        name, _, revision = model.partition("@")
        found = [m for m in self.models() if m.name == name and revision in ("", m.revision)]
        if not found:
            raise ClientError(f"unknown model: {model!r} is not registered in this market")
        if len(found) > 1:
            revs = ", ".join(m.revision for m in found)
            raise ClientError(f"ambiguous model {model!r}: give name@revision ({revs})")
        return found[0].model_id

    def price(self, model_id: bytes, node: str | None = None) -> int:
        """Price per output token: ``node``'s, or the highest of the eligible nodes."""
        if node is not None:
            if not self.market.is_serving(node, model_id):
                raise ClientError(f"node {node} does not serve model 0x{model_id.hex()}")
            return int(self.market.serve_price(node, model_id))
        prices = [
            int(self.market.serve_price(n, model_id))
            for n in self.market.model_nodes(model_id)
            if self.market.is_eligible(n, model_id)
        ]
        if not prices:
            raise ClientError(f"no staked node serves model 0x{model_id.hex()}")
        return max(prices)

    # ---- jobs ----
    def _submit_args(
        self,
        model: str | bytes,
        prompt: str | None,
        messages: Sequence[dict[str, str]] | None,
        max_tokens: int,
        temperature: float,
        seed: int,
        max_payment: int | None,
        node: str | None,
        claim_window: int,
        result_window: int,
        top_k: int,
    ) -> tuple[list[Any], int, int]:
        if (prompt is None) == (messages is None):
            raise ClientError("give exactly one of prompt or messages")
        mid = self.resolve_model(model)
        node = to_checksum_address(node) if node else None
        try:  # refused here, before anything is paid, rather than skipped by every node
            if prompt is not None:
                data = encode_text_input(prompt)
            else:
                assert messages is not None
                data = encode_chat_input(messages)
            check_input(data)
        except UnicodeEncodeError:
            raise ClientError("bad input: the prompt is not valid Unicode text") from None
        except InputFormatError as exc:
            raise ClientError(f"bad input: {exc}") from None
        if problem := context_error(mid, data, max_tokens):
            raise ClientError(f"bad input: {problem}")
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature_milli=round(temperature * 1000),
            top_k=top_k,
            seed=seed,
        )
        price = self.price(mid, node)
        payment = max_tokens * price if max_payment is None else max_payment
        from ape import chain

        # the submission's block comes after the head and not before now (a chain that mines
        # on demand can have a head minutes old: short windows would start in the past)
        now = max(int(chain.blocks.head.timestamp), int(time.time()))
        args = [
            mid,
            data,
            params.encode(),
            payment,
            node or ZERO_ADDRESS,
            now + claim_window,
            now + result_window,
        ]
        return args, payment, price

    def estimate(self, model: str | bytes, **kwargs: Any) -> Estimate:
        """Price and gas of ``submit(model, **kwargs)`` without sending anything."""
        opts = _submit_defaults(kwargs)
        args, payment, price = self._submit_args(model, **opts)
        prepaid = int(self.market.balance_of(self.address))
        need = max(0, payment - prepaid)
        approve = need > 0 and int(self.token.allowance(self.address, self.market.address)) < need
        from ape import chain

        with guard("estimate"):
            if need == 0:
                gas = self.market.submit.estimate_gas_cost(*args, sender=self.account)
            elif approve:  # the real call would fail on the allowance: estimate a plain submit
                gas = 60_000 + 2 * 50_000 + len(args[1]) * 16
            else:
                gas = self.market.deposit_and_submit.estimate_gas_cost(
                    need, *args, sender=self.account
                )
            gas_price = int(chain.provider.gas_price)
        warning = self.payment_warning(args[0], int(opts["max_tokens"]), payment, args[4])
        return Estimate(payment, price, need, approve, int(gas), gas_price, warning)

    def payment_warning(self, model_id: bytes, max_tokens: int, payment: int, node: str) -> str:
        """Why no node would take a job escrowing ``payment`` for ``max_tokens`` tokens ("" when
        one would): a node declines a job whose escrow does not cover ``max_tokens`` x its own
        price (docs/operations.md, policy). ``node``: the preferred node (zero: any)."""
        if node != ZERO_ADDRESS:
            nodes = [node]
        else:
            nodes = [
                n for n in self.market.model_nodes(model_id) if self.market.is_eligible(n, model_id)
            ]
        prices = [int(self.market.serve_price(n, model_id)) for n in nodes]
        if not prices or payment >= max_tokens * min(prices):
            return ""
        whose = f"node {node}'s price" if node != ZERO_ADDRESS else "the cheapest node's price"
        return (
            f"no node would take this job: escrow {self.fmt(payment)} < {max_tokens} tokens x "
            f"{self.fmt(min(prices))} ({whose}); nodes decline jobs that do not pay their price "
            "for every token"
        )

    def submit(
        self,
        model: str | bytes,
        prompt: str | None = None,
        messages: Sequence[dict[str, str]] | None = None,
        max_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
        max_payment: int | None = None,
        node: str | None = None,
        claim_window: int = 600,
        result_window: int = 1200,
        top_k: int = 0,
        private: bool = False,
    ) -> JobHandle:
        """Submit a job; pays ``max_payment`` (default: max_tokens x the highest price) into
        escrow from the prepaid balance, depositing (and approving) any shortfall first.

        ``private``: the input is encrypted to the node's registered key (``node``, else
        ``private_node``'s pick by track record) and the answer is decrypted here; the job key
        is kept in ``self.job_keys`` (docs/privacy.md).

        Raises ClientError for an unknown model, no serving node, or too few tokens.
        """
        pubkey = b""
        if private:
            from verinfer.private_jobs import require_key

            node = to_checksum_address(node) if node else self.private_node(model)
            pubkey = require_key(self.market, node)
        args, payment, _ = self._submit_args(
            model, prompt, messages, max_tokens, temperature, seed, max_payment, node,
            claim_window, result_window, top_k,
        )  # fmt: skip
        job_key = None
        if private:
            from verinfer.private_jobs import seal

            args[1], job_key = seal(args[1], pubkey)
        prepaid = int(self.market.balance_of(self.address))
        need = max(0, payment - prepaid)
        if need:
            wallet = int(self.token.balanceOf(self.address))
            if wallet < need:
                raise ClientError(
                    f"insufficient balance: job escrows {self.fmt(payment)}, prepaid "
                    f"{self.fmt(prepaid)} + wallet {self.fmt(wallet)} is short"
                )
            self.ensure_allowance(need)
        with guard("submit"):
            if need:
                receipt = self.market.deposit_and_submit(need, *args, sender=self.account)
            else:
                receipt = self.market.submit(*args, sender=self.account)
        log = self.market.JobSubmitted.from_receipt(receipt)[0]
        record = JobRecord.from_submitted(log)
        if job_key is not None:
            self.job_keys.put(record.job_id, job_key)
        return JobHandle(self, record, JobStatus.OPEN, int(receipt.block_number))

    def private_node(self, model: str | bytes, exclude: Iterable[str] = ()) -> str:
        """The node a private job goes to when none is named: among the model's eligible
        nodes with a valid registered encryption key (not in ``exclude``), the best by its
        track record (``routing.rank``: reliability, latency, price, stake; untried nodes
        first), or the cheapest when none of them has a record yet."""
        from verinfer.privacy import valid_pubkey
        from verinfer.private_jobs import node_pubkey, pick_node
        from verinfer.routing import rank

        mid = self.resolve_model(model)
        with guard("private node"):
            skip = {a.lower() for a in exclude}
            nodes = [
                n
                for n in self.market.model_nodes(mid)
                if str(n).lower() not in skip and self.market.is_eligible(n, mid)
            ]
            candidates = [
                (str(n), int(self.market.serve_price(n, mid)), node_pubkey(self.market, n))
                for n in nodes
            ]
            usable = {n.lower(): n for n, _, pub in candidates if valid_pubkey(pub)}
            indexer = self.indexer()
            indexer.sync()
            ranked = [
                usable[s.node.lower()]
                for s in rank(indexer.records(mid))
                if s.node.lower() in usable
            ]
        return ranked[0] if ranked else pick_node(candidates)

    def hand_key(self, job: JobHandle | int) -> bool:
        """Hand our private job's key to its drawn verifier (or appeal panel), wrapped to
        their registered keys (``Court.hand_key``). False when there is nobody to hand it to
        yet (the draw is pending); ClientError without the key."""
        from verinfer.private_jobs import hand_key_args

        job_id = job if isinstance(job, int) else job.job_id
        job_key = self.job_keys.get(job_id)
        if job_key is None:
            raise ClientError(f"no key of private job {job_id} on this machine")
        state = self.dispute_state(job_id)
        if state["phase"] == DisputePhase.APPEALED.name:
            recipients = state["panel"]
        elif state["phase"] in (DisputePhase.ASSIGNED.name, DisputePhase.ACCEPTED.name):
            recipients = [state["verifier"]]
        else:
            return False
        wrapped = hand_key_args(self.market, job_id, job_key, recipients)
        with guard("hand key"):
            self.court.hand_key(job_id, wrapped, sender=self.account)
        return True

    def job(self, job_id: int) -> JobHandle:
        """A handle on any job of this market, rebuilt from its events; JobNotFound if none."""
        with guard("job"):
            submitted = self._logs(["JobSubmitted"], [job_id])
        if not submitted:
            raise JobNotFound(f"job not found: no job {job_id} in market {self.market.address}")
        log = submitted[0]
        handle = JobHandle(self, JobRecord.from_submitted(log), JobStatus.OPEN, log.block_number)
        self.wait_many([handle], timeout=0, finalized=True, poll=0, once=True)
        return handle

    def jobs(self, client: str | None = None) -> list[JobHandle]:
        """Every job submitted by ``client`` (default: ours), oldest first."""
        who = to_checksum_address(client or self.address)
        topic = "0x" + bytes.fromhex(who[2:]).rjust(32, b"\x00").hex()
        logs = self._logs(["JobSubmitted"], None, topic2=topic)
        handles = [
            JobHandle(self, JobRecord.from_submitted(lg), JobStatus.OPEN, lg.block_number)
            for lg in logs
        ]
        if handles:
            self.wait_many(handles, timeout=0, finalized=True, poll=0, once=True)
        return handles

    def wait_many(
        self,
        handles: Iterable[JobHandle],
        timeout: float = 120.0,
        finalized: bool = False,
        poll: float = 0.5,
        once: bool = False,
    ) -> list[Result]:
        """Wait for many jobs from ONE poll loop: each poll is one ``eth_getLogs`` over the
        new blocks for all pending jobs at once (topic1 = any of their ids).

        Returns the results in the order of ``handles``; JobTimeout when ``timeout`` passes
        first (``once``: a single poll, no timeout error).
        """
        from ape import chain

        handles = list(handles)
        deadline = time.monotonic() + timeout
        while True:
            pending = [h for h in handles if not h.done(finalized)]
            if not pending:
                break
            head = int(chain.blocks.height)
            start = min(h.cursor for h in pending)
            if head >= start:
                by_id = {h.job_id: h for h in pending}
                with guard("poll"):
                    logs = self._logs(list(JOB_EVENTS), list(by_id), start, head)
                for log in logs:
                    h = by_id.get(int(log.job_id))
                    if h is not None and log.block_number >= h.cursor:
                        h.apply(log)
                for h in pending:
                    h.cursor = head + 1
            if once:
                break
            if all(h.done(finalized) for h in handles):
                break
            if time.monotonic() >= deadline:
                late = [h for h in handles if not h.done(finalized)]
                what = "final" if finalized else "published"
                ids = ", ".join(f"{h.job_id} ({h.status.name})" for h in late)
                raise JobTimeout(
                    f"timed out after {timeout:g}s waiting for jobs to be {what}: {ids}"
                )
            time.sleep(poll)
        return [self.result_of(h) for h in handles]

    def result_of(self, handle: JobHandle, stored_hash: bytes | None = None) -> Result:
        """The outcome of ``handle`` from what it has seen (digest checked when published).

        ``stored_hash``: the market's ``job_hash`` of the job when the caller has already read
        it (the gateway reads many in one JSON-RPC batch); else it is read here.
        """
        rec = handle.record
        published = rec.published_block > 0
        digest_ok = False
        token_ids: list[int] = []
        text = None
        if published:
            token_ids, digest_ok = self._opened(rec)
            # a finalized job's word is deleted by the market: its record then rests on the
            # market's own events alone
            digest_ok = digest_ok and (
                handle.status == JobStatus.FINALIZED or self._hash_matches(rec, stored_hash)
            )
            text = decode_tokens(rec.model_id, token_ids)
        expected_cost = rec.price_per_token * rec.output_tokens
        if handle.refund is not None:
            refund = handle.refund
            cost = rec.max_payment - refund if handle.status == JobStatus.FINALIZED else 0
        else:
            cost, refund = expected_cost, rec.max_payment - expected_cost
        return Result(
            job_id=rec.job_id,
            status=handle.status,
            node=rec.node,
            token_ids=token_ids,
            text=text,
            finish_reason=rec.finish_reason,
            digest=rec.result_digest,
            digest_ok=digest_ok,
            held=published and digest_ok,
            final=handle.status in TERMINAL,
            cost=cost,
            refund=refund,
            max_payment=rec.max_payment,
        )

    def _opened(self, rec: JobRecord) -> tuple[list[int], bool]:
        """Published token ids and whether the digest matches: a private job's are
        decrypted with our job key ([] and False without it)."""
        from verinfer.private_jobs import is_private, open_tokens

        if is_private(rec):
            return open_tokens(rec, self.job_keys.get(rec.job_id))
        return rec.output_token_ids, rec.expected_digest() == rec.result_digest

    def _hash_matches(self, rec: JobRecord, stored: bytes | None = None) -> bool:
        """The market's stored job hash equals the hash of the struct rebuilt from events
        (``Market.hash_job``, computed locally: one chain call instead of two)."""
        if stored is None:
            stored = bytes(self.market.job_hash(rec.job_id))
        if stored == b"\x00" * 32:
            return False
        return stored[:31] == rec.struct_hash()[:31]

    def dispute(
        self, job: JobHandle | int, draw: bool = True, timeout: float = 120.0
    ) -> dict[str, Any]:
        """Dispute a published result, then draw its verifier.

        The bond comes from the prepaid balance; a shortfall is deposited first. The court
        requests a draw seeded by the hash of the dispute's block; ``draw`` (default) then
        calls ``Court.draw`` once a later block exists (``Client.draw``: anyone may, and the
        nodes' keepers do too). Returns ``{"job_id", "bond", "seed_block", "verifier",
        "drawn_by_us", "phase"}``; ``verifier`` is None while the draw is pending (``draw``
        false, or no new block within ``timeout``: ``draw_pending`` is then true).
        """
        handle = self.job(job if isinstance(job, int) else job.job_id)
        if handle.status != JobStatus.PUBLISHED:
            raise ClientError(
                f"job {handle.job_id} cannot be disputed: it is {handle.status.name}, not PUBLISHED"
            )
        bond = int(self.court.dispute_bond())
        prepaid = int(self.market.balance_of(self.address))
        if prepaid < bond:
            self.deposit(bond - prepaid)
        with guard("dispute"):
            self.court.dispute(handle.job_id, handle.record.as_struct(), sender=self.account)
        if not isinstance(job, int):
            job.status = JobStatus.VERIFYING
        seed_block = int(self.court.dispute_info(handle.job_id).seed_block)
        out: dict[str, Any] = {"job_id": handle.job_id, "bond": bond, "seed_block": seed_block}
        if not draw:
            return {**out, **self.dispute_state(handle.job_id), "drawn_by_us": False}
        try:
            drawn = self.draw(handle.job_id, timeout=timeout)
        except JobTimeout:
            return {**out, **self.dispute_state(handle.job_id), "drawn_by_us": False}
        if self.job_keys.get(handle.job_id) is not None:  # our private job: hand the key
            drawn["key_handed"] = self.hand_key(handle.job_id)
        return {**out, **drawn}

    def appeal(
        self, job: JobHandle | int, draw: bool = True, timeout: float = 120.0
    ) -> dict[str, Any]:
        """Appeal a verifier's verdict inside the appeal window, then draw the panel of 3.

        The bond comes from the prepaid balance (a shortfall is deposited first): the
        dispute bond when we are the accused node, the appeal bond otherwise. Returns
        ``{"job_id", "bond", "seed_block", "panel", "deadline" (the vote deadline),
        "drawn_by_us", "phase"}``: an empty ``panel`` with phase VERDICT means no node was left
        for it (the appeal is void, its bond returned, the appeal window open again; a panel
        of 1 or 2 means only those were left, and their majority decides); phase PANEL_DRAWING
        (``draw_pending``) means the draw still waits for a new block (``Client.draw``).
        """
        job_id = job if isinstance(job, int) else job.job_id
        info = self.court.dispute_info(job_id)
        if int(info.phase) != DisputePhase.VERDICT:
            raise ClientError(
                f"job {job_id} has no verdict to appeal: its dispute is "
                f"{DisputePhase(int(info.phase)).name}"
            )
        own = str(info.node) == self.address
        bond = int(self.court.dispute_bond() if own else self.court.appeal_bond())
        prepaid = int(self.market.balance_of(self.address))
        if prepaid < bond:
            self.deposit(bond - prepaid)
        with guard("appeal"):
            self.court.appeal(job_id, sender=self.account)
        seed_block = int(self.court.dispute_info(job_id).seed_block)
        out: dict[str, Any] = {"job_id": job_id, "bond": bond, "seed_block": seed_block}
        if not draw:
            return {**out, **self.dispute_state(job_id), "drawn_by_us": False}
        try:
            drawn = self.draw(job_id, timeout=timeout)
        except JobTimeout:
            return {**out, **self.dispute_state(job_id), "drawn_by_us": False}
        return {**out, **drawn}

    def draw(
        self, job: JobHandle | int, timeout: float = 120.0, poll: float = 0.5
    ) -> dict[str, Any]:
        """Draw the verifier or appeal panel a dispute, audit, replacement or appeal of the
        job requested (``Court.draw``; anyone may, from the block after the request on).

        In the request's own block the court answers "draw not ready": this waits for the
        next block (polling; on a local dev chain that mines on demand it mines one), then
        draws. When someone else (a node's keeper) drew first, nothing is sent. Returns
        ``dispute_state`` plus ``drawn_by_us``; JobTimeout when no new block came within
        ``timeout``; ClientError when no draw is or was pending.
        """
        from ape import chain

        job_id = job if isinstance(job, int) else job.job_id
        state = self.dispute_state(job_id)
        if state["phase"] == DisputePhase.NONE.name:
            raise ClientError(f"job {job_id} has no dispute or audit: nothing to draw")
        deadline = time.monotonic() + timeout
        drawn_by_us = False
        while DisputePhase[state["phase"]] in DRAW_PHASES:
            try:
                with guard("draw"):
                    self.court.draw(job_id, sender=self.account)
                drawn_by_us = True  # (a seed hash too old only renews the request: loop)
            except ClientError as exc:
                if "nothing to draw" in str(exc):  # someone else drew in the meantime
                    pass
                elif "draw not ready" in str(exc):
                    self._wait_next_block(int(chain.blocks.height), deadline, job_id)
                else:
                    raise
            state = self.dispute_state(job_id)
        return {**state, "drawn_by_us": drawn_by_us}

    def dispute_state(self, job_id: int) -> dict[str, Any]:
        """The court's record of a job's dispute: ``{"phase", "verifier", "panel",
        "deadline", "seed_block", "draw_pending"}`` (``verifier`` None when none is
        assigned)."""
        with guard("dispute info"):
            info = self.court.dispute_info(job_id)
        verifier = str(info.verifier)
        phase = DisputePhase(int(info.phase))
        return {
            "phase": phase.name,
            "verifier": None if int(verifier, 16) == 0 else verifier,
            "panel": [str(a) for a in info.panel],
            "deadline": int(info.deadline),
            "seed_block": int(info.seed_block),
            "draw_pending": phase in DRAW_PHASES,
        }

    def _wait_next_block(self, height: int, deadline: float, job_id: int) -> None:
        """Wait until a block after ``height`` exists; on a local network that mines only on
        demand (Anvil, Hardhat automine), mine one after a second of waiting."""
        from ape import chain

        local = chain.provider.network.name == "local"
        waited = time.monotonic()
        while int(chain.blocks.height) <= height:
            if time.monotonic() > deadline:
                raise JobTimeout(
                    f"draw of job {job_id} not ready: no block after {height} yet; "
                    f"run `verinfer job draw {job_id}` later"
                )
            if local and time.monotonic() - waited > 1.0:
                chain.mine()
                continue
            time.sleep(0.5)

    def finalize(self, job: JobHandle | int) -> Result:
        """Finalize a published job after its challenge window (anyone may; keepers do)."""
        handle = self.job(job if isinstance(job, int) else job.job_id)
        if handle.status != JobStatus.PUBLISHED:
            raise ClientError(f"job {handle.job_id} is {handle.status.name}, not PUBLISHED")
        with guard("finalize"):
            self.market.finalize(handle.job_id, handle.record.as_settlement(), sender=self.account)
        return self.job(handle.job_id).result()

    # ---- track records and routing (verinfer.indexer, verinfer.routing, verinfer.failover) ----
    def indexer(self, db_path: str | os.PathLike[str] | None = None) -> Any:
        """The track-record indexer of this market (SQLite, default
        ``$VERINFER_HOME/index/<chain>-<market>.sqlite``, VERINFER_HOME defaulting to
        ``./.verinfer`` as for the CLI), on this connection; one per client, synced on each
        call."""
        if getattr(self, "_indexer", None) is None:
            from pathlib import Path

            from ape import chain

            from verinfer.indexer import Indexer
            from verinfer.node.contracts import Protocol
            from verinfer.node.settings import auto_confirmations

            if db_path is None:
                home = Path(os.environ.get("VERINFER_HOME") or ".verinfer").resolve()
                db_path = home / "index" / f"{self.chain_id}-{self.market.address.lower()}.sqlite"
            db_path = Path(db_path)
            db_path.parent.mkdir(parents=True, exist_ok=True)
            w3 = chain.provider.web3
            protocol = Protocol(w3, self.market.address, self.court.address)
            self._indexer = Indexer(
                db_path, protocol, confirmations=auto_confirmations(self.chain_id),
                from_block=self.from_block,
            )  # fmt: skip
        with guard("index"):
            self._indexer.sync()
        return self._indexer

    def router(self, attempts: int = 3, on_event: Any = None, db_path: Any = None) -> Any:
        """A ``verinfer.failover.Router`` of this client: records, ranking, failover."""
        from verinfer.failover import Router

        return Router(self, self.indexer(db_path), attempts=attempts, on_event=on_event)

    def submit_routed(
        self,
        model: str | bytes,
        policy: Any = None,
        attempts: int = 3,
        timeout: float = 600.0,
        on_event: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Submit to the best node by its record (``policy``: a ``routing.RoutePolicy``: pin,
        exclude, weights, price limit), fail over until served or ``attempts`` are used, and
        return the ``failover.RoutedJob`` (``.result``, ``.served``, ``.attempts``)."""
        from verinfer.routing import RoutePolicy

        router = self.router(attempts, on_event)
        job = router.start({"model": model, **kwargs}, policy or RoutePolicy())
        router.run([job], timeout)
        return job

    # ---- logs ----
    def _logs(
        self,
        events: list[str],
        job_ids: list[int] | None,
        start: int | None = None,
        stop: int | None = None,
        topic2: str | None = None,
    ) -> list[Any]:
        """Decoded market logs of ``events`` (one eth_getLogs per MAX_LOG_RANGE blocks)."""
        from ape import chain

        abis = [getattr(self.market, name).abi for name in events]
        topic0 = ["0x" + keccak(text=abi.selector).hex() for abi in abis]
        topics: list[Any] = [topic0]
        if job_ids is not None:
            topics.append(["0x" + int(i).to_bytes(32, "big").hex() for i in job_ids])
        if topic2 is not None:
            topics += [None] * (2 - len(topics)) + [topic2]
        first = self.from_block if start is None else start
        last = int(chain.blocks.height) if stop is None else stop
        raw: list[Any] = []
        while first <= last:
            upto = min(last, first + MAX_LOG_RANGE - 1)
            params = {
                "address": self.market.address,
                "fromBlock": hex(first),
                "toBlock": hex(upto),
                "topics": topics,
            }
            raw += chain.provider.make_request("eth_getLogs", [params])
            first = upto + 1
        decoded = list(chain.provider.network.ecosystem.decode_logs(raw, *abis))
        return sorted(decoded, key=lambda lg: (lg.block_number, lg.log_index))


def _raw_log(log: Any) -> dict[str, Any]:
    """A web3 receipt log as the JSON-RPC dict ape's ``decode_logs`` reads."""

    def hexed(value: Any) -> Any:
        return "0x" + bytes(value).hex() if isinstance(value, bytes | bytearray) else value

    return {
        "address": log["address"],
        "topics": [hexed(t) for t in log["topics"]],
        "data": hexed(log["data"]),
        "blockNumber": log["blockNumber"],
        "blockHash": hexed(log["blockHash"]),
        "transactionHash": hexed(log["transactionHash"]),
        "transactionIndex": log["transactionIndex"],
        "logIndex": log["logIndex"],
    }


def _address(text: str) -> str:
    """A checksummed address, or ClientError."""
    try:
        return str(to_checksum_address(text))
    except ValueError:
        raise ClientError(f"not an address: {text!r}") from None


def _submit_defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "prompt": None,
        "messages": None,
        "max_tokens": 64,
        "temperature": 0.0,
        "seed": 0,
        "max_payment": None,
        "node": None,
        "claim_window": 600,
        "result_window": 1200,
        "top_k": 0,
    }
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"unknown submit arguments: {sorted(unknown)}")
    return {**defaults, **kwargs}


def resolve_account(account: Any, passphrase: str | None = None) -> Any:
    """An ape account from an account object, ``test:N`` or a keystore alias."""
    from ape import accounts, chain

    if not isinstance(account, str):
        return account
    if account.startswith("test:"):
        if chain.provider.network.name != "local":
            raise ClientError("test accounts exist only on local networks; use a keystore alias")
        index = int(account[5:])
        return accounts.test_accounts[index]
    try:
        acct = accounts.load(account)
    except Exception as exc:  # ape raises AccountsError with a multi-line hint
        raise ClientError(f"unknown account alias {account!r} in ape's keystore") from exc
    secret = passphrase if passphrase is not None else os.environ.get("VERINFER_PASSPHRASE")
    if secret is None:
        raise ClientError(f"account {account!r} is locked: set VERINFER_PASSPHRASE")
    try:
        acct.set_autosign(True, passphrase=secret)
    except Exception as exc:
        raise ClientError(f"cannot unlock account {account!r}: wrong passphrase?") from exc
    return acct
