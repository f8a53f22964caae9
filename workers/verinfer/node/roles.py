"""What the Celery workers do: the chain role (the one sender of the node's key) and the
inference role (batched engine calls, the verifier). Plain classes, so tests can drive them
directly; ``verinfer.node.tasks`` wraps them in Celery tasks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from verinfer.digest import pack_tokens, result_digest
from verinfer.jobs import JobRecord, JobStatus
from verinfer.node import private
from verinfer.node.contracts import Protocol
from verinfer.node.metrics import Metrics
from verinfer.node.sender import TxRejected, TxSender
from verinfer.node.store import Store
from verinfer.node.watcher import Dispatch

log = logging.getLogger("verinfer.node")

FIELDS_MISMATCH = "job fields mismatch"  # the market's reason for a stale Job struct
RESERVED = "reserved for preferred node"  # the market's reason for a claim inside the window
OPEN_RETRY_S = 2.0  # such a claim is tried again this much later
PUBLISH_BATCH = 16  # Market.publish_many: at most 16 results ...
BATCH_OUTPUT_BYTES = 2_176  # ... of at most 2,176 output bytes (512 tokens + overhead) each


class ChainRole:
    """Turns chain actions into transactions through the node's single TxSender."""

    enc_key: Any = None  # the node's private-job EncryptionKey (tasks.chain_role loads it)

    def __init__(
        self,
        protocol: Protocol,
        sender: TxSender,
        store: Store,
        metrics: Metrics,
        start_block: int = 0,
    ) -> None:
        """``start_block``: where a job's logs are looked for when its record is rebuilt."""
        self.start_block = start_block
        self.p = protocol
        self.sender = sender
        self.store = store
        self.metrics = metrics
        self.market = protocol.market.functions
        self.court = protocol.court.functions

    def run(self, action: str, *args: Any) -> bytes | None:
        """Send the transaction of ``action``; None when it does not apply (logged once)."""
        method = getattr(self, f"do_{action}", None)
        if method is None:
            raise ValueError(f"unknown chain action {action!r}")
        try:
            try:
                return method(*args)
            except TxRejected as exc:
                # a record from before a reorg: rebuilt from the canonical chain, tried once more
                if FIELDS_MISMATCH not in exc.reason or not args or not self._rebuild(args[0]):
                    raise
                return method(*args)
        except TxRejected as exc:
            if action in ("claim", "claim_and_publish", "publish") and args:
                self._skip(action, int(args[0]), exc.reason)
            else:
                log.info("skip action=%s args=%s reason=%s", action, list(args)[:2], exc.reason)
            return None

    def do_batch(self, items: Sequence[Sequence[Any]]) -> list[bytes | None]:
        """Many ``publish`` / ``claim_and_publish`` actions ``[action, job_id, key]`` at once:
        records, outputs and dedup keys in one Redis round trip each, the transactions in one
        simulation batch and one send batch (``TxSender.send_many``). Same effects, per item,
        as ``run(action, job_id, key)``; any other action is run on its own."""
        results: list[bytes | None] = [None] * len(items)
        bulk: list[int] = []
        for i, (action, *args) in enumerate(items):
            if action in ("publish", "claim_and_publish"):
                bulk.append(i)
            else:
                results[i] = self.run(action, *args)
        if not bulk:
            return results
        ids = [int(items[i][1]) for i in bulk]
        dones = [f"{items[i][0]}:{items[i][1]}:{items[i][2]}" for i in bulk]
        already = self.store.done_many(dones)
        records = self.store.get_jobs(ids)
        outputs = self.store.get_outputs(ids)
        calls: list[tuple[str, Any]] = []
        rows: list[tuple[int, tuple, tuple]] = []
        todo: list[int] = []
        for n, i in enumerate(bulk):
            action, job_id = str(items[i][0]), ids[n]
            if already[n]:
                log.info("already sent action=%s job=%d", action, job_id)
                continue
            record, out = records[n], outputs[n]
            if record is None or out is None:
                why = "unknown to this node" if record is None else "has no stored output"
                self._skip(action, job_id, f"job {job_id} {why}")
                continue
            result = (
                bytes.fromhex(out["packed"]),
                int(out["n"]),
                int(out["finish"]),
                bytes.fromhex(out["digest"]),
            )
            if action == "claim_and_publish" and self._mine(record):
                action = "publish"  # claimed meanwhile (the keeper's secure claim): publish
            method = self.market.publish if action == "publish" else self.market.claim_and_publish
            struct = record.as_struct()
            calls.append((action, method(job_id, struct, *result)))
            rows.append((job_id, struct, result))
            todo.append(n)
        sent = self._send_results(calls, rows)
        marked: list[str] = []
        for n, outcome in zip(todo, sent, strict=True):
            action = str(items[bulk[n]][0])
            if isinstance(outcome, TxRejected):
                self._skip(action, ids[n], outcome.reason)
            else:
                results[bulk[n]] = outcome
                marked.append(dones[n])
        if marked:
            self.store.mark_done_many(marked)
        return results

    def _send_results(
        self, calls: list[tuple[str, Any]], rows: list[tuple[int, tuple, tuple]]
    ) -> list[bytes | TxRejected]:
        """Send publish / claim_and_publish ``calls`` (``rows``: job id, struct and result of
        each). Groups of 2 to 16 results of at most 512 tokens go out as one ``publish_many``
        transaction, which claims the open ones and publishes all; a group whose simulation
        reverts (one item no longer applies: the whole call would revert) and every other call
        go out one transaction each, so that the rest still goes through. Per call: the
        transaction hash, or the TxRejected of a call that was not sent."""
        out: list[bytes | TxRejected | None] = [None] * len(calls)
        fits = [i for i, row in enumerate(rows) if len(row[2][0]) <= BATCH_OUTPUT_BYTES]
        singles = [i for i, row in enumerate(rows) if len(row[2][0]) > BATCH_OUTPUT_BYTES]
        for start in range(0, len(fits), PUBLISH_BATCH):
            group = fits[start : start + PUBLISH_BATCH]
            if len(group) < 2:
                singles += group
                continue
            results = [list(column) for column in zip(*(rows[i][2] for i in group), strict=True)]
            batch = self.market.publish_many(
                [rows[i][0] for i in group], [rows[i][1] for i in group], *results
            )
            (sent,) = self.sender.send_many(
                [("publish_many", batch)], parts=[calls[i] for i in group]
            )
            if isinstance(sent, TxRejected):
                log.info(
                    "publish_many of %d jobs rejected (%s): sending them one by one",
                    len(group),
                    sent.reason,
                )
                singles += group
            else:
                for i in group:
                    out[i] = sent
        singles.sort()
        sent_singly = self.sender.send_many([calls[i] for i in singles])
        for i, outcome in zip(singles, sent_singly, strict=True):
            out[i] = outcome
        done = [o for o in out if o is not None]
        assert len(done) == len(calls), "every call is in a group or sent singly"
        return done

    def _rebuild(self, job_id: Any) -> bool:
        """Replace the stored record of ``job_id`` with the canonical chain's (rebuilt from
        its logs) when the market's fields differ; True when it changed."""
        if not isinstance(job_id, int):
            return False
        record = self.store.get_job(job_id)
        if record is not None and self.p.matches_chain(record):
            return False
        fresh = self.p.rebuild_job(job_id, self.start_block)
        if fresh is None:
            return False
        self.store.put_job(fresh)
        log.warning("job=%d record rebuilt from the chain (its fields had changed)", job_id)
        return True

    def _canonical(self, job_id: int) -> JobRecord:
        """The job's record with the fields the market has now: the stored one, or rebuilt
        from the canonical chain's logs when they differ (a reorg). For the keeper's calls."""
        self._rebuild(int(job_id))
        return self._record(job_id)

    def _skip(self, action: str, job_id: int, reason: str) -> None:
        """A claim or publish that does not apply: one line, the job out of hand. A claim the
        chain still reserves for the preferred node (this node's clock ran ahead of the
        chain's) goes back on the ``open`` schedule, a few seconds on."""
        log.info("skip action=%s args=%s reason=%s", action, [job_id], reason)
        self.store.inflight_remove(job_id)
        if RESERVED in reason and action != "publish":
            self.store.schedule("open", job_id, time.time() + OPEN_RETRY_S)

    def _once(self, action: str, job_id: int, key: str, fn: Any) -> bytes | None:
        """Send ``fn`` unless this (action, job, event key) was already sent."""
        done = f"{action}:{job_id}:{key}"
        if self.store.is_done(done):
            log.info("already sent action=%s job=%d", action, job_id)
            return None
        tx = self.sender.send(action, fn)
        self.store.mark_done(done)
        return tx

    def _record(self, job_id: int) -> JobRecord:
        record = self.store.get_job(int(job_id))
        if record is None:
            raise TxRejected("job", f"job {job_id} unknown to this node")
        return record

    def _result(self, record: JobRecord) -> tuple[bytes, int, int, bytes]:
        out = self.store.get_output(record.job_id)
        if out is None:
            raise TxRejected("publish", f"no output stored for job {record.job_id}")
        return (
            bytes.fromhex(out["packed"]),
            int(out["n"]),
            int(out["finish"]),
            bytes.fromhex(out["digest"]),
        )

    def do_claim(self, job_id: int, key: str) -> bytes | None:
        record = self._record(job_id)
        why = private.claim_check(record, self.enc_key)  # a private job it cannot open
        if why is not None:
            raise TxRejected("claim", why)
        return self._once("claim", job_id, key, self.market.claim(job_id, record.as_struct()))

    def do_publish(self, job_id: int, key: str) -> bytes | None:
        record = self._record(job_id)
        fn = self.market.publish(job_id, record.as_struct(), *self._result(record))
        return self._once("publish", job_id, key, fn)

    def do_claim_and_publish(self, job_id: int, key: str) -> bytes | None:
        record = self._record(job_id)
        if self._mine(record):  # claimed meanwhile (the keeper's secure claim): publish
            return self.do_publish(job_id, key)
        fn = self.market.claim_and_publish(job_id, record.as_struct(), *self._result(record))
        return self._once("claim_and_publish", job_id, key, fn)

    def _mine(self, record: JobRecord) -> bool:
        """Whether ``record`` says this node has claimed the job."""
        return record.node.lower() == str(self.sender.address).lower()

    def do_rederive(self, job_id: int, key: str) -> bytes | None:
        """A job of this node whose transactions a reorg may have dropped (the watcher found
        it open again, or claimed by this node without its result): the dropped transactions
        are sent again first (``TxSender.recover_dropped``); when none of them is about this
        job, what the canonical chain needs is sent: a claim of an open job, the publish of
        a claimed one whose output is stored. Nothing otherwise (one log line)."""
        self.sender.recover_dropped()
        if self.sender.has_pending_for(int(job_id)):
            log.info("reorg: job=%s its transaction is sent again", job_id)
            return None
        record = self._canonical(job_id)
        status = JobStatus(self.market.job_status(int(job_id)).call())
        if status == JobStatus.OPEN:
            return self._once("claim", job_id, key, self.market.claim(job_id, record.as_struct()))
        if (
            status == JobStatus.CLAIMED
            and self._mine(record)
            and self.store.get_output(int(job_id))
        ):
            fn = self.market.publish(job_id, record.as_struct(), *self._result(record))
            return self._once("publish", job_id, key, fn)
        log.info("reorg: job=%s nothing to send (status %s)", job_id, status.name)
        return None

    def do_hand_key(self, job_id: int, key: str) -> bytes | None:
        """Hand this node's private job key to the drawn verifier or panel (Court.hand_key)."""
        call = private.hand_key_call(self.p, self._record(job_id), self.enc_key)
        if isinstance(call, str):
            raise TxRejected("hand_key", call)
        return self._once("hand_key", job_id, key, call)

    def do_accept(self, job_id: int, key: str) -> bytes | None:
        return self._once("accept", job_id, key, self.court.accept(job_id))

    def do_verdict(self, job_id: int, key: str, valid: bool) -> bytes | None:
        tx = self._once("verdict", job_id, key, self.court.post_verdict(job_id, bool(valid)))
        if tx is not None:
            self.metrics.incr("verdicts", valid=str(bool(valid)).lower())
        return tx

    def do_panel(self, job_id: int, key: str, valid: bool) -> bytes | None:
        tx = self._once("panel", job_id, key, self.court.panel_vote(job_id, bool(valid)))
        if tx is not None:
            self.metrics.incr("verdicts", valid=str(bool(valid)).lower())
        return tx

    def do_appeal(self, job_id: int, key: str, valid: bool) -> bytes | None:
        """A verifier ruled this node's own result invalid: appeal to a panel when the node's
        own re-verification finds it valid. The bond (the dispute bond, for the accused node)
        comes from the node's prepaid balance, which the operator keeps funded (`verinfer
        balance deposit`); without it the node logs why it cannot appeal."""
        if not valid:
            log.warning("no appeal job=%s: its own result fails re-verification too", job_id)
            return None
        bond = int(self.court.dispute_bond().call())
        prepaid = int(self.market.balance_of(self.sender.address).call())
        if prepaid < bond:
            log.warning(
                "cannot appeal job=%s: prepaid balance %d < dispute bond %d (deposit first)",
                job_id,
                prepaid,
                bond,
            )
            return None
        log.info("appeal job=%s: own re-verification says valid", job_id)
        return self._once("appeal", job_id, key, self.court.appeal(int(job_id)))

    def do_finalize(self, job_ids: Sequence[int]) -> bytes | None:
        for job_id in job_ids:  # fields as the market has them (a reorg may have changed them)
            self._rebuild(int(job_id))
        records = [r for r in self.store.get_jobs([int(j) for j in job_ids]) if r is not None]
        live = [
            r for r in records if self.market.job_status(r.job_id).call() == JobStatus.PUBLISHED
        ]
        if live:  # a result published again after a reorg: its window starts later
            window = int(self.market.challenge_window().call())
            now = int(self.p.w3.eth.get_block("latest")["timestamp"])
            for r in [r for r in live if r.published_at + window >= now]:
                self.store.schedule("finalize", r.job_id, r.published_at + window + 1)
                log.info("finalize job=%d: its challenge window is still open", r.job_id)
            live = [r for r in live if r.published_at + window < now]
        if not live:
            return None
        fn = self.market.finalize_many([r.job_id for r in live], [r.as_settlement() for r in live])
        return self.sender.send("finalize", fn)

    def do_start_audit(self, job_id: int) -> bytes | None:
        record = self._canonical(job_id)
        return self.sender.send("start_audit", self.court.start_audit(job_id, record.as_struct()))

    def do_replace_verifier(self, job_id: int) -> bytes | None:
        return self.sender.send("replace_verifier", self.court.replace_verifier(int(job_id)))

    def do_draw(self, job_id: int) -> bytes | None:
        """``Court.draw``: quietly nothing when someone else drew first; in the block of the
        request itself ("draw not ready"), tried again at the next block."""
        try:
            tx = self.sender.send("draw", self.court.draw(int(job_id)))
        except TxRejected as exc:
            if "nothing to draw" in exc.reason:
                log.debug("draw job=%s: already drawn", job_id)
                return None
            if "draw not ready" in exc.reason:
                self.store.schedule("draw", int(job_id), self.p.w3.eth.block_number + 1)
                return None
            raise
        return tx

    def do_expire(self, job_id: int) -> bytes | None:
        record = self._canonical(job_id)
        return self.sender.send("expire", self.market.expire(job_id, record.as_struct()))

    def do_cancel(self, job_id: int) -> bytes | None:
        record = self._canonical(job_id)
        return self.sender.send("cancel", self.market.cancel(job_id, record.as_struct()))

    def do_settle(self, job_id: int) -> bytes | None:
        record = self._canonical(job_id)
        return self.sender.send("settle", self.court.settle(job_id, record.as_struct()))

    def do_withdraw(self) -> bytes | None:
        """Withdraw the earnings, unless a withdrawal is already on its way (a second one in
        the same block reverts: nothing left to withdraw)."""
        if self.sender.has_pending_action("withdraw"):
            log.debug("withdraw: one is already on its way")
            return None
        return self.sender.send("withdraw", self.market.withdraw())


