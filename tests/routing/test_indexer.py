"""The track-record indexer: a scripted history on a real Anvil, recorded and replayed
(counts, latencies, range split, resume, a reorg that removes a claim), and live on the chain
(a real reorg by snapshot and revert)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_utils import event_abi_to_log_topic
from verinfer.indexer import KEPT, Indexer, RangeRefused, open_indexer
from verinfer.node.contracts import Protocol, connect
from verinfer.node.localnet import CHEATER, CLIENT_A, KEEPER, NODE_A, NODE_B, PRICE, Net

from tests.routing.chainplay import Play, RecordedSource, record_chain

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def history(net: Net, tmp_dir: Path) -> dict[str, Any]:
    """Five jobs with exact times, then the chain's logs recorded to a file:
    1 open, A claims at +2 s, publishes at +5 s, finalized after the window;
    2 preferred B, B claims at +4 s, publishes at +20 s;
    3 open, C claims at +1 s, never publishes: expired;
    4 preferred C, nobody claims: cancelled (C missed it);
    5 open, A claims at +3 s, publishes at +7 s."""
    play = Play(net)
    a, b, c = net.addr(NODE_A), net.addr(NODE_B), net.addr(CHEATER)
    client, keeper = net.addr(CLIENT_A), net.addr(KEEPER)
    j1 = play.submit(client, 0)
    play.claim(j1, a, 2)
    play.publish(j1, 5)
    j2 = play.submit(client, 10, preferred=b)
    play.claim(j2, b, 14)
    play.publish(j2, 30)
    j3 = play.submit(client, 40, claim_in=10)
    play.claim(j3, c, 41)
    j4 = play.submit(client, 50, preferred=c, claim_in=5)
    play.cancel(j4, 60)
    j5 = play.submit(client, 70)
    play.claim(j5, a, 73)
    play.publish(j5, 77)
    play.expire(j3, 200, keeper)  # result deadline of job 3: 40 + 10 + 60
    play.finalize(j1, 300, keeper)  # challenge window 60 s after +5
    net.dev.mine(blocks=2)
    path = tmp_dir / "market_logs.json"
    record_chain(net.w3, [net.dev.market.address], path)
    return {"path": path, "a": a, "b": b, "c": c, "jobs": [j1, j2, j3, j4, j5]}


def _protocol(net: Net) -> Protocol:
    return Protocol(connect(net.rpc_url), net.dev.market.address, net.dev.court.address)


def _topics(net: Net) -> dict[str, bytes]:
    return {
        item["name"]: bytes(event_abi_to_log_topic(item))  # type: ignore[arg-type]
        for item in net.dev.market.abi
        if item["type"] == "event"
    }


def _by_node(indexer: Indexer, net: Net) -> dict[str, Any]:
    return {r.node: r for r in indexer.records(net.model_id)}


def test_records__recorded_history__counts_latencies_price_stake(
    net: Net, history: dict[str, Any], tmp_dir: Path
) -> None:
    source = RecordedSource(history["path"])
    indexer = Indexer(tmp_dir / "counts.sqlite", _protocol(net), source, confirmations=0)
    added = indexer.sync()
    kept = {_topics(net)[name] for name in KEPT}
    assert added == sum(1 for e in source.logs if bytes(e["topics"][0]) in kept)
    recs = _by_node(indexer, net)
    a, b, c = recs[history["a"]], recs[history["b"]], recs[history["c"]]
    assert (a.claimed, a.published, a.finalized, a.expired) == (2, 2, 1, 0)
    assert (a.claim_p50_s, a.publish_p50_s) == (2.5, 6.0)
    assert (b.offered, b.missed, b.claimed, b.published) == (1, 0, 1, 1)
    assert (b.claim_p50_s, b.publish_p50_s) == (4.0, 20.0)
    assert (c.claimed, c.published, c.expired, c.offered, c.missed) == (1, 0, 1, 1, 1)
    assert [o for _, o in c.outcomes] == [0.0, 0.0]  # the expired claim and the missed offer
    assert all(r.price_per_token == PRICE and r.serving for r in (a, b, c))
    assert a.stake == 2_000 * 10**18 and c.stake < a.stake  # the expiry penalty came off C
    assert a.last_seen > b.last_seen > 0
    assert indexer.cursor == source.tip + 1


def test_sync__endpoint_refuses_large_ranges__split_until_it_answers(
    net: Net, history: dict[str, Any], tmp_dir: Path
) -> None:
    whole = Indexer(tmp_dir / "whole.sqlite", _protocol(net), RecordedSource(history["path"]), 0)
    whole.sync()
    source = RecordedSource(history["path"], refuse_over=8)
    indexer = Indexer(tmp_dir / "split.sqlite", _protocol(net), source, 0, max_range=1_000)
    indexer.sync()
    refused = [r for r in source.ranges if r[1] - r[0] + 1 > 8]
    assert refused and refused[0] == (0, source.tip)
    answered = sorted(r for r in source.ranges if r[1] - r[0] + 1 <= 8)
    assert answered[0][0] == 0 and answered[-1][1] == source.tip  # the split covers it all
    assert indexer.events() == whole.events()


def test_sync__single_block_refused__error_raised_cursor_kept(
    net: Net, history: dict[str, Any], tmp_dir: Path
) -> None:
    source = RecordedSource(history["path"], refuse_over=0)
    indexer = Indexer(tmp_dir / "refused.sqlite", _protocol(net), source, 0)
    with pytest.raises(RangeRefused, match="query exceeds max block range"):
        indexer.sync()
    assert indexer.cursor == 0 and indexer.events() == []


def test_sync__restarted__resumes_at_its_cursor_reads_nothing_twice(
    net: Net, history: dict[str, Any], tmp_dir: Path
) -> None:
    db = tmp_dir / "resume.sqlite"
    source = RecordedSource(history["path"])
    middle = source.tip // 2
    source.tip = middle  # the chain as it was halfway
    first = Indexer(db, _protocol(net), source, confirmations=0)
    first.sync()
    first.close()
    source.tip = RecordedSource(history["path"]).tip
    source.ranges.clear()
    second = Indexer(db, _protocol(net), source, confirmations=0)
    assert second.cursor == middle + 1
    second.sync()
    assert source.ranges == [(middle + 1, source.tip)]
    whole = Indexer(
        tmp_dir / "resume-whole.sqlite", _protocol(net), RecordedSource(history["path"]), 0
    )
    whole.sync()
    assert second.events() == whole.events()


def test_sync__reorg_removes_a_claim__rolled_back_and_read_again(
    net: Net, history: dict[str, Any], tmp_dir: Path
) -> None:
    source = RecordedSource(history["path"])
    protocol = _protocol(net)
    indexer = Indexer(tmp_dir / "reorg.sqlite", protocol, source, confirmations=0)
    indexer.sync()
    assert _by_node(indexer, net)[history["a"]].claimed == 2
    j5 = history["jobs"][4]
    (claim_block,) = [
        b for b, _, e, a in indexer.events() if e == "JobClaimed" and a["job_id"] == j5
    ]
    source.fork_at(claim_block, "JobClaimed", _topics(net))
    indexer.sync()
    a = _by_node(indexer, net)[history["a"]]
    assert a.claimed == 1  # the claim of job 5 is gone with its block
    assert not [e for e in indexer.events() if e[2] == "JobClaimed" and e[3]["job_id"] == j5]
    stored = dict(indexer.db.execute("SELECT number, hash FROM blocks").fetchall())
    assert stored[source.tip] == "0x" + source.block_data[source.tip][0].hex()


def test_live_chain__reorg_past_confirmations__index_follows_the_new_chain(
    net: Net, history: dict[str, Any], tmp_dir: Path
) -> None:
    indexer = open_indexer(net.rpc_url, net.dev.market.address, tmp_dir / "live.sqlite", 2)
    indexer.sync()
    before = len(indexer.events())
    snapshot = net.w3.provider.make_request("evm_snapshot", [])["result"]
    play = Play(net)
    gone = play.submit(net.addr(CLIENT_A), 0)
    play.claim(gone, net.addr(NODE_A), 1)
    net.dev.mine(blocks=3)
    indexer.sync()
    assert len(indexer.events()) == before + 2
    net.w3.provider.make_request("evm_revert", [snapshot])
    play = Play(net)
    kept = play.submit(net.addr(CLIENT_A), 0)
    play.claim(kept, net.addr(NODE_B), 1)
    net.dev.mine(blocks=4)
    indexer.sync()
    assert kept == gone
    claims = [a for _, _, e, a in indexer.events() if e == "JobClaimed" and a["job_id"] == kept]
    assert [c["node"] for c in claims] == [net.addr(NODE_B)]
    assert len(indexer.events()) == before + 2


def test_private_job__latencies_from_its_time_not_its_flag() -> None:
    """A private job's submitted_at carries the market's flag in its top bit (docs/protocol.md
    §8): its claim and publish latencies are measured from the time without the flag."""
    from verinfer.indexer import NodeRecord
    from verinfer.jobs import PRIVATE_FLAG, submitted_time

    node, model = "0x" + "11" * 20, "0x" + "22" * 32
    record = NodeRecord(node, model)
    job: dict[str, Any] = {"model_id": model, "submitted_at": PRIVATE_FLAG | 1_000}
    job.update(claimed_by=None, published=False)
    assert submitted_time(job["submitted_at"]) == 1_000
    Indexer._apply_job("JobClaimed", {"node": node}, 1_004, job, lambda *_: record)
    Indexer._apply_job("ResultPublished", {"published_at": 1_010}, 1_010, job, lambda *_: record)
    assert job["claim_lat"] == 4
    assert (record.claimed, record.published, record.publish_latencies) == (1, 1, [10.0])
    assert record.outcomes == [(1_004, 1.0)]
