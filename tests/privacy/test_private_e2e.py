"""Private jobs end to end on Anvil with real `verinfer node run` processes (Celery workers,
Redis, the tiny model): served and decrypted, nothing readable on chain, disputed (invalid:
a cheating node is slashed; valid: the dispute fails), a framing attempt with a wrong key,
and an audit whose node withholds the key (slashed). One module-scoped net and one set of
node processes for all of it, in story order."""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak
from verinfer import privacy as P
from verinfer.digest import pack_tokens
from verinfer.engines.base import Job
from verinfer.engines.hf import TransformersEngine
from verinfer.inputs import encode_text_input
from verinfer.jobs import JobStatus
from verinfer.models.loader import load_model
from verinfer.models.tiny import tiny_model_path
from verinfer.node.devchain import transact
from verinfer.node.localnet import (
    CHEATER,
    CLIENT_A,
    CLIENT_B,
    CLIENT_C,
    NODE_A,
    NODE_B,
    OWNER,
    PASSPHRASE,
    Net,
    NodeProcess,
    local_net,
    wait_for,
)

pytestmark = pytest.mark.timeout(400)

PROMPT = "Confidential: ACME Corp Q3 revenue fell 17% after the Zeta merger; draft a memo."
SCANNED: list[tuple[bytes, list[int]]] = []  # (inner input, output tokens) of every private job


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    tmp = Path(tempfile.mkdtemp(prefix="verinfer-private-"))
    try:
        with local_net(tmp, chain="anvil") as dev_net:
            yield dev_net
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def enc_keys(net: Net) -> dict[int, P.EncryptionKey]:
    """An encryption key per node, encrypted at rest beside its transaction key and
    registered on chain with update_node."""
    keys = {}
    for index, name in ((NODE_A, "node-a"), (NODE_B, "node-b"), (CHEATER, "cheater")):
        key = P.EncryptionKey.generate()
        P.save_encryption_key(
            key, P.encryption_key_alias(name), PASSPHRASE, net.tmp / "keystore", iterations=2**4
        )
        fn = net.dev.market.functions.update_node(key.pubkey, "http://node.invalid")
        transact(net.w3, fn, net.addr(index))
        keys[index] = key
    return keys


@pytest.fixture(scope="module")
def nodes(net: Net, enc_keys: dict[int, P.EncryptionKey]) -> Iterator[dict[int, NodeProcess]]:
    procs = {
        NODE_A: net.node(NODE_A, "node-a", audits="false").start(),
        NODE_B: net.node(NODE_B, "node-b", audits="false").start(),
        CHEATER: net.node(CHEATER, "cheater", cheat=True, audits="false").start(),
    }
    for p in procs.values():
        p.wait_ready()
    yield procs
    net.stop_nodes()


def _submit_private(net: Net, client: int, node: int, text: str) -> tuple[int, bytes, bytes]:
    pubkey = bytes(net.dev.market.functions.node_info(net.addr(node)).call()[6])
    inner = encode_text_input(text)
    envelope, job_key = P.seal_input(inner, pubkey)
    job = net.submit(client, "", input_bytes=envelope, preferred=net.addr(node))
    return job, job_key, inner


def _published(net: Net, job: int, nodes: dict[int, NodeProcess]) -> None:
    wait_for(
        lambda: net.status(job) == JobStatus.PUBLISHED,
        120,
        f"job {job} published",
        context=lambda: "\n".join(n.log()[-5000:] for n in nodes.values()),
    )


def _tokens(net: Net, inner: bytes, job: int, seed: int = 0) -> list[int]:
    model = load_model(tiny_model_path(seed=seed))
    record = net.record(job)
    (out,) = TransformersEngine(model).generate(
        [Job(model.model_id, record.sampling_params, input_data=inner)]
    )
    return list(out.token_ids)


def _decrypt(net: Net, job: int, job_key: bytes) -> list[int]:
    record = net.record(job)
    tokens = [
        int.from_bytes(b[i : i + 4], "big")
        for b in [P.open_output(record.output, job_key, job)]
        for i in range(0, len(b), 4)
    ]
    digest = P.private_result_digest(
        job, record.model_id, record.input, record.params, tokens, record.finish_reason, job_key
    )
    assert digest == record.result_digest  # the salted commitment binds the plaintext
    return tokens