class InferRole:
    """Runs batches of jobs through the engine and claims through the verifier."""

    enc_key: Any = None  # private jobs (tasks.infer_role sets these three)
    protocol: Any = None
    me: str = ""

    def __init__(
        self, engine: Any, registry: Any, store: Store, metrics: Metrics, dispatch: Dispatch
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.dispatch = dispatch

    def run_batch(self, calls: Sequence[Sequence[Any]]) -> None:
        """Handle one batch of ``infer`` calls: ``("serve", job_id, key)`` and
        ``("verify", job_id, key, "verdict"|"panel"|"appeal")`` (the chain action the verdict
        goes to)."""
        serve = [c for c in calls if c[0] == "serve"]
        verify = [c for c in calls if c[0] == "verify"]
        if serve:
            self._serve(serve)
        if verify:
            self._verify(verify)

    def _serve(self, calls: Sequence[Sequence[Any]]) -> None:
        from verinfer.engines.base import Job

        todo: list[tuple[JobRecord, str]] = []
        records = self.store.get_jobs([int(c[1]) for c in calls])
        served = self.store.done_many([f"serve:{c[1]}:{c[2]}" for c in calls])
        inputs: dict[int, bytes] = {}  # private jobs: the decrypted input
        job_keys: dict[int, bytes] = {}
        for (_, _, key), record, done in zip(calls, records, served, strict=True):
            if record is not None and not done:
                opened = private.open_for_serving(record, self.enc_key)
                if isinstance(opened, str):
                    self._skip_job(record.job_id, key, opened)
                    continue
                inputs[record.job_id] = opened[0].input
                if opened[1] is not None:
                    job_keys[record.job_id] = opened[1]
                todo.append((record, key))
        if not todo:
            return
        jobs = [Job(r.model_id, r.sampling_params, input_data=inputs[r.job_id]) for r, _ in todo]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        results = self.engine.generate(jobs)
        cpu = time.process_time() - cpu0
        self.metrics.incr("engine_cpu_s", cpu)
        self.metrics.incr("engine_batches")
        log.info(
            "engine batch jobs=%d wall_s=%.3f cpu_s=%.3f",
            len(jobs),
            time.perf_counter() - wall0,
            cpu,
        )
        outputs: dict[int, dict[str, Any]] = {}
        publish: list[list[Any]] = []
        for (record, key), out in zip(todo, results, strict=True):
            if not out.ok:
                log.warning("job=%d cannot run: %s", record.job_id, out.error)
                self.store.inflight_remove(record.job_id)
                self.metrics.job("skipped")
                self.store.mark_done(f"serve:{record.job_id}:{key}")
                continue
            if record.job_id in job_keys:
                outputs[record.job_id] = private.sealed_result(
                    record, job_keys[record.job_id], list(out.token_ids), int(out.finish_reason)
                )
                claimed = record.node.lower() != "0x" + "00" * 20
                publish.append(["publish" if claimed else "claim_and_publish", record.job_id, key])
                continue
            digest = result_digest(
                record.job_id,
                record.model_id,
                record.input,
                record.params,
                out.token_ids,
                out.finish_reason,
            )
            outputs[record.job_id] = {
                "packed": pack_tokens(out.token_ids).hex(),
                "n": len(out.token_ids),
                "finish": int(out.finish_reason),
                "digest": digest.hex(),
            }
            claimed = record.node.lower() != "0x" + "00" * 20
            publish.append(["publish" if claimed else "claim_and_publish", record.job_id, key])
        if not publish:
            return
        # outputs stored, then one chain task for the whole batch, then marked served
        self.store.put_outputs(outputs)
        self.dispatch("chain", "batch", [publish])
        self.store.mark_done_many([f"serve:{job_id}:{key}" for _, job_id, key in publish])

    def _skip_job(self, job_id: int, key: str, reason: str) -> None:
        log.info("skip job=%d reason=%s", job_id, reason)
        self.store.inflight_remove(job_id)
        self.metrics.job("skipped")
        self.store.mark_done(f"serve:{job_id}:{key}")

    def _verify(self, calls: Sequence[Sequence[Any]]) -> None:
        from verinfer.engines.base import Job, JobError
        from verinfer.verifier import Claim, verify_batch

        by_model: dict[bytes, list[tuple[JobRecord, str, str]]] = {}
        for _, job_id, key, kind in calls:
            record = self.store.get_job(int(job_id))
            if record is None or self.store.is_done(f"verify:{job_id}:{key}"):
                continue
            if private.is_private(record):
                opened = private.open_for_verifying(
                    self.protocol, record, self.me, self.enc_key, kind
                )
                if opened is None:
                    log.warning(
                        "skip verify job=%d kind=%s reason=no encryption key here to open the "
                        "job key with (not voting)",
                        job_id,
                        kind,
                    )
                    self.store.mark_done(f"verify:{job_id}:{key}")
                    continue
                if isinstance(opened, bool):  # no valid key, or an output that does not open
                    log.info("verdict job=%d valid=%s kind=%s reason=private", job_id, opened, kind)
                    self.dispatch("chain", kind, [int(job_id), key, opened])
                    self.store.mark_done(f"verify:{job_id}:{key}")
                    continue
                record = opened
            by_model.setdefault(record.model_id, []).append((record, key, kind))
        for model_id, items in by_model.items():
            if model_id not in self.registry:
                log.warning("cannot verify: model 0x%s not served here", model_id.hex())
                continue
            model = self.registry.get(model_id)
            claims = [
                Claim(
                    Job(r.model_id, r.sampling_params, input_data=r.input),
                    tuple(r.output_token_ids),
                    r.finish_reason,
                )
                for r, _, _ in items
            ]
            verdicts = verify_batch(model, claims)
            for (record, key, kind), verdict in zip(items, verdicts, strict=True):
                valid = not isinstance(verdict, JobError) and verdict.valid
                why = verdict if isinstance(verdict, JobError) else verdict.reason
                log.info(
                    "verdict job=%d valid=%s kind=%s reason=%s", record.job_id, valid, kind, why
                )
                self.dispatch("chain", kind, [record.job_id, key, valid])
                self.store.mark_done(f"verify:{record.job_id}:{key}")
