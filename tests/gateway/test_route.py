"""The gateway's choice of a preferred node (``gateway.route``), without a chain: records as
the indexer gives them, through a stand-in indexer (``RecordsOnly``: a mock of the synced
``Indexer``, which needs a chain), and the settings that steer it."""

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