def _dispute_and_hand(net: Net, job: int, client: int, job_key: bytes) -> str:
    """The client disputes its private job and hands ``job_key`` to the drawn verifier."""
    court = net.dev.court.functions
    record = net.record(job)
    transact(net.w3, court.dispute(job, record.as_struct()), net.addr(client))
    net.dev.mine(blocks=3)  # the nodes' keepers draw
    wait_for(lambda: net.events("VerifierAssigned", "court", job_id=job), 60, "the draw")
    (assigned,) = net.events("VerifierAssigned", "court", job_id=job)
    verifier = assigned["args"]["verifier"]
    pub = bytes(net.dev.market.functions.node_info(verifier).call()[6])
    transact(net.w3, court.hand_key(job, P.wrap_for(job_key, [pub])), net.addr(client))
    return str(verifier)


def _verdict(net: Net, job: int) -> bool:
    wait_for(lambda: net.events("VerdictPosted", "court", job_id=job), 150, "the verdict")
    (verdict,) = net.events("VerdictPosted", "court", job_id=job)
    return bool(verdict["args"]["valid"])


def _settle(net: Net, job: int, status: JobStatus) -> None:
    net.dev.mine(seconds=4_000)
    wait_for(lambda: net.status(job) == status, 60, f"the keeper's settle ({status.name})")


def test_private_job__served_decrypted__cheater_disputed_and_slashed(
    net: Net, enc_keys: dict[int, P.EncryptionKey], nodes: dict[int, NodeProcess]
) -> None:
    # bad input to node A: sealed to another node's key, and a truncated envelope
    wrong_node = P.seal_input(encode_text_input("not for A"), enc_keys[NODE_B].pubkey)[0]
    truncated = P.seal_input(encode_text_input("cut short"), enc_keys[NODE_A].pubkey)[0][:80]
    skipped = [
        net.submit(CLIENT_C, "", input_bytes=data, preferred=net.addr(NODE_A))
        for data in (wrong_node, truncated)
    ]
    # an honest private job: node A decrypts, runs and seals the answer; the client opens it
    job, job_key, inner = _submit_private(net, CLIENT_A, NODE_A, PROMPT)
    # a private job the cheater serves with other weights
    bad, bad_key, bad_inner = _submit_private(net, CLIENT_B, CHEATER, PROMPT + " (2)")
    _published(net, job, nodes)
    _published(net, bad, nodes)
    tokens = _decrypt(net, job, job_key)
    assert tokens == _tokens(net, inner, job)
    assert len(tokens) == net.record(job).output_tokens > 0
    bad_tokens = _decrypt(net, bad, bad_key)
    assert bad_tokens != _tokens(net, bad_inner, bad)
    SCANNED.extend([(inner, tokens), (bad_inner, bad_tokens)])
    # third parties cannot dispute it
    court = net.dev.court.functions
    with pytest.raises(Exception, match="only the client disputes a private job"):
        court.dispute(bad, net.record(bad).as_struct()).call({"from": net.addr(CLIENT_C)})
    # the client disputes the cheater's job and hands the key: an honest verifier finds fraud
    verifier = _dispute_and_hand(net, bad, CLIENT_B, bad_key)
    assert verifier in (net.addr(NODE_A), net.addr(NODE_B))
    assert _verdict(net, bad) is False
    _settle(net, bad, JobStatus.SLASHED)
    (slash,) = net.events("NodeSlashed", node=net.addr(CHEATER))
    assert slash["args"]["whole_stake"] is True
    honest = nodes[NODE_A] if verifier == net.addr(NODE_A) else nodes[NODE_B]
    assert f"verdict job={bad} valid=False kind=verdict" in honest.log()
    # the bad inputs: one skip line each at node A, never claimed, escrow back through cancel
    log_a = nodes[NODE_A].log()
    assert log_a.count(f"skip job={skipped[0]} reason=") == 1
    assert f"skip job={skipped[0]} reason=bad input: private input cannot be opened: key " in log_a
    assert f"skip job={skipped[1]} reason=bad input: private input cannot be opened: " in log_a
    assert "truncated envelope" in log_a
    market = net.dev.market.functions
    for job_id in skipped:  # the client cancels (the nodes' keepers may have, after the deadline)
        assert net.events("JobClaimed", job_id=job_id) == []
        if net.status(job_id) == JobStatus.OPEN:
            fn = market.cancel(job_id, net.record(job_id).as_struct())
            transact(net.w3, fn, net.addr(CLIENT_C))
        (cancelled,) = net.events("JobCancelled", job_id=job_id)
        assert cancelled["args"]["refund"] == net.record(job_id).max_payment
        assert net.status(job_id) == JobStatus.CANCELLED


