"""The SDK's private path (`Client.submit(private=True)`) on ape's test chain: the input is
encrypted to the named node's registered key, the answer decrypted locally, a node with no
valid key refused, and a dispute hands the job key to the drawn verifier. The node's part is
played in-test with the real engine and its own encryption key (as tests/client does)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from verinfer import privacy as P
from verinfer.chain_errors import ClientError
from verinfer.client import Client
from verinfer.devnet import prepare_protocol
from verinfer.engines.base import Job
from verinfer.engines.hf import TransformersEngine
from verinfer.jobs import JobStatus
from verinfer.models.loader import load_model
from verinfer.models.tiny import tiny_model_path

PROMPT = "Private: our supplier in Lyon raised prices by 12 percent."


@pytest.fixture(scope="module")
def sdk(accounts: Any, project: Any, tmp_path_factory: Any) -> dict[str, Any]:
    dev = prepare_protocol(challenge_window=60, model="tiny")
    market = project.Market.at(dev["market"])
    keys = {}
    for address in dev["nodes"]:
        key = P.EncryptionKey.generate()
        market.update_node(key.pubkey, "http://node.invalid", sender=accounts[address])
        keys[address] = key
    return {"dev": dev, "market": market, "court": project.Court.at(dev["court"]), "keys": keys}


@pytest.fixture
def alice(sdk: dict[str, Any], tmp_path: Any, monkeypatch: Any) -> Client:
    monkeypatch.setenv("VERINFER_HOME", str(tmp_path))
    return Client(sdk["dev"]["market"], "test:1", from_block=sdk["dev"]["from_block"])


def _serve(sdk: dict[str, Any], accounts: Any, record: Any, node: str) -> list[int]:
    """The node's side: open the envelope, run the tiny model, publish the sealed answer."""
    market = sdk["market"]
    inner, job_key = P.node_open_input(record.input, sdk["keys"][node].secret)
    model = load_model(tiny_model_path(seed=0))
    (out,) = TransformersEngine(model).generate(
        [Job(model.model_id, record.sampling_params, input_data=inner)]
    )
    tokens, finish = list(out.token_ids), int(out.finish_reason)
    receipt = market.claim(record.job_id, record.as_struct(), sender=accounts[node])
    claimed = copy.deepcopy(record)
    claimed.apply_claimed(market.JobClaimed.from_receipt(receipt)[0])
    digest = P.private_result_digest(
        record.job_id, record.model_id, record.input, record.params, tokens, finish, job_key
    )
    market.publish(
        record.job_id,
        claimed.as_struct(),
        P.seal_output(tokens, job_key, record.job_id),
        len(tokens),
        finish,
        digest,
        sender=accounts[node],
    )
    return tokens


def test_sdk_private__encrypted_to_node__decrypted_locally__dispute_hands_key(
    sdk: dict[str, Any], alice: Client, accounts: Any, monkeypatch: Any, tmp_path: Any
) -> None:
    node, other = sdk["dev"]["nodes"]
    model = sdk["dev"]["model"]["model_id"]
    handle = alice.submit(model, prompt=PROMPT, max_tokens=8, node=node, private=True)
    record = handle.record
    assert record.input[0] == P.FORMAT_PRIVATE and PROMPT.encode() not in record.input
    assert record.submitted_at >= P.PRIVATE_FLAG and record.preferred_node == node
    job_key = alice.job_keys.get(handle.job_id)
    assert job_key is not None and oct(alice.job_keys.path.stat().st_mode)[-3:] == "600"
    tokens = _serve(sdk, accounts, record, node)
    result = handle.wait(timeout=20, poll=0.05)
    assert result.held and result.digest_ok and result.token_ids == tokens
    assert result.text is not None and len(tokens) > 0
    # another client (another machine: no key) sees the job but cannot read it
    monkeypatch.setenv("VERINFER_HOME", str(tmp_path / "bob"))
    bob = Client(sdk["dev"]["market"], "test:2", from_block=sdk["dev"]["from_block"])
    seen = bob.job(handle.job_id).result()
    assert seen.token_ids == [] and not seen.held
    # a third party cannot dispute it; the client's dispute hands the key to the verifier
    with pytest.raises(ClientError, match="only the client disputes a private job"):
        bob.dispute(handle.job_id)
    info = alice.dispute(handle)
    assert info["verifier"] == other and info["key_handed"] is True
    (handed,) = list(sdk["court"].KeyHanded.range(info["seed_block"], alice_height(alice) + 1))
    assert handed.holder == alice.address and list(handed.recipients) == [other]
    opened_key, inner = P.check_handed_key(
        bytes(handed.wrapped), 0, sdk["keys"][other].secret, record.input
    )
    assert opened_key == job_key and inner == P.open_input(record.input, job_key)
    assert sdk["market"].job_status(handle.job_id) == JobStatus.VERIFYING


def alice_height(client: Client) -> int:
    from ape import chain

    return int(chain.blocks.height)


def test_sdk_private__node_without_valid_key__refused(
    sdk: dict[str, Any], alice: Client, accounts: Any
) -> None:
    node, _ = sdk["dev"]["nodes"]
    model = sdk["dev"]["model"]["model_id"]
    sdk["market"].update_node(b"\x04" * 64, "http://node.invalid", sender=accounts[node])
    try:
        before = alice.balances()
        with pytest.raises(ClientError, match=f"^node {node} has no valid encryption key regist"):
            alice.submit(model, prompt=PROMPT, max_tokens=8, node=node, private=True)
        assert alice.balances() == before  # nothing sent
        # with no node named, the one with a valid key is chosen
        handle = alice.submit(model, prompt=PROMPT, max_tokens=8, private=True)
        assert handle.record.preferred_node == sdk["dev"]["nodes"][1]
    finally:
        sdk["market"].update_node(
            sdk["keys"][node].pubkey, "http://node.invalid", sender=accounts[node]
        )


def test_sdk_private__no_node_named__the_node_with_the_better_record(
    sdk: dict[str, Any], alice: Client, chain: Any
) -> None:
    """Without ``node=``, a private job goes to the eligible node with a valid key that its
    track record ranks first: a node that let a job it was offered lapse comes after one
    that has not failed."""
    first, second = sdk["dev"]["nodes"]
    model = sdk["dev"]["model"]["model_id"]

    def counts() -> tuple[int, int, int]:
        """The first node's (offered, missed, claimed) on record (the module's earlier jobs
        are there too when ape's isolation could not undo them)."""
        found = [r for r in alice.indexer().records(model) if r.node.lower() == first.lower()]
        return (found[0].offered, found[0].missed, found[0].claimed) if found else (0, 0, 0)

    before = counts()
    lapsed = alice.submit(model, prompt="anyone there?", max_tokens=4, node=first, claim_window=5)
    chain.mine(timestamp=lapsed.record.claim_deadline + 1)
    assert alice.private_node(model) == second
    offered, missed, claimed = counts()
    assert (offered, missed, claimed) == (before[0] + 1, before[1] + 1, before[2])
