"""Failover on a real Anvil with no node processes. Expiry: a pinned node claims the job by
hand and never publishes; the client expires it at the result deadline and, the pin leaving
no other node, the job ends refunded (escrow back plus the node's penalty), paid once.
Cancel: nobody claims; the client cancels at the claim deadline and only then submits again,
to the next node; after the last attempt the job ends refunded, paid nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from verinfer.node.localnet import CHEATER, CLIENT_B, Net
from verinfer.routing import RoutePolicy

from tests.routing.chainplay import transact

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def client(net: Net) -> Iterator[Any]:
    from ape import networks
    from verinfer.client import Client

    with networks.parse_network_choice(f"ethereum:local:{net.rpc_url}"):
        yield Client(net.dev.market.address, f"test:{CLIENT_B}")


def test_pinned_node_claims_and_never_publishes__expired_refunded_not_resubmitted(
    net: Net, client: Any, tmp_dir: Path
) -> None:
    flaky = net.addr(CHEATER)
    said: list[str] = []
    router = client.router(attempts=3, on_event=said.append, db_path=tmp_dir / "fo.sqlite")
    before = client.balances()
    (model,) = client.models()
    request = {"model": model.model_id, "prompt": "hello", "max_tokens": 4}
    job = router.start({**request, "claim_window": 2, "result_window": 4}, RoutePolicy(pin=flaky))
    record = job.handle.record
    assert job.attempts[0].node == flaky and record.preferred_node == flaky
    transact(net.w3, net.dev.market.functions.claim(job.handle.job_id, record.as_struct()), flaky)
    router.run([job], timeout=60)
    assert not job.served and len(job.attempts) == 1  # the pin leaves no other node
    (attempt,) = job.attempts
    assert attempt.outcome == "expired"
    (expired,) = net.events("JobExpired", job_id=job.handle.job_id)
    assert expired["args"]["node"] == flaky
    penalty = int(expired["args"]["penalty"])
    assert penalty > 0
    assert attempt.refund == expired["args"]["refund"] == attempt.escrow + penalty
    assert any("published nothing by its deadline: expired" in line for line in said)
    after = client.balances()
    gained = (after.prepaid + after.claimable) - (before.prepaid + before.claimable)
    assert gained == penalty  # the escrow came back whole, plus the node's penalty
    router.sync(force=True)
    (rec,) = [r for r in router.indexer.records(model.model_id) if r.node == flaky]
    assert (rec.claimed, rec.published, rec.expired, rec.offered) == (1, 0, 1, 1)


def test_nobody_claims__cancelled_at_the_deadline__resubmitted_to_the_next_node__paid_once(
    net: Net, client: Any, tmp_dir: Path
) -> None:
    said: list[str] = []
    router = client.router(attempts=2, on_event=said.append, db_path=tmp_dir / "fo2.sqlite")
    (model,) = client.models()
    before = client.balances()
    request = {"model": model.model_id, "prompt": "anyone?", "max_tokens": 4}
    job = router.start({**request, "claim_window": 2, "result_window": 4}, RoutePolicy())
    first = job.attempts[0]
    router.run([job], timeout=60)  # no node process runs here: nobody claims
    assert not job.served
    assert [a.outcome for a in job.attempts] == ["cancelled", "cancelled"]
    second = job.attempts[1]
    assert second.node != first.node  # the next node, not the one that let it lapse
    for attempt in job.attempts:
        (cancelled,) = net.events("JobCancelled", job_id=attempt.job_id)
        assert attempt.refund == cancelled["args"]["refund"] == attempt.escrow > 0
        (submitted,) = net.events("JobSubmitted", job_id=attempt.job_id)
        assert submitted["args"]["preferred_node"] == attempt.node
    # the second escrow was taken after the first came back: never two live at once
    first_cancel = net.events("JobCancelled", job_id=first.job_id)[0]["blockNumber"]
    assert net.events("JobSubmitted", job_id=second.job_id)[0]["blockNumber"] > first_cancel
    assert f"job {second.job_id}: resubmitted to node {second.node} (attempt 2 of 2)" in said
    assert sum("nobody claimed it by its deadline: cancelled" in line for line in said) == 2
    after = client.balances()
    assert after.prepaid == before.prepaid  # both escrows back in the prepaid balance