def test_private_job__disputed_valid__framing_with_wrong_key_fails(
    net: Net, enc_keys: dict[int, P.EncryptionKey], nodes: dict[int, NodeProcess]
) -> None:
    job, job_key, inner = _submit_private(net, CLIENT_C, NODE_A, "What is the capital of Peru?")
    _published(net, job, nodes)
    SCANNED.append((inner, _decrypt(net, job, job_key)))
    balance = net.dev.market.functions.balance_of(net.addr(CLIENT_C)).call()
    # the client tries to frame node A: it hands the verifier a wrong key. The verifier checks
    # it against the commitment fixed at submission and refuses it; node A hands the real one.
    verifier = _dispute_and_hand(
        net, job, CLIENT_C, P.seal_input(inner, enc_keys[NODE_B].pubkey)[1]
    )
    assert verifier == net.addr(NODE_B)  # the cheater is slashed, node A is the accused
    assert _verdict(net, job) is True
    handed = net.events("KeyHanded", "court", job_id=job)
    assert {h["args"]["holder"] for h in handed} == {net.addr(CLIENT_C), net.addr(NODE_A)}
    _settle(net, job, JobStatus.FINALIZED)
    after = net.dev.market.functions.balance_of(net.addr(CLIENT_C)).call()
    assert after < balance - 99 * 10**18  # the dispute bond is lost
    # what the client handed opens for the verifier but fails the commitment: refused
    (mine,) = [h for h in handed if h["args"]["holder"] == net.addr(CLIENT_C)]
    with pytest.raises(P.PrivacyError, match="does not match the envelope's commitment"):
        P.check_handed_key(
            bytes(mine["args"]["wrapped"]), 0, enc_keys[NODE_B].secret, net.record(job).input
        )
    assert f"verdict job={job} valid=True kind=verdict" in nodes[NODE_B].log()


