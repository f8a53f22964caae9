"""NodeSettings defaults that size the node's engine: inference workers and torch threads."""

from __future__ import annotations

import os

import pytest
from verinfer.node.settings import NodeSettings

ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def _settings(**values: object) -> NodeSettings:
    return NodeSettings(market=ADDRESS, court=ADDRESS, account="node", **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "cores, workers, threads",
    [(1, 1, 1), (2, 1, 1), (2, 2, 1), (4, 1, 3), (4, 2, 2), (8, 2, 4), (16, 2, 8), (16, 3, 5)],
)
def test_engine_threads__auto__cores_minus_one_split_rounded_up(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int, threads: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert _settings(infer_workers=workers).engine_threads() == threads


def test_engine_threads__set__taken_as_is() -> None:
    assert _settings(torch_threads=3, infer_workers=2).engine_threads() == 3


def test_infer_workers__default_two__zero_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VERINFER_INFER_WORKERS", raising=False)
    assert _settings().infer_workers == 2
    with pytest.raises(ValueError, match="must be at least 1"):
        _settings(infer_workers=0)
