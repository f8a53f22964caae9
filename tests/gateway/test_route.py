"""The gateway's choice of a preferred node (``gateway.route``), without a chain: records as
the indexer gives them, through a stand-in indexer (``RecordsOnly``: a mock of the synced
``Indexer``, which needs a chain), and the settings that steer it; then the poll thread's
deadline check on a routed job whose node lets its exclusive window pass (a ChainWorker that is
not connected, its chain time fixed). End to end with three real nodes: tests/routing."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from click.testing import CliRunner
from verinfer.chain_errors import ClientError
from verinfer.gateway.errors import GatewayError
from verinfer.gateway.route import GatewayRouter
from verinfer.gateway.settings import load_settings
from verinfer.indexer import NodeRecord
from verinfer.routing import Weights

MODEL = b"\x11" * 32
MID = "0x" + MODEL.hex()
GOOD = "0x" + "aa" * 20
SLOW = "0x" + "bb" * 20
FLAKY = "0x" + "cc" * 20
GONE = "0x" + "dd" * 20  # has a record, not eligible on chain
PRICE = 1_000
ELIGIBLE = {GOOD: PRICE, SLOW: PRICE, FLAKY: PRICE}


def record(node: str, served: int, failed: int = 0, latency: float = 1.0) -> NodeRecord:
    outcomes = [(t, 1.0) for t in range(served)] + [(100 + t, 0.0) for t in range(failed)]
    return NodeRecord(
        node,
        MID,
        serving=True,
        price_per_token=PRICE,
        stake=2_000,
        outcomes=outcomes,
        publish_latencies=[latency] * served,
    )


class RecordsOnly:
    """Mock of a synced ``verinfer.indexer.Indexer``: its ``records(model_id)`` only."""

    def __init__(self, records: list[NodeRecord]) -> None:
        self.list = records
        self.syncs = 0
        self.down = False  # the chain is gone: a sync fails

    def records(self, model_id: bytes) -> list[NodeRecord]:
        assert model_id == MODEL
        return self.list


def router_of(records: list[NodeRecord], routing: str = "score") -> tuple[GatewayRouter, Any]:
    index = RecordsOnly(records)

    def synced() -> RecordsOnly:
        if index.down:
            raise ConnectionError("chain gone")
        index.syncs += 1
        return index

    router = GatewayRouter(synced, Weights(), sync_s=5.0, routing=routing)
    router.sync(force=True)
    return router, index


WARM = [record(GOOD, 10), record(SLOW, 10, latency=8.0), record(FLAKY, 2, failed=3)]


def choose(router: GatewayRouter, **kwargs: Any) -> str | None:
    return router.choose(MODEL, "tiny", ELIGIBLE, **kwargs)


def test_no_record__job_goes_open__said_once_per_sync(caplog: pytest.LogCaptureFixture) -> None:
    router, _ = router_of([])
    with caplog.at_level(logging.INFO, logger="verinfer.gateway"):
        assert choose(router) is None
        assert choose(router) is None
    said = [r.getMessage() for r in caplog.records]
    assert said == ["no track record of an eligible node of tiny: its jobs go open (first claimer)"]


def test_record_of_other_nodes_only__open() -> None:
    router, _ = router_of([record(GONE, 20)])  # a good record, but not eligible on chain
    assert choose(router) is None


def test_score__best_eligible_node__cached_until_the_next_sync() -> None:
    router, index = router_of(WARM)
    assert choose(router) == GOOD
    first = router.ranked(MODEL, ELIGIBLE)
    assert [s.node for s in first] == [GOOD, SLOW, FLAKY]
    assert router.ranked(MODEL, ELIGIBLE) is first  # same generation, same nodes and prices
    router.sync()  # within sync_s: no sync
    assert index.syncs == 1 and router.ranked(MODEL, ELIGIBLE) is first
    router.sync(force=True)
    assert index.syncs == 2 and router.ranked(MODEL, ELIGIBLE) is not first
    pricier = {**ELIGIBLE, GOOD: 50 * PRICE}  # the market's price, fresher than the record's
    ranked = {s.node: s for s in router.ranked(MODEL, pricier)}
    assert ranked[GOOD].record.price_per_token == 50 * PRICE and ranked[GOOD].price == 1 / 50
    assert router.choose(MODEL, "tiny", pricier) == SLOW  # 50x the price outweighs its speed


def test_exclude__next_best__all_excluded_400() -> None:
    router, _ = router_of(WARM)
    assert choose(router, exclude=[GOOD.upper().replace("0X", "0x")]) == SLOW
    with pytest.raises(GatewayError) as info:
        choose(router, exclude=[GOOD, SLOW, FLAKY])
    err = info.value
    assert (err.status, err.param, err.code) == (400, "exclude_nodes", "no_eligible_node")
    assert err.message == "exclude_nodes leaves no eligible node of model tiny"


def test_pin__eligible_node_even_without_record__else_400() -> None:
    router, _ = router_of([])
    assert choose(router, pin=SLOW.upper().replace("0X", "0x")) == SLOW
    with pytest.raises(GatewayError) as info:
        choose(router, pin=GONE)
    err = info.value
    assert (err.status, err.param, err.code) == (400, "node", "node_not_eligible")
    assert err.message == (
        f"node {GONE} is not an eligible node of model tiny (staked, serving it, not slashed: "
        "GET /v1/providers?model=... lists them)"
    )
    with pytest.raises(GatewayError) as info:
        choose(router, pin=SLOW, exclude=[SLOW])
    assert (info.value.param, info.value.message) == (
        "node",
        f"node {SLOW} is also in exclude_nodes",
    )
    with pytest.raises(GatewayError) as info:
        choose(router, pin=SLOW, routing="open")
    assert info.value.param == "routing"
    assert info.value.message == (
        'routing "open" leaves the job to the first node that claims it: drop node'
    )


def test_routing_open__per_request_or_gateway_wide() -> None:
    router, _ = router_of(WARM)
    assert choose(router, routing="open") is None
    with pytest.raises(GatewayError) as info:
        choose(router, routing="open", exclude=[GOOD])
    assert info.value.param == "exclude_nodes"
    wide, _ = router_of(WARM, routing="open")
    assert choose(wide) is None
    assert choose(wide, routing="score") == GOOD
    assert choose(wide, pin=FLAKY) == FLAKY


def test_burst_on_new_nodes__spread_by_the_gateways_in_flight_jobs() -> None:
    router, _ = router_of([record(GOOD, 0), record(SLOW, 0), record(FLAKY, 0)])
    inflight: dict[str, int] = {}
    chosen = []
    for _ in range(6):  # one submit batch: each choice counted before the next
        node = choose(router, inflight=inflight)
        assert node is not None
        inflight[node.lower()] = inflight.get(node.lower(), 0) + 1
        chosen.append(node)
    assert sorted(chosen) == sorted([GOOD, SLOW, FLAKY] * 2)  # the warm-up: two tries each
    # answered jobs count as tries until the next sync puts their outcomes on record
    router.answered(GOOD)
    router.answered(GOOD)
    assert choose(router) in (SLOW, FLAKY)
    router.sync(force=True)
    assert choose(router) == sorted([GOOD, SLOW, FLAKY])[0]  # nothing on record: ties by address


def test_sync_fails__keeps_the_record__one_warning(caplog: pytest.LogCaptureFixture) -> None:
    router, index = router_of(WARM)
    index.down = True
    with caplog.at_level(logging.WARNING, logger="verinfer.gateway"):
        router.sync(force=True)
    assert [r.getMessage() for r in caplog.records] == [
        "track record sync failed (routing on the last record): chain gone"
    ]
    assert choose(router) == GOOD and index.syncs == 1


def test_settings__routing_and_weights__bad_weights_one_line(monkeypatch: Any) -> None:
    monkeypatch.setenv("VERINFER_GATEWAY_ROUTE_WEIGHTS", "reliability=0.7,latency=0.3")
    settings = load_settings()
    assert settings.routing == "score"
    assert settings.weights() == Weights(reliability=0.7, latency=0.3, price=0, stake=0)
    monkeypatch.setenv("VERINFER_GATEWAY_ROUTE_WEIGHTS", "speed=1")
    with pytest.raises(ClientError) as info:
        load_settings()
    assert str(info.value) == (
        "bad VERINFER_GATEWAY_ROUTE_WEIGHTS: unknown weight 'speed' "
        "(reliability, latency, price, stake)"
    )
    monkeypatch.delenv("VERINFER_GATEWAY_ROUTE_WEIGHTS")
    monkeypatch.setenv("VERINFER_GATEWAY_ROUTING", "fastest")
    with pytest.raises(ClientError) as info:
        load_settings()
    assert str(info.value) == "bad VERINFER_GATEWAY_ROUTING: Input should be 'score' or 'open'"


def test_gateway_command__bad_weights__exit_1_one_line_before_connecting() -> None:
    from verinfer.cli import main

    env = {"VERINFER_GATEWAY_ROUTE_WEIGHTS": "latency=-1", "VERINFER_NETWORK": "nowhere:x:y"}
    out = CliRunner(mix_stderr=False).invoke(main, ["gateway"], env=env)
    assert out.exit_code == 1
    assert (
        out.stderr == "verinfer: bad VERINFER_GATEWAY_ROUTE_WEIGHTS: weight latency is negative\n"
    )


# ---- a routed job's node lets its window pass: the request waits on, then says why ----
NOW = 1_800_000_000


def pending_job(status: Any, routed: str | None, claimed_by: str | None = None) -> Any:
    """A sent job as the poll thread holds it (its JobSubmitted seen), submitted 10 s ago with
    a 600 s claim window."""
    from verinfer.client import JobHandle, ModelInfo
    from verinfer.gateway.chain import JobRequest, _Pending
    from verinfer.jobs import ZERO_ADDRESS, JobRecord

    rec = JobRecord(GOOD, MODEL, b"", b"", 4, 4_000, routed or ZERO_ADDRESS, NOW - 10,
                    NOW + 590, NOW + 1_190, node=claimed_by or ZERO_ADDRESS, job_id=7)  # fmt: skip
    request = JobRequest("tiny", b"", 4, 1.0, 1, timeout_s=30)
    p = _Pending(request, ModelInfo(MODEL, "tiny", "1", b""), 0, float("inf"), "0x01", 1)
    p.routed_to, p.sent_at = routed, 1.0
    p.handle = JobHandle(None, rec, status, 1)  # type: ignore[arg-type]  # no client needed
    return p


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A ChainWorker that is not connected (only its deadline checks run), at chain time NOW,
    with a 2 s exclusive window."""
    from verinfer.gateway.chain import ChainWorker
    from verinfer.gateway.limits import SpendLimits
    from verinfer.gateway.settings import GatewaySettings

    w = ChainWorker(GatewaySettings(), connect=lambda: None)
    w.exclusive_window = 2
    w.limits = SpendLimits(10**18, 10**18)
    monkeypatch.setattr(w, "_chain_now", lambda: NOW)
    return w


