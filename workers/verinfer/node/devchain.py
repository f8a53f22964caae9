"""A local development chain for node tests, benchmarks and demos: Anvil or a Hardhat node on a
free port, the protocol deployed with web3 from ape's build output (``ape compile``), funded
roles, and keystore files for the node keys. Not used by a node in production."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from eth_account import Account
from web3 import Web3

from verinfer.node.contracts import connect, load_abi
from verinfer.node.redis_server import free_port

ROOT = Path(__file__).resolve().parents[3]
MNEMONIC = "test test test test test test test test test test test junk"
UNIT = 10**18
ZERO = "0x" + "00" * 20
CHAINS = ("anvil", "hardhat")
ChainKind = Literal["anvil", "hardhat"]


def dev_keys(n: int = 10) -> list[Any]:
    """The first ``n`` accounts of Anvil's default mnemonic (LocalAccount objects)."""
    Account.enable_unaudited_hdwallet_features()
    return [Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(n)]


def anvil_binary() -> str:
    """``anvil`` on PATH or in node_modules/.bin."""
    found = shutil.which("anvil") or shutil.which("anvil", path=str(ROOT / "node_modules" / ".bin"))
    if not found:
        raise FileNotFoundError("anvil not found (npm ci installs @foundry-rs/anvil)")
    return found


def hardhat_binary() -> str:
    """``hardhat`` in node_modules/.bin (npm ci installs it) or on PATH."""
    found = shutil.which("hardhat", path=str(ROOT / "node_modules" / ".bin")) or shutil.which(
        "hardhat"
    )
    if not found:
        raise FileNotFoundError("hardhat not found (npm ci installs hardhat)")
    return found


def _wait_port(proc: subprocess.Popen, port: int, what: str, timeout_s: float) -> None:
    """Wait until ``port`` accepts connections; kill ``proc`` and raise if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_process(proc, 5, group=True)
    raise RuntimeError(f"{what} did not start")


def start_anvil(
    block_time: float | None = None, log_path: Path | None = None
) -> tuple[subprocess.Popen, str, int]:
    """Start Anvil on a free port (own session: a Ctrl-C at the terminal leaves it to the
    caller to stop, after the nodes that use it); returns (process, rpc url, port)."""
    port = free_port()
    cmd = [
        anvil_binary(),
        "--port",
        str(port),
        "--accounts",
        "10",
        "--silent",
        "--mnemonic",
        MNEMONIC,
    ]
    if block_time:
        cmd += ["--block-time", str(block_time)]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_port(proc, port, "anvil", 20)
    return proc, f"http://127.0.0.1:{port}", port


def start_hardhat(log_path: Path | None = None) -> tuple[subprocess.Popen, str, int]:
    """Start a Hardhat node (``hardhat node`` with the repository's hardhat.config.js: chain
    id 31337, the same test mnemonic as Anvil, automine) on a free port, in its own session, as
    ape-hardhat does; returns (process, rpc url, port)."""
    port = free_port()
    cmd = [hardhat_binary(), "node", "--hostname", "127.0.0.1", "--port", str(port)]
    cmd += ["--config", str(ROOT / "hardhat.config.js")]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
    )
    _wait_port(proc, port, "hardhat node", 90)
    return proc, f"http://127.0.0.1:{port}", port


def start_chain(kind: ChainKind, log_path: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start the dev chain ``kind`` (``anvil`` or ``hardhat``); returns (process, rpc url)."""
    if kind == "anvil":
        proc, url, _ = start_anvil(log_path=log_path)
    elif kind == "hardhat":
        proc, url, _ = start_hardhat(log_path=log_path)
    else:
        raise ValueError(f"unknown chain {kind!r} (use anvil or hardhat)")
    return proc, url


