"""Gas per job on a real chain: `ape run bench_gas` (Anvil by default; `--network` to pick).

Deploys everything, then measures `gasUsed` of every receipt for
* the happy path: submit (256-byte input, 64 output tokens) -> claim -> publish -> finalize,
  once cold (first job of the deployment, reported as `happy_path_total_cold`) and once
  in steady state (the per-step figures and `happy_path_total`);
* the batched path: 10 jobs targeted at a node, claimed and published in one `publish_many`
  transaction, finalized by one `finalize_many` (per job = total / 10); and the same with one
  `claim_and_publish` transaction per job (`happy_path_total_batched_per_job_tx`); and with
  the 10 submitted in one `submit_many` as well (`happy_path_total_all_batched`);
* one dispute: dispute -> draw (the next block: anyone, here the challenger) -> accept ->
  post_verdict -> settle (after the appeal window); `dispute_draw` is the draw alone;
* the private path (issue 12, docs/privacy.md): the same 256-byte prompt sealed to the node
  (`private_*`: submit, claim, publish of the sealed 64 tokens, finalize, total), and the
  client's `Court.hand_key` to the drawn verifier in a private dispute (`private_hand_key`).
The last stdout line is one JSON object.
"""

from __future__ import annotations

import json
from typing import Any

from ape import accounts, chain, project
from ape.logging import LogLevel, logger
from verinfer.deploy import DeployConfig, deploy_all
from verinfer.digest import SamplingParams, encode_params, model_id, pack_tokens, result_digest
from verinfer.jobs import JobRecord
from verinfer.privacy import EncryptionKey, private_result_digest, seal_input, seal_output, wrap_for

BATCH = 10
INPUT = bytes((i * 31 + 7) % 251 + 1 for i in range(256))
PARAMS = encode_params(SamplingParams(max_tokens=64))
OUTPUT = list(range(100, 164))
MODEL = ("verinfer/bench", "r1", b"\x11" * 32)
ZERO = "0x" + "00" * 20