def test_gateway__private_request__sealed_on_chain__answer_decrypted(
    net: Net, enc_keys: dict[int, P.EncryptionKey], nodes: dict[int, NodeProcess]
) -> None:
    """The OpenAI-compatible gateway with `"private": true` in a request: the prompt goes
    on chain sealed to the chosen node's key; the gateway decrypts the answer."""
    import httpx

    from tests.gateway.conftest import API_KEY, start_gateway, stop_gateway

    gw = start_gateway(net, CLIENT_B, "gateway-private")
    try:
        text = "Private: list three risks of the Zeta merger."
        body = {"model": "0x" + net.model_id.hex(), "prompt": text, "max_tokens": 6}
        r = httpx.post(
            gw.base_url + "/completions",
            json={**body, "private": True, "seed": 5},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        ext = r.json()["verinfer"]
        job = int(ext["job_id"])
        record = net.record(job)
        assert record.input[0] == P.FORMAT_PRIVATE and text.encode() not in record.input
        assert record.preferred_node == ext["node"] and ext["digest_ok"] is True
        assert r.json()["usage"]["completion_tokens"] == record.output_tokens > 0
        key = enc_keys[NODE_A if ext["node"] == net.addr(NODE_A) else NODE_B]
        inner, job_key = P.node_open_input(record.input, key.secret)
        assert inner == encode_text_input(text)
        SCANNED.append((inner, _decrypt(net, job, job_key)))
    finally:
        assert stop_gateway(gw) == 0


def test_private_job__audit__node_withholds_key__slashed(
    net: Net, enc_keys: dict[int, P.EncryptionKey], nodes: dict[int, NodeProcess]
) -> None:
    court = net.dev.court.functions
    transact(net.w3, court.set_param(10, 10_000), net.addr(OWNER))  # audit every job
    job, job_key, inner = _submit_private(net, CLIENT_A, NODE_A, PROMPT + " (audit)")
    _published(net, job, nodes)
    SCANNED.append((inner, _decrypt(net, job, job_key)))
    assert nodes[NODE_A].stop() == 0  # node A goes dark: it will not hand the key
    net.dev.mine(blocks=3)
    record = net.record(job)
    transact(net.w3, court.start_audit(job, record.as_struct()), net.addr(CLIENT_C))
    net.dev.mine(blocks=3)
    wait_for(lambda: net.events("VerifierAssigned", "court", job_id=job), 60, "the draw")
    wait_for(lambda: court.dispute_info(job).call()[1] == 2, 60, "node B accepts")
    net.dev.mine(seconds=700)  # past the hand deadline (one accept window)
    assert _verdict(net, job) is False
    assert not net.events("KeyHanded", "court", job_id=job)
    _settle(net, job, JobStatus.SLASHED)
    (slash,) = net.events("NodeSlashed", node=net.addr(NODE_A))
    assert slash["args"]["whole_stake"] is True
    with pytest.raises(Exception, match=r"court: key withheld|court: no verdict to appeal"):
        court.appeal(job).call({"from": net.addr(NODE_A)})


def _storage_words(net: Net) -> list[bytes]:
    """Every storage value of the market and the court (anvil_dumpState)."""
    raw = net.w3.provider.make_request("anvil_dumpState", [])["result"]  # type: ignore[arg-type]
    state = json.loads(gzip.decompress(bytes.fromhex(raw.removeprefix("0x"))))
    words = []
    for address, account in state["accounts"].items():
        if address.lower() in (net.dev.market.address.lower(), net.dev.court.address.lower()):
            words += [
                bytes.fromhex(v.removeprefix("0x").rjust(64, "0"))
                for v in account["storage"].values()
            ]
    return words


def test_nothing_readable_on_chain(net: Net, nodes: dict[int, NodeProcess]) -> None:
    """Every transaction's calldata, every log and the protocol's storage, searched for
    fragments of each private job's plaintext and of its tokens packed as the digest packs
    them (and their hashes): none found."""
    assert len(SCANNED) == 5
    head = net.w3.eth.block_number
    blobs: list[bytes] = []
    for n in range(head + 1):
        block = net.w3.eth.get_block(n, full_transactions=True)
        blobs += [bytes(tx["input"]) for tx in block["transactions"]]
    for entry in net.w3.eth.get_logs({"fromBlock": 0, "toBlock": head}):
        blobs.append(bytes(entry["data"]) + b"".join(bytes(t) for t in entry["topics"]))
    blobs += _storage_words(net)
    haystack = b"\n".join(blobs)
    assert len(haystack) > 10_000
    for inner, tokens in SCANNED:
        text = inner[1:]
        fragments = [text[i : i + 8] for i in range(0, len(text) - 8, 4)]
        packed = pack_tokens(tokens)
        fragments += [packed[i : i + 12] for i in range(0, max(1, len(packed) - 12), 4)]
        fragments += [keccak(inner), keccak(packed), keccak(text)]
        # (a fragment of mostly zero bytes, small token ids, is in every ABI word)
        found = [f for f in fragments if sum(b != 0 for b in f) >= 4 and f in haystack]
        assert not found, f"plaintext fragments on chain: {found[:3]}"
    logs = "".join(n.log() for n in nodes.values())
    assert "Traceback" not in logs, logs[logs.find("Traceback") - 1500 :][:4000]


def test_node_keygen__key_saved_encrypted__pubkey_registered__rotation_needs_force(
    net: Net,
) -> None:
    """`verinfer node keygen` for a new node (register_node), then a rotation (update_node);
    refused without --force, and with a wrong passphrase, leaving the key as it was."""
    from click.testing import CliRunner
    from verinfer.cli import main
    from verinfer.node.private import load_key, pubkey_of

    index = 9  # a dev key no other test uses: not registered yet
    env = net.node_env(index, "keygen-node")
    keystore = Path(env["VERINFER_KEYSTORE_DIR"])
    key_file = keystore / "keygen-node.enc.json"

    def keygen(*args: str, **extra: str) -> Any:
        runner = CliRunner(mix_stderr=False)
        return runner.invoke(main, ["node", "keygen", *args], env={**env, **extra})

    first = keygen()
    assert first.exit_code == 0, first.stderr
    out = json.loads(first.stdout)
    key = load_key("keygen-node", PASSPHRASE, keystore)
    assert key is not None and out["pubkey"] == "0x" + key.pubkey.hex()
    assert out["node"] == net.addr(index) and out["key_file"] == str(key_file)
    protocol = type("P", (), {"market": net.dev.market})()
    assert pubkey_of(protocol, net.addr(index)) == key.pubkey
    (registered,) = net.events("NodeRegistered", node=net.addr(index))
    assert registered["args"]["pubkey"] == key.pubkey
    assert key.secret.hex() not in key_file.read_text()  # encrypted at rest

    again = keygen()
    assert again.exit_code == 1
    assert again.stderr.strip().endswith("--force replaces it (rotation, docs/privacy.md)")
    wrong = keygen("--force", VERINFER_PASSPHRASE="not the passphrase")
    assert wrong.exit_code == 1 and "cannot decrypt" in wrong.stderr
    assert load_key("keygen-node", PASSPHRASE, keystore) == key  # untouched

    rotated = keygen("--force")
    assert rotated.exit_code == 0, rotated.stderr
    new = load_key("keygen-node", PASSPHRASE, keystore)
    assert new is not None and new != key
    assert pubkey_of(protocol, net.addr(index)) == new.pubkey
    (updated,) = net.events("NodeUpdated", node=net.addr(index))
    assert updated["args"]["pubkey"] == new.pubkey
    assert not (keystore / "keygen-node.enc.new.json").exists()
