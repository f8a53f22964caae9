"""``verinfer dev up | down``: a local Anvil chain with the protocol deployed and ready.

``up`` starts Anvil in the background (its own session, so it outlives the command),
deploys the contracts (``deploy.deploy_all``), registers a model (SmolLM2-135M-Instruct,
imported once into the model cache; or, with ``--model tiny``, the project's small model), funds
the client accounts (prepaid balance) and stakes the node accounts, and records it all in
``$VERINFER_HOME/dev.json``. ``down`` stops what ``up`` started and removes the record.

Roles (ape test accounts of the standard test mnemonic): 0 owner/deployer, 1-2 clients,
3-4 nodes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from verinfer.chain_errors import ClientError
from verinfer.cli_common import DEV_STATE, read_dev_state, verinfer_home

MNEMONIC = "test test test test test test test test test test test junk"
CLIENTS = (1, 2)
NODES = (3, 4)
UNIT = 10**18
CLIENT_MINT = 1_000 * UNIT
CLIENT_DEPOSIT = 100 * UNIT
NODE_STAKE = 2_000 * UNIT
PRICE_PER_TOKEN = UNIT // 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int, name: str) -> bool:
    """True if process ``pid`` runs and its command line mentions ``name``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return name.encode() in cmdline


def start_anvil(home: Path, port: int, chain_id: int) -> subprocess.Popen:
    """Anvil on 127.0.0.1:``port`` in its own session, logging to ``home/anvil.log``."""
    from verinfer.node.devchain import anvil_binary

    try:
        binary = anvil_binary()
    except FileNotFoundError as exc:
        raise ClientError(str(exc)) from None
    if _port_open(port):
        raise ClientError(f"port {port} is taken; pick another with --port")
    log = open(home / "anvil.log", "ab")  # noqa: SIM115 (handed to the child)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--chain-id", str(chain_id), "--mnemonic", MNEMONIC,
         "--accounts", "10"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not _port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise ClientError(f"anvil did not start (see {home / 'anvil.log'})")
        time.sleep(0.05)
    return proc


def up(
    port: int | None = None,
    chain_id: int = 31337,
    challenge_window: int = 60,
    redis: bool = False,
    model: str = "smollm2",
) -> dict[str, Any]:
    """Start and prepare the dev chain serving ``model`` (``smollm2`` or ``tiny``); returns the
    record written to dev.json."""
    home = verinfer_home()
    state = read_dev_state()
    if state and pid_alive(int(state["pid"]), "anvil"):
        raise ClientError(
            f"a dev chain is already running (pid {state['pid']}, {state['rpc_url']}); "
            "`verinfer dev down` first"
        )
    home.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    proc = start_anvil(home, port, chain_id)
    rpc_url = f"http://127.0.0.1:{port}"
    record: dict[str, Any] = {
        "pid": proc.pid,
        "rpc_url": rpc_url,
        "network": f"ethereum:local:{rpc_url}",
        "chain_id": chain_id,
        "home": str(home),
    }
    try:
        record.update(_prepare(record["network"], challenge_window, model))
        if redis:
            record.update(_start_redis(home))
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    (home / DEV_STATE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _start_redis(home: Path) -> dict[str, Any]:
    try:
        from verinfer.node.redis_server import start_redis
    except ImportError as exc:
        raise ClientError(f"no Redis starter available ({exc})") from None
    proc, url = start_redis(home / "redis")
    return {"redis_pid": proc.pid, "redis_url": url}


def _prepare(network: str, challenge_window: int, model: str) -> dict[str, Any]:
    from ape import networks
    from ape.logging import logger

    logger.set_level("WARNING")
    with networks.parse_network_choice(network):
        return prepare_protocol(challenge_window, model)


def model_path(model: str) -> Path:
    """The checked directory of a dev model: ``smollm2`` (SmolLM2-135M-Instruct, imported on
    first use) or ``tiny`` (the project's small random model)."""
    if model == "smollm2":
        from verinfer.models.smollm2 import ensure_smollm2

        return ensure_smollm2()
    if model == "tiny":
        from verinfer.models.tiny import tiny_model_path

        return tiny_model_path(seed=0)
    raise ClientError(f"unknown dev model {model!r} (smollm2 or tiny)")


def prepare_protocol(challenge_window: int = 60, model: str = "smollm2") -> dict[str, Any]:
    """On the connected ape network: deploy, register ``model`` (see ``model_path``), fund the
    clients' prepaid balances and stake the nodes (test accounts, see the module docstring)."""
    from ape import accounts, chain, project

    from verinfer.deploy import deploy_all
    from verinfer.models.manifest import MANIFEST_NAME, Manifest
    from verinfer.operator import account_pubkey

    path = model_path(model)
    spec = Manifest.load(path / MANIFEST_NAME)
    owner = accounts.test_accounts[0]
    from_block = int(chain.blocks.height)
    addresses = deploy_all(owner)
    token = project.TestToken.at(addresses["token"])
    market = project.Market.at(addresses["market"])
    market.set_param(2, challenge_window, sender=owner)
    market.register_model(spec.name, spec.revision, spec.manifest_hash, sender=owner)
    clients, nodes = [], []
    for i in CLIENTS:
        acct = accounts.test_accounts[i]
        token.mint(acct, CLIENT_MINT, sender=owner)
        token.approve(market, CLIENT_DEPOSIT, sender=acct)
        market.deposit(CLIENT_DEPOSIT, sender=acct)
        clients.append(str(acct.address))
    for i in NODES:
        acct = accounts.test_accounts[i]
        token.mint(acct, NODE_STAKE, sender=owner)
        token.approve(market, NODE_STAKE, sender=acct)
        market.register_node(account_pubkey(acct), f"http://node-{i}.invalid", sender=acct)
        market.stake(NODE_STAKE, sender=acct)
        market.serve_model(spec.model_id, PRICE_PER_TOKEN, sender=acct)
        nodes.append(str(acct.address))
    return {
        **addresses,
        "from_block": from_block,
        "model": {
            "name": spec.name,
            "revision": spec.revision,
            "model_id": "0x" + spec.model_id.hex(),
            "path": str(path),
        },
        "clients": clients,
        "nodes": nodes,
        "accounts": {
            "owner": "test:0",
            "clients": [f"test:{i}" for i in CLIENTS],
            "nodes": [f"test:{i}" for i in NODES],
        },
        "price_per_token": PRICE_PER_TOKEN,
        "challenge_window": challenge_window,
    }


def down() -> dict[str, Any]:
    """Stop the dev chain (and Redis) that ``up`` started; remove dev.json."""
    home = verinfer_home()
    state = read_dev_state()
    if state is None:
        raise ClientError(f"no dev chain running (no {home / DEV_STATE})")
    stopped = []
    for key, name in (("pid", "anvil"), ("redis_pid", "redis")):
        pid = state.get(key)
        if pid and pid_alive(int(pid), name):
            try:
                os.killpg(int(pid), signal.SIGTERM) if key == "pid" else os.kill(int(pid), 15)
            except ProcessLookupError:
                continue
            _wait_gone(int(pid))
            stopped.append({"name": name, "pid": int(pid)})
    (home / DEV_STATE).unlink()
    return {"stopped": stopped, "rpc_url": state["rpc_url"]}


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
            if waited == pid:
                return
        except ChildProcessError:
            pass
        if not pid_alive(pid, ""):
            return
        stat = Path(f"/proc/{pid}/stat")
        if stat.is_file() and stat.read_text().split(")")[-1].split()[0] == "Z":
            return  # a zombie of another parent: it has stopped
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
