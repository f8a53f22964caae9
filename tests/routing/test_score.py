"""The routing score and the router's choices on records made by hand (no chain)."""

from __future__ import annotations

import pytest
from verinfer.indexer import NodeRecord
from verinfer.routing import RoutePolicy, Weights, rank, reliability

GOOD, SLOW, FLAKY, PRICEY = "0x" + "a" * 40, "0x" + "b" * 40, "0x" + "c" * 40, "0x" + "d" * 40
M = "0x" + "11" * 32


def _rec(node: str, served: int, failed: int, p50: float, price: int = 10, stake: int = 100):
    outcomes = [(t, 1.0) for t in range(served)] + [(100 + t, 0.0) for t in range(failed)]
    return NodeRecord(
        node=node, model_id=M, serving=True, price_per_token=price, stake=stake,
        outcomes=outcomes, publish_latencies=[p50] * served,
    )  # fmt: skip


RECORDS = [
    _rec(GOOD, 20, 0, 1.0),
    _rec(SLOW, 20, 0, 12.0),
    _rec(FLAKY, 2, 10, 1.0),
    _rec(PRICEY, 20, 0, 1.0, price=40),
]


def test_rank__default_weights__reliable_fast_cheap_first() -> None:
    ranked = rank(RECORDS)
    assert [s.node for s in ranked] == [GOOD, PRICEY, SLOW, FLAKY]
    assert ranked[0].score > 0.8 and ranked[-1].score < 0.4
    assert not any(s.explore for s in ranked)


def test_rank__pin__only_that_node() -> None:
    assert [s.node for s in rank(RECORDS, RoutePolicy(pin=SLOW.upper().replace("0X", "0x")))] == [
        SLOW
    ]


def test_rank__exclude_and_price_limit__filtered() -> None:
    policy = RoutePolicy(exclude=frozenset({GOOD}), max_price=20)
    assert [s.node for s in rank(RECORDS, policy)] == [SLOW, FLAKY]
    assert rank(RECORDS, RoutePolicy(max_price=5)) == []


def test_rank__weights__price_only_prefers_the_cheap_over_the_reliable() -> None:
    cheap_flaky = _rec(FLAKY, 2, 10, 1.0, price=1)
    policy = RoutePolicy(weights=Weights.parse("price=1"))
    assert rank([RECORDS[0], cheap_flaky], policy)[0].node == FLAKY
    assert rank([RECORDS[0], cheap_flaky])[0].node == GOOD


def test_reliability__recent_failures_weigh_more_than_old_ones() -> None:
    recovered = NodeRecord(GOOD, M, outcomes=[(t, 0.0) for t in range(10)] + [
        (10 + t, 1.0) for t in range(10)])  # fmt: skip
    decayed = NodeRecord(SLOW, M, outcomes=[(t, 1.0) for t in range(10)] + [
        (10 + t, 0.0) for t in range(10)])  # fmt: skip
    assert reliability(recovered, 5.0) > 0.7 > 0.3 > reliability(decayed, 5.0)
    assert reliability(NodeRecord(GOOD, M), 5.0) == 0.5  # no record: the prior


def test_rank__new_nodes_warm_up_first__least_tried_first() -> None:
    fresh = [_rec(GOOD, 0, 0, 0.0), _rec(SLOW, 0, 0, 0.0), RECORDS[2]]
    ranked = rank(fresh, RoutePolicy(), inflight={GOOD: 1})
    assert [s.node for s in ranked] == [SLOW, GOOD, FLAKY]
    assert [s.explore for s in ranked] == [True, True, False]


def test_rank__unserved_or_slashed_out__not_eligible() -> None:
    gone = _rec(GOOD, 20, 0, 1.0)
    gone.serving = False
    out = _rec(SLOW, 20, 0, 1.0)
    out.slashed_out = True
    assert rank([gone, out]) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("speed=1", "unknown weight 'speed' (reliability, latency, price, stake)"),
        ("price=x", "weight price is not a number: 'x'"),
        ("price=-1", "weight price is negative"),
        ("price=0", "the weights sum to 0"),
    ],
)
def test_weights_parse__bad_text__one_line_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        Weights.parse(text)
    assert str(err.value) == message