class Bench:
    """Deployed protocol plus funded roles."""

    def __init__(self) -> None:
        test = accounts.test_accounts
        self.owner, self.client, self.node, self.verifier, self.challenger = test[:5]
        addresses = deploy_all(self.owner, config=DeployConfig(timelock_delay=0))
        self.token = project.TestToken.at(addresses["token"])
        self.market = project.Market.at(addresses["market"])
        self.court = project.Court.at(addresses["court"])
        self.unit = 10 ** self.token.decimals()
        self.model_id = model_id(*MODEL)
        self.market.register_model(*MODEL, sender=self.owner)
        for node in (self.node, self.verifier):
            self.fund(node, 10_000)
            self.market.register_node(bytes(range(64)), "http://bench", sender=node)
            self.market.stake(5_000 * self.unit, sender=node)
            self.market.serve_model(self.model_id, self.unit // 1_000, sender=node)
        for payer in (self.client, self.challenger):
            self.fund(payer, 10_000)
            self.market.deposit(5_000 * self.unit, sender=payer)

    def fund(self, account: Any, whole_tokens: int) -> None:
        self.token.mint(account, whole_tokens * self.unit, sender=account)
        self.token.approve(self.market, 2**256 - 1, sender=account)

    def submit(self, preferred: str = ZERO) -> tuple[JobRecord, int]:
        now = chain.pending_timestamp
        tx = self.market.submit(
            self.model_id,
            INPUT,
            PARAMS,
            self.unit,
            preferred,
            now + 600,
            now + 1_200,
            sender=self.client,
        )
        [log] = tx.decode_logs(self.market.JobSubmitted)
        return JobRecord.from_submitted(log), tx.gas_used

    def publish_args(self, job: JobRecord) -> tuple[Any, ...]:
        digest = result_digest(job.job_id, job.model_id, INPUT, PARAMS, OUTPUT, 1)
        return (pack_tokens(OUTPUT), len(OUTPUT), 1, digest)

    def claim(self, job: JobRecord) -> int:
        tx = self.market.claim(job.job_id, job.as_struct(), sender=self.node)
        [log] = tx.decode_logs(self.market.JobClaimed)
        job.apply_claimed(log)
        return tx.gas_used

    def publish(self, job: JobRecord) -> int:
        tx = self.market.publish(
            job.job_id, job.as_struct(), *self.publish_args(job), sender=self.node
        )
        [log] = tx.decode_logs(self.market.ResultPublished)
        job.apply_published(log)
        return tx.gas_used

    def claim_and_publish(self, job: JobRecord) -> int:
        tx = self.market.claim_and_publish(
            job.job_id, job.as_struct(), *self.publish_args(job), sender=self.node
        )
        [claimed] = tx.decode_logs(self.market.JobClaimed)
        [published] = tx.decode_logs(self.market.ResultPublished)
        job.apply_claimed(claimed)
        job.apply_published(published)
        return tx.gas_used

    def pass_time(self, seconds: int) -> None:
        chain.pending_timestamp += seconds
        chain.mine()

    def status(self, job: JobRecord) -> int:
        return self.market.job_status(job.job_id)


def happy_path(b: Bench) -> dict[str, int]:
    """One job, one transaction per step."""
    job, submit = b.submit()
    claim = b.claim(job)
    publish = b.publish(job)
    b.pass_time(b.market.challenge_window() + 1)
    finalize = b.market.finalize(job.job_id, job.as_settlement(), sender=b.client).gas_used
    assert b.status(job) == 5, "happy path job not finalized"
    return {"submit": submit, "claim": claim, "publish": publish, "finalize": finalize}


def batched_path(b: Bench, one_tx: bool, submit_many: bool = False) -> int:
    """Gas per job of 10 jobs targeted at a node, claimed and published either in one
    `publish_many` transaction (``one_tx``) or by one `claim_and_publish` each, then finalized
    by one `finalize_many`; submitted one transaction each, or all in one `submit_many`."""
    jobs, total = [], 0
    if submit_many:
        now, n = chain.pending_timestamp, BATCH
        tx = b.market.submit_many(
            [b.model_id] * n,
            [INPUT] * n,
            [PARAMS] * n,
            [b.unit] * n,
            [b.node.address] * n,
            [now + 600] * n,
            [now + 1_200] * n,
            sender=b.client,
        )
        jobs = [JobRecord.from_submitted(log) for log in tx.decode_logs(b.market.JobSubmitted)]
        total += tx.gas_used
    for _ in range(0 if submit_many else BATCH):
        job, gas = b.submit(preferred=b.node.address)
        jobs.append(job)
        total += gas
    if one_tx:
        args = [b.publish_args(job) for job in jobs]
        tx = b.market.publish_many(
            [j.job_id for j in jobs],
            [j.as_struct() for j in jobs],
            *[list(column) for column in zip(*args, strict=True)],
            sender=b.node,
        )
        claimed = tx.decode_logs(b.market.JobClaimed)
        published = tx.decode_logs(b.market.ResultPublished)
        for job, c, p in zip(jobs, claimed, published, strict=True):
            job.apply_claimed(c)
            job.apply_published(p)
        total += tx.gas_used
    else:
        for job in jobs:
            total += b.claim_and_publish(job)
    b.pass_time(b.market.challenge_window() + 1)
    tx = b.market.finalize_many(
        [j.job_id for j in jobs], [j.as_settlement() for j in jobs], sender=b.client
    )
    total += tx.gas_used
    assert all(b.status(j) == 5 for j in jobs), "batched jobs not finalized"
    return total // BATCH


def dispute_path(b: Bench) -> tuple[int, int]:
    """dispute -> draw -> accept -> post_verdict -> settle of one published job; returns the
    total and the draw's own gas."""
    job, _ = b.submit()
    b.claim(job)
    b.publish(job)
    tx = b.court.dispute(job.job_id, job.as_struct(), sender=b.challenger)
    total = tx.gas_used
    tx = b.court.draw(job.job_id, sender=b.challenger)  # mined in the block after the request
    draw = tx.gas_used
    total += draw
    [assigned] = tx.decode_logs(b.court.VerifierAssigned)
    verifier = accounts.test_accounts[assigned.verifier]
    total += b.court.accept(job.job_id, sender=verifier).gas_used
    total += b.court.post_verdict(job.job_id, True, sender=verifier).gas_used
    b.pass_time(b.court.appeal_window() + 1)
    total += b.court.settle(job.job_id, job.as_struct(), sender=b.client).gas_used
    assert b.status(job) == 5, "disputed job not settled as valid"
    return total, draw


def private_path(b: Bench) -> dict[str, int]:
    """One private job (the 256-byte prompt sealed to the node, the 64 tokens sealed back),
    one transaction per step, then a client's dispute of a second one up to `hand_key`."""
    key = EncryptionKey.generate()
    for node in (b.node, b.verifier):
        b.market.update_node(key.pubkey, "http://bench", sender=node)
    out: dict[str, int] = {}
    for run in ("happy", "dispute"):
        envelope, job_key = seal_input(b"\x00" + INPUT[1:], key.pubkey)
        now = chain.pending_timestamp
        tx = b.market.submit(
            b.model_id, envelope, PARAMS, b.unit, b.node.address, now + 600, now + 1_200,
            sender=b.client,
        )  # fmt: skip
        [log] = tx.decode_logs(b.market.JobSubmitted)
        job, submit = JobRecord.from_submitted(log), tx.gas_used
        claim = b.claim(job)
        digest = private_result_digest(
            job.job_id, job.model_id, envelope, PARAMS, OUTPUT, 1, job_key
        )
        sealed = seal_output(OUTPUT, job_key, job.job_id)
        tx = b.market.publish(
            job.job_id, job.as_struct(), sealed, len(OUTPUT), 1, digest, sender=b.node
        )
        [published] = tx.decode_logs(b.market.ResultPublished)
        job.apply_published(published)
        publish = tx.gas_used
        if run == "dispute":
            b.court.dispute(job.job_id, job.as_struct(), sender=b.client)
            b.court.draw(job.job_id, sender=b.client)
            tx = b.court.hand_key(job.job_id, wrap_for(job_key, [key.pubkey]), sender=b.client)
            out["private_hand_key"] = tx.gas_used
            return out
        b.pass_time(b.market.challenge_window() + 1)
        finalize = b.market.finalize(job.job_id, job.as_settlement(), sender=b.client).gas_used
        assert b.status(job) == 5, "private job not finalized"
        steps = {"submit": submit, "claim": claim, "publish": publish, "finalize": finalize}
        out.update({f"private_{k}": v for k, v in steps.items()})
        out["private_happy_path_total"] = sum(steps.values())
        out["private_input_bytes"] = len(envelope)
        out["private_output_bytes"] = len(sealed)
    return out


def main() -> None:
    """Run the three paths and print the gas figures as JSON on the last line."""
    bench = Bench()
    cold = happy_path(bench)  # first job: the node's and the pools' slots go 0 -> non-zero
    happy = happy_path(bench)  # steady state: the figures reported per step
    result: dict[str, int] = {
        **happy,
        "happy_path_total": sum(happy.values()),
        "happy_path_total_cold": sum(cold.values()),
        "happy_path_total_batched": batched_path(bench, one_tx=True),
        "happy_path_total_batched_per_job_tx": batched_path(bench, one_tx=False),
        "happy_path_total_all_batched": batched_path(bench, one_tx=True, submit_many=True),
    }
    result["dispute_total"], result["dispute_draw"] = dispute_path(bench)
    result.update(private_path(bench))
    # ape logs "Stopping 'anvil' process." to stdout at exit; keep the JSON line last.
    logger.set_level(LogLevel.ERROR)
    print(json.dumps(result), flush=True)
