"""verinfer end to end on a fresh local chain: `make demo` (or `make demo CHAIN=hardhat`).

This script plays every role itself in one process (the node service, `verinfer node run`,
runs in tests/node/), with the real parts: it starts Anvil (or, through ape-hardhat, a
Hardhat node), deploys the contracts, registers the project's small model, stakes two
honest nodes and one that serves a different model under the registered id, has two
clients pay for jobs, runs the model with the transformers engine, publishes the results,
finalizes them, and has a client dispute the cheater's result: a randomly assigned honest
node re-executes it with the teacher-forced verifier and the contract slashes the cheater.

Its last line is one JSON object: {"jobs": n, "finalized": n, "disputes": 1, "slashed": 1}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workers"))
os.chdir(ROOT)

NETWORKS = {"anvil": "ethereum:local:foundry", "hardhat": "ethereum:local:hardhat"}
PROMPTS = {
    "alice": ["Write one line about open models.", "What is a GPU?"],
    "bob": ["Say hello to the agents.", "Count from one to five."],
}
UNIT = 10**18


def log(msg: str) -> None:
    print(msg, flush=True)


def main() -> int:
    chain_name = os.environ.get("CHAIN", "anvil")
    if chain_name not in NETWORKS:
        print(f"demo: unknown CHAIN={chain_name!r} (use anvil or hardhat)", file=sys.stderr)
        return 2
    from ape import networks
    from ape.logging import logger

    logger.set_level("WARNING")
    # ape-foundry starts Anvil, ape-hardhat starts `npx hardhat node` (hardhat.config.js)
    with networks.parse_network_choice(NETWORKS[chain_name]):
        result = run_demo()
    print(json.dumps(result))
    return 0 if result["finalized"] == result["jobs"] and result["slashed"] == 1 else 1


def run_demo() -> dict[str, int]:
    from ape import accounts, chain, project
    from verinfer.deploy import deploy_all
    from verinfer.digest import SamplingParams, pack_tokens, result_digest
    from verinfer.engines.base import Job
    from verinfer.engines.hf import TransformersEngine
    from verinfer.inputs import encode_text_input
    from verinfer.jobs import JobRecord, JobStatus
    from verinfer.models.loader import load_model
    from verinfer.models.tiny import tiny_model_path
    from verinfer.verifier import verify

    owner, alice, bob, node_a, node_b, cheater, keeper = accounts.test_accounts[:7]
    names = {
        owner.address: "owner",
        alice.address: "alice",
        bob.address: "bob",
        node_a.address: "node-a",
        node_b.address: "node-b",
        cheater.address: "cheater",
    }

    log(f"== deploying on {chain.provider.network.name}:{chain.provider.name}")
    addresses = deploy_all(owner)
    token = project.TestToken.at(addresses["token"])
    market = project.Market.at(addresses["market"])
    court = project.Court.at(addresses["court"])
    log(f"   market {market.address}  court {court.address}  token {token.address}")

    log("== building the project's small model and loading it (manifest checked)")
    model = load_model(tiny_model_path(seed=0))
    fake = load_model(tiny_model_path(seed=1))  # what the cheater really runs
    engine, fake_engine = TransformersEngine(model), TransformersEngine(fake)
    spec = model.manifest
    market.register_model(spec.name, spec.revision, spec.manifest_hash, sender=owner)
    model_id = spec.model_id
    log(f"   model {spec.name}@{spec.revision} id 0x{model_id.hex()}")

    min_stake = market.min_stake()
    price = UNIT // 1000  # per output token
    for node in (node_a, node_b, cheater):
        token.mint(node, 2 * min_stake, sender=node)
        token.approve(market, 2 * min_stake, sender=node)
        market.register_node(
            b"\x04" + b"\x11" * 63, f"https://{names[node.address]}.invalid", sender=node
        )
        market.stake(2 * min_stake, sender=node)
        market.serve_model(model_id, price, sender=node)
    for client in (alice, bob):
        token.mint(client, 500 * UNIT, sender=client)
        token.approve(market, 500 * UNIT, sender=client)
        market.deposit(300 * UNIT, sender=client)  # pays jobs and dispute bonds

    def balances() -> dict[str, dict[str, float]]:
        return {
            names[a.address]: {
                "wallet": token.balanceOf(a) / UNIT,
                "prepaid": market.balance_of(a) / UNIT,
                "claimable": market.claimable(a) / UNIT,
                "stake": market.node_info(a).stake / UNIT,
            }
            for a in (alice, bob, node_a, node_b, cheater)
        }

    before = balances()
    log("== balances before (tokens)")
    for who, b in before.items():
        log(f"   {who:8s} {b}")

    def submit(client, text: str, node=None) -> JobRecord:
        params = SamplingParams(max_tokens=24, temperature_milli=700, seed=len(text))
        now = chain.pending_timestamp
        receipt = market.submit(
            model_id,
            encode_text_input(text),
            params.encode(),
            params.max_tokens * price,
            node or "0x" + "00" * 20,
            now + 600,
            now + 1200,
            sender=client,
        )
        return JobRecord.from_submitted(market.JobSubmitted.from_receipt(receipt)[0])

    def serve(node, record: JobRecord, loaded) -> None:
        receipt = market.claim(record.job_id, record.as_struct(), sender=node)
        record.apply_claimed(market.JobClaimed.from_receipt(receipt)[0])
        # the cheater runs other weights (`fake`) and claims they are the registered model
        eng = engine if loaded is model else fake_engine
        job = Job(loaded.model_id, record.sampling_params, input_data=record.input)
        (out,) = eng.generate([job])
        assert out.ok, out.error
        digest = result_digest(
            record.job_id, model_id, record.input, record.params, out.token_ids, out.finish_reason
        )
        receipt = market.publish(
            record.job_id,
            record.as_struct(),
            pack_tokens(out.token_ids),
            len(out.token_ids),
            int(out.finish_reason),
            digest,
            sender=node,
        )
        record.apply_published(market.ResultPublished.from_receipt(receipt)[0])

    log("== clients submit jobs; honest nodes claim, run the model and publish")
    log("   (the demo model has random weights: its answers are noise, but checkable noise)")
    jobs: list[JobRecord] = []
    for i, (client_name, client) in enumerate((("alice", alice), ("bob", bob))):
        for text in PROMPTS[client_name]:
            record = submit(client, text)
            serve(node_a if i == 0 else node_b, record, model)
            assert record.result_digest == record.expected_digest(), "digest mismatch"
            answer = model.tokenizer.decode(record.output_token_ids, skip_special_tokens=True)
            log(f"   job {record.job_id} {client_name}: {text!r} -> {answer[:40]!r}")
            jobs.append(record)

    log("== a cheating node serves a different model under the registered id")
    cheat = submit(alice, "Is this answer honest?", node=cheater)
    serve(cheater, cheat, fake)
    log(
        f"   job {cheat.job_id} published by the cheater, "
        f"digest 0x{cheat.result_digest.hex()[:16]}…"
    )

    log(
        "== alice disputes it (bond from her prepaid balance); "
        "the court picks a random honest node to re-execute"
    )
    court.dispute(cheat.job_id, cheat.as_struct(), sender=alice)
    verifier_addr = court.dispute_info(cheat.job_id).verifier
    verifier = next(a for a in (node_a, node_b) if a.address == verifier_addr)
    court.accept(cheat.job_id, sender=verifier)
    verdict = verify(
        model, cheat.input, cheat.sampling_params, cheat.output_token_ids, cheat.finish_reason
    )
    log(
        f"   verifier {names[verifier_addr]}: valid={verdict.valid}, "
        f"{len(verdict.failures)} failing positions, reason={verdict.reason}"
    )
    court.post_verdict(cheat.job_id, verdict.valid, sender=verifier)

    log("== time passes: challenge and appeal windows close; a keeper settles and finalizes")
    chain.pending_timestamp += max(market.challenge_window(), court.appeal_window()) + 1
    chain.mine()
    court.settle(cheat.job_id, cheat.as_struct(), sender=keeper)
    market.finalize_many([j.job_id for j in jobs], [j.as_struct() for j in jobs], sender=keeper)
    for account in (node_a, node_b, alice):
        if market.claimable(account) > 0:
            market.withdraw(sender=account)

    statuses = [JobStatus(market.job_status(j.job_id)) for j in jobs]
    cheat_status = JobStatus(market.job_status(cheat.job_id))
    after = balances()
    log("== balances after (tokens)")
    for who, b in after.items():
        log(f"   {who:8s} {b}")
    log(f"   jobs: {[s.name for s in statuses]}; disputed job: {cheat_status.name}")
    return {
        "jobs": len(jobs),
        "finalized": sum(s == JobStatus.FINALIZED for s in statuses),
        "disputes": 1,
        "slashed": int(cheat_status == JobStatus.SLASHED),
    }


if __name__ == "__main__":
    sys.exit(main())
