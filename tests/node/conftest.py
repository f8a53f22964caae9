"""Fixtures of the node tests: a fresh Anvil + Redis + protocol per module."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from verinfer.node.devchain import deploy_protocol, start_anvil
from verinfer.node.redis_server import start_redis

from tests.node.harness import Net, setup_net


@pytest.fixture(scope="module")
def tmp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="verinfer-node-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def net(tmp_dir: Path) -> Iterator[Net]:
    """Anvil (automine), Redis, the protocol (60 s challenge window), staked nodes, clients."""
    anvil, rpc_url, _ = start_anvil(log_path=tmp_dir / "anvil.log")
    redis_proc, redis_url = start_redis(tmp_dir / "redis")
    try:
        yield setup_net(deploy_protocol(rpc_url), rpc_url, redis_url, tmp_dir)
    finally:
        redis_proc.terminate()
        anvil.terminate()
        redis_proc.wait(10)
        anvil.wait(10)
