"""Fixtures of the routing tests: a fresh Anvil + Redis + protocol per module."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from verinfer.node.localnet import Net, local_net


@pytest.fixture(scope="module")
def tmp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="verinfer-routing-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def net(tmp_dir: Path) -> Iterator[Net]:
    """Anvil (automine), Redis, the protocol, three staked nodes (4, 5, 6), funded clients."""
    with local_net(tmp_dir, chain="anvil") as dev_net:
        yield dev_net
