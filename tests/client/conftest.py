"""Client tests: the protocol prepared by `verinfer dev up`'s own routine on ape's test chain."""

from __future__ import annotations

from typing import Any

import pytest
from verinfer.client import Client
from verinfer.devnet import prepare_protocol


@pytest.fixture(scope="session")
def dev(accounts: Any) -> dict[str, Any]:
    """Deployed market, registered tiny model, two funded clients, two staked nodes."""
    return prepare_protocol(challenge_window=60, model="tiny")


@pytest.fixture(scope="session")
def market(project: Any, dev: dict[str, Any]) -> Any:
    return project.Market.at(dev["market"])


@pytest.fixture(scope="session")
def court(project: Any, dev: dict[str, Any]) -> Any:
    return project.Court.at(dev["court"])


@pytest.fixture(scope="session")
def token(project: Any, dev: dict[str, Any]) -> Any:
    return project.TestToken.at(dev["token"])


@pytest.fixture(scope="session")
def nodes(accounts: Any) -> list[Any]:
    return [accounts[3], accounts[4]]


@pytest.fixture
def client(dev: dict[str, Any]) -> Client:
    """Alice (test account 1), with 100 tokens prepaid."""
    return Client(dev["market"], "test:1", from_block=dev["from_block"])


@pytest.fixture(scope="session")
def tiny() -> Any:
    from verinfer.engines.hf import TransformersEngine
    from verinfer.models.loader import load_model
    from verinfer.models.tiny import tiny_model_path

    model = load_model(tiny_model_path(seed=0))
    return model, TransformersEngine(model)