def track(w: Any, p: Any) -> None:
    w._by_tx[p.tx_hash] = [p]
    w._by_job[7] = p


def test_routed_job_past_its_window__said_once__not_failed_early__504_says_where(
    worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from verinfer.jobs import JobStatus

    p = pending_job(JobStatus.OPEN, SLOW)
    track(worker, p)
    with caplog.at_level(logging.INFO, logger="verinfer.gateway"):
        worker._check_deadlines()
        worker._check_deadlines()
    assert [r.getMessage() for r in caplog.records] == [
        f"job 7: node {SLOW} did not claim it within its exclusive window (2 s): open to every "
        "eligible node until its claim deadline"
    ]
    assert not p.request.future.done()  # the request waits on
    p.deadline = 0.0  # its own timeout has come
    worker._check_deadlines()
    err = p.request.future.exception()
    assert (err.status, err.code) == (504, "job_timeout")
    assert err.message == (
        f"job 7 has no result after 30s (it is OPEN, routed to node {SLOW}, which did not claim "
        "it within its exclusive window: open to every eligible node for 590 s more; it stays "
        "on chain and is refunded if no node serves it)"
    )


def test_timeout_messages__in_the_window__claimed__open(worker: Any) -> None:
    from verinfer.jobs import JobStatus

    worker.exclusive_window = 60
    cases = [
        (
            pending_job(JobStatus.OPEN, SLOW),
            f"OPEN, routed to node {SLOW}, in its exclusive window",
        ),
        (
            pending_job(JobStatus.CLAIMED, SLOW, claimed_by=SLOW),
            f"CLAIMED by node {SLOW}, its result due within 1190 s",
        ),
        (pending_job(JobStatus.OPEN, None), "OPEN, open to every eligible node for 590 s more"),
    ]
    for p, where in cases:
        track(worker, p)
        p.deadline = 0.0
        worker._check_deadlines()
        assert p.request.future.exception().message == (
            f"job 7 has no result after 30s (it is {where}; it stays on chain and is refunded "
            "if no node serves it)"
        )