def stop_process(
    proc: subprocess.Popen, timeout_s: float = 10.0, group: bool = False, signal_it: bool = True
) -> int:
    """SIGTERM ``proc`` (unless ``signal_it`` is false: the caller already did; a second
    SIGTERM can hit a Python process while it exits, after its handlers are gone), wait up to
    ``timeout_s``, then SIGKILL it. ``group``: ``proc`` leads its own process group
    (``start_new_session``) and whatever is still in that group after it exited is killed too
    (e.g. workers it started). Returns its exit code."""
    if proc.poll() is None:
        if signal_it:
            proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if group:
        with contextlib.suppress(ProcessLookupError):  # nothing left in the group
            os.killpg(proc.pid, signal.SIGKILL)
    return int(proc.returncode)


def _artifact(name: str) -> dict[str, Any]:
    build = ROOT / ".build" / "__local__.json"
    if not build.is_file():
        raise FileNotFoundError("no .build/__local__.json: run `ape compile` first")
    return json.loads(build.read_text())["contractTypes"][name]


def transact(w3: Web3, fn: Any, sender: str) -> Any:
    """Send ``fn`` from an unlocked dev account and wait for a successful receipt."""
    tx_hash = fn.transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.05)
    if receipt["status"] != 1:
        raise RuntimeError(f"transaction failed: {fn.fn_name}")
    return receipt


def deploy(w3: Web3, owner: str, contract: str, *args: Any) -> Any:
    """Deploy ``contract`` (name in ape's build) from ``owner``; returns the web3 contract."""
    art = _artifact(contract)
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["deploymentBytecode"]["bytecode"])
    tx_hash = factory.constructor(*args).transact({"from": owner})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.05)
    return w3.eth.contract(address=receipt["contractAddress"], abi=load_abi(contract))


@dataclass
class DevProtocol:
    """A deployed protocol on a dev chain, and its owner."""

    w3: Web3
    token: Any
    market: Any
    court: Any
    owner: str

    def mine(self, seconds: int = 0, blocks: int = 1) -> None:
        """Move chain time forward by ``seconds`` and mine ``blocks`` blocks."""
        if seconds:
            self.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
        for _ in range(blocks):
            self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    def fund_client(self, client: str, amount: int) -> None:
        """Mint ``amount`` to ``client`` and deposit it as prepaid balance."""
        transact(self.w3, self.token.functions.mint(client, amount), client)
        transact(self.w3, self.token.functions.approve(self.market.address, amount), client)
        transact(self.w3, self.market.functions.deposit(amount), client)

    def add_node(self, node: str, stake: int, model_id: bytes, price: int) -> None:
        """Register, stake and serve ``model_id`` at ``price`` per output token."""
        transact(self.w3, self.token.functions.mint(node, stake), node)
        transact(self.w3, self.token.functions.approve(self.market.address, stake), node)
        transact(
            self.w3, self.market.functions.register_node(b"\x04" * 64, "http://node.invalid"), node
        )
        transact(self.w3, self.market.functions.stake(stake), node)
        transact(self.w3, self.market.functions.serve_model(model_id, price), node)


def deploy_protocol(rpc_url: str, challenge_window: int = 60) -> DevProtocol:
    """Deploy token, market and court (deploy.DeployConfig defaults) and wire them."""
    from verinfer.deploy import DeployConfig

    w3 = connect(rpc_url, timeout_s=60)
    owner = dev_keys(1)[0].address
    cfg = DeployConfig()
    token = deploy(w3, owner, "TestToken", "verinfer test USD", "vUSD", 18)
    market = deploy(w3, owner, "Market", token.address, cfg.min_stake * UNIT, owner)
    court = deploy(
        w3,
        owner,
        "Court",
        market.address,
        cfg.dispute_bond * UNIT,
        cfg.appeal_bond * UNIT,
        cfg.verifier_fee * UNIT,
        cfg.no_show_penalty * UNIT,
        cfg.audit_fee * UNIT,
    )
    transact(w3, market.functions.set_court(court.address), owner)
    transact(w3, market.functions.set_param(2, challenge_window), owner)
    return DevProtocol(w3, token, market, court, owner)
