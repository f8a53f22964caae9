"""`verinfer web` as a real process: serves the built page, its config.json, providers.json
and the local tokenizer files (nothing else), exports the same files for a static host, and
refuses bad input with one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from verinfer.models.manifest import MANIFEST_NAME, Manifest
from verinfer.models.tiny import tiny_model_path

ROOT = Path(__file__).resolve().parents[2]
MARKET = "0x" + "ab" * 20
RPC = "http://127.0.0.1:9"


def cli(home: Path, *args: str, **kw: object) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERINFER_")}
    env.update(VERINFER_HOME=str(home), PYTHONPATH=str(ROOT / "workers"))
    env["PATH"] = f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{env['PATH']}"
    return subprocess.Popen(
        [sys.executable, "-m", "verinfer.cli", "web", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        **kw,  # type: ignore[arg-type]
    )


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


@pytest.fixture(scope="module")
def tiny_id() -> str:
    path = tiny_model_path(seed=0)
    return "0x" + Manifest.load(path / MANIFEST_NAME).model_id.hex()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`verinfer web --port 0 --json` for a given market; yields its URL."""
    proc = cli(tmp_path_factory.mktemp("home"), "--port", "0", "--json", "--market", MARKET,
               "--rpc-url", RPC, "--chain-id", "31337")  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        data = json.loads(line)
        assert data == {"url": data["url"], "rpc_url": RPC, "market": MARKET, "chain_id": 31337}
        yield data["url"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else ""


def test_web__serves_page_config_and_local_tokenizer__nothing_else(served, tiny_id):
    status, body = get(served)
    assert status == 200 and b'<script src="app.js"></script>' in body
    status, body = get(served + "app.js")
    assert status == 200 and b"deposit_and_submit" in body  # the ABI, bundled from the build
    status, body = get(served + "config.json")
    assert json.loads(body) == {"rpc_url": RPC, "market": MARKET, "chain_id": 31337}
    status, body = get(served + "providers.json")  # no chain at RPC: empty, with the reason
    providers = json.loads(body)
    assert status == 200 and providers["data"] == [] and providers["stale"] is True
    assert providers["error"].startswith(f"cannot sync the track record from {RPC}: ")
    status, body = get(f"{served}tokenizers/{tiny_id}/tokenizer.json")
    assert status == 200 and body == (tiny_model_path(seed=0) / "tokenizer.json").read_bytes()
    assert get(f"{served}tokenizers/{tiny_id}/model.safetensors")[0] == 404
    assert get(f"{served}tokenizers/0x{'00' * 32}/tokenizer.json")[0] == 404
    assert get(served + "../pyproject.toml")[0] == 404
    assert get(served + "%2e%2e/pyproject.toml")[0] == 404


def test_web__no_market__one_line_and_exit_1(tmp_path):
    proc = cli(tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert err == (
        "verinfer: no market to show: give --market and --rpc-url, or start a dev chain with "
        "`verinfer dev up`\n"
    )


def test_web__port_taken__one_line_and_exit_1(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = cli(tmp_path, "--port", str(port), "--market", MARKET, "--rpc-url", RPC)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err == f"verinfer: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_web_export__dev_chain_config_and_its_model_tokenizer(tmp_path, tiny_id):
    home = tmp_path / "home"
    home.mkdir()
    dev = {"rpc_url": RPC, "market": MARKET, "chain_id": 31337, "from_block": 4,
           "model": {"model_id": tiny_id}}  # fmt: skip
    (home / "dev.json").write_text(json.dumps(dev))
    out_dir = tmp_path / "site"
    proc = cli(home, "--export", str(out_dir), "--json")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    data = json.loads(out)
    assert data["config"] == {"rpc_url": RPC, "market": MARKET, "chain_id": 31337, "from_block": 4}
    assert sorted(data["files"]) == sorted(
        ["app.js", "index.html", "style.css", "config.json", "providers.json",
         f"tokenizers/{tiny_id}/tokenizer.json", f"tokenizers/{tiny_id}/tokenizer_config.json"]
    )  # fmt: skip
    assert json.loads((out_dir / "config.json").read_text()) == data["config"]
    # no chain at RPC: the track-record snapshot says why it is empty (the page: unavailable)
    providers = json.loads((out_dir / "providers.json").read_text())
    assert providers["data"] == [] and providers["stale"] is True
    assert providers["error"].startswith(f"cannot sync the track record from {RPC}: ")
    assert (out_dir / "tokenizers" / tiny_id / "tokenizer.json").read_bytes() == (
        tiny_model_path(seed=0) / "tokenizer.json"
    ).read_bytes()
