"""`verinfer job submit --private` and `job show` on a `dev up` chain (the CLI tests' own
fixtures): the prompt goes on chain sealed to the node's registered key, `job show` decrypts
for the machine that holds the job key and not for another, and a node without a valid key is
refused with one line and exit code 1 before anything is paid."""

from __future__ import annotations

import copy
from typing import Any

from verinfer import privacy as P
from verinfer.jobs import JobRecord

from tests.cli.conftest import Cli, cli, dev_home, state  # noqa: F401  (module fixtures)
from tests.cli.test_chain_cli import on_dev_chain, tiny

NODE_KEY = P.EncryptionKey.generate()
TOKENS = [7, 8, 9]


def test_job_submit_private__show_decrypts__other_machine_cannot(cli, state, tmp_path):  # noqa: F811
    node, other = state["nodes"]

    def set_keys(market: Any, accts: Any) -> None:
        by = {a.address: a for a in accts}
        market.update_node(NODE_KEY.pubkey, "http://n", sender=by[node])
        market.update_node(b"\x04" * 64, "http://n", sender=by[other])

    on_dev_chain(state, set_keys)
    refused = cli.fails("job", "submit", tiny(state), "secret", "--private", "--node", other)
    assert refused == (
        f"verinfer: node {other} has no valid encryption key registered: "
        "cannot send it a private job"
    )
    sub = cli.json(
        "job", "submit", tiny(state), "Private: the Lyon supplier", "--max-tokens", "4", "--private"
    )
    job_id = sub["job_id"]
    assert sub["private"] is True and sub["node"] == node  # the only node with a valid key

    def serve(market: Any, accts: Any) -> bytes:
        (log,) = [lg for lg in market.JobSubmitted.range(0, 10_000) if lg.job_id == job_id]
        record = JobRecord.from_submitted(log)
        assert b"Lyon" not in record.input and record.submitted_at >= P.PRIVATE_FLAG
        inner, job_key = P.node_open_input(record.input, NODE_KEY.secret)
        assert inner == b"\x00Private: the Lyon supplier"
        by = {a.address: a for a in accts}
        receipt = market.claim(job_id, record.as_struct(), sender=by[node])
        claimed = copy.deepcopy(record)
        claimed.apply_claimed(market.JobClaimed.from_receipt(receipt)[0])
        digest = P.private_result_digest(
            job_id, record.model_id, record.input, record.params, TOKENS, 1, job_key
        )
        sealed = P.seal_output(TOKENS, job_key, job_id)
        market.publish(job_id, claimed.as_struct(), sealed, 3, 1, digest, sender=by[node])
        return sealed

    sealed = on_dev_chain(state, serve)
    shown = cli.json("job", "show", str(job_id))
    assert shown["token_ids"] == TOKENS and shown["digest_ok"] is True and shown["held"]
    # another machine (another VERINFER_HOME, same chain) sees only the ciphertext
    elsewhere = Cli(tmp_path)
    (tmp_path / "dev.json").write_text((cli.home / "dev.json").read_text())
    seen = elsewhere.json("job", "show", str(job_id))
    assert seen["token_ids"] == [] and seen["held"] is False and len(sealed) == 3 * 4 + 16
