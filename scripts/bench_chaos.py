"""`make bench-chaos`: jobs through one real node (Anvil with 1-second blocks, Redis with AOF,
the project's tiny model) while a driver SIGKILLs, at random moments, the supervisor, the
chain worker, an inference worker and Redis, and performs reorgs (`anvil_reorg`) of depth up
to confirmations + 2 that drop the node's transactions. Last stdout line: one JSON object.

Faults: CHAOS_KILLS kills (default 12: supervisor, chain worker, inference worker and Redis in
turn, order shuffled) and CHAOS_REORGS reorgs (default 4), spread at random over the time a
client submits CHAOS_JOBS jobs (default 300) at CHAOS_RATE per second (default 1) from three
accounts (each gap 0.5-1.5 x the submission time / (faults + 1), after the restarts).
After a kill the driver restarts what died, as an operator's supervisor (systemd) would: Redis
on its files, the node when its supervisor exited (a killed worker stops the node: fail fast).
Before a reorg the client pauses until the last `depth` blocks hold none of its submissions,
so a reorg drops only the node's transactions (and no job).

Figures:
* jobs: submissions on the canonical chain; finalized / refunded (cancelled or expired) /
  stuck (neither, at the end) among them. After the drain the chain's clock is moved past
  every deadline and challenge window (``evm_increaseTime``) so the keeper ends every job.
* duplicate_publishes: ResultPublished logs beyond the first of a job.
* reverted_node_txs: the node's transactions mined with status 0 on the canonical chain.
* max_senders_seen: the most chain-worker processes whose signing periods (first to last
  `tx sent/resent/replaced/no-op` log line, by pid) overlap.
* conservation_ok: every ended job splits its escrow exactly (finalized: payment + refund +
  fee + audit share = max_payment; cancelled: refund = max_payment; expired: refund =
  max_payment, plus the penalty), and the clients' prepaid balances plus the escrow of jobs
  not ended equal what they deposited minus what finalized jobs cost plus expiry penalties.
* drain_s_after_last_fault: seconds from the last fault until every job is published or
  ended (before the clock is moved).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

N_JOBS = int(os.environ.get("CHAOS_JOBS", "300"))
N_KILLS = int(os.environ.get("CHAOS_KILLS", "12"))
N_REORGS = int(os.environ.get("CHAOS_REORGS", "4"))
RATE = float(os.environ.get("CHAOS_RATE", "1"))
CONFIRMATIONS = int(os.environ.get("CHAOS_CONFIRMATIONS", "2"))
SEED = int(os.environ.get("CHAOS_SEED", "14"))
MAX_TOKENS = 4
CLAIM_S, RESULT_S = 240, 480
SENDS = re.compile(
    r"^(\S+ \S+) \S+ verinfer\.node\.sender pid=(\d+) tx (sent|resent|replaced|no-op)"
)


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def children(pid: int) -> dict[int, str]:
    """Live child processes of ``pid`` with their command lines."""
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(entry.name)] = cmd
    return out


def group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc.pid)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return out


def senders_overlap(text: str) -> int:
    """Most pids whose [first, last] signing lines overlap."""
    spans: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = SENDS.match(line)
        if m:
            spans.setdefault(m.group(2), []).append(m.group(1))
    intervals = [(min(ts), max(ts)) for ts in spans.values()]
    return max(
        (sum(a <= end and start <= b for a, b in intervals) for start, end in intervals),
        default=0,
    )


class Chaos:
    def __init__(self) -> None:
        from verinfer.node.devchain import deploy_protocol, start_anvil
        from verinfer.node.localnet import setup_net
        from verinfer.node.redis_server import start_redis

        self.tmp = Path(tempfile.mkdtemp(prefix="verinfer-chaos-"))
        self.anvil, rpc, _ = start_anvil(block_time=1, log_path=self.tmp / "anvil.log")
        self.redis_dir = self.tmp / "redis"
        self.redis_proc, redis_url = start_redis(self.redis_dir)
        self.redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        self.net = setup_net(deploy_protocol(rpc, challenge_window=60), rpc, redis_url, self.tmp)
        self.node: Any = None
        self.pause = threading.Event()
        self.hashes: list[Any] = []
        self.client_txs: set[bytes] = set()
        self.faults: list[str] = []
        self.last_fault = time.monotonic()
        self.rng = random.Random(SEED)

    # ---- parts ----
    def start_node(self) -> None:
        from verinfer.node.localnet import NODE_A

        if self.node is None:
            self.node = self.net.node(
                NODE_A,
                "chaos",
                audits="false",
                confirmations=str(CONFIRMATIONS),
                tx_stuck_after_s="3",
                sender_lease_ttl_s="5",
                capacity="1000",
                est_job_s="0.2",
                log_level="INFO",
            )
        offset = len(self.node.log())  # one log file for every start: wait for new lines
        self.node.start()
        deadline = time.monotonic() + 180
        while not all(m in self.node.log()[offset:] for m in ("sender ready", "engine ready")):
            if not self.node.running or time.monotonic() > deadline:
                raise RuntimeError(f"node did not start:\n{self.node.log()[offset:][-3000:]}")
            time.sleep(0.3)

    def ensure_up(self) -> None:
        """Restart Redis and the node if they died (an operator's systemd)."""
        from verinfer.node.redis_server import start_redis

        if self.redis_proc.poll() is not None:
            self.redis_proc, _ = start_redis(self.redis_dir, self.redis_port)
            log("redis restarted")
        if not self.node.running:
            code, group = self.node.proc.returncode, self.node.proc.pid
            # its workers stop by themselves (parent-death signal); they are not killed here
            deadline = time.monotonic() + 30
            while group_alive(group) and time.monotonic() < deadline:
                time.sleep(0.5)
            if group_alive(group):
                log(f"workers of the dead supervisor {group} still alive: {group_alive(group)}")
            self.start_node()
            log(f"node restarted (it exited with {code})")

    # ---- client ----
    def submit_loop(self) -> None:
        from verinfer.digest import SamplingParams
        from verinfer.inputs import encode_text_input
        from verinfer.node.devchain import ZERO
        from verinfer.node.localnet import CLIENT_A, CLIENT_B, CLIENT_C, PRICE

        market = self.net.dev.market.functions
        clients = [self.net.addr(c) for c in (CLIENT_A, CLIENT_B, CLIENT_C)]
        for i in range(N_JOBS):
            while self.pause.is_set():
                time.sleep(0.1)
            now = self.net.w3.eth.get_block("latest")["timestamp"]
            params = SamplingParams(max_tokens=MAX_TOKENS, temperature_milli=700, seed=i)
            fn = market.submit(
                self.net.model_id,
                encode_text_input(f"chaos job {i}: say something"),
                params.encode(),
                MAX_TOKENS * PRICE,
                ZERO,
                now + CLAIM_S,
                now + RESULT_S,
            )
            h = fn.transact({"from": clients[i % 3], "gas": 400_000})
            self.hashes.append(h)
            self.client_txs.add(bytes(h))
            time.sleep(1 / RATE)
        log(f"{N_JOBS} jobs submitted")

    # ---- faults ----
    def kill(self, what: str) -> None:
        if what == "redis":
            os.kill(self.redis_proc.pid, signal.SIGKILL)
            self.redis_proc.wait()
        elif what == "supervisor":
            os.kill(self.node.proc.pid, signal.SIGKILL)
        else:
            kids = children(self.node.proc.pid)
            pid = next((p for p, cmd in kids.items() if f":{what} " in cmd + " "), None)
            if pid is None:
                log(f"no {what} worker to kill")
                return
            os.kill(pid, signal.SIGKILL)
        log(f"SIGKILL {what}")

    def reorg(self) -> None:
        w3 = self.net.w3
        depth = self.rng.randint(max(1, CONFIRMATIONS), CONFIRMATIONS + 2)
        self.pause.set()
        try:
            time.sleep(1.0)  # the last submission is mined
            start = w3.eth.block_number
            while w3.eth.block_number < start + depth + 1:
                time.sleep(0.2)
            head = w3.eth.block_number
            for n in range(head - depth + 1, head + 1):  # none of the client's in there
                for tx in w3.eth.get_block(n)["transactions"]:
                    if bytes(tx) in self.client_txs:
                        depth = head - n
            if depth < 1:
                log("reorg skipped: the client's submissions are in the last block")
                return
            mine = sum(
                1
                for n in range(head - depth + 1, head + 1)
                for tx in w3.eth.get_block(n, full_transactions=True)["transactions"]
                if tx["from"] == self.net.addr(4)
            )
            answer = w3.provider.make_request("anvil_reorg", [depth, []])
            assert "error" not in answer, answer
            log(f"reorg depth={depth} dropped {mine} node transactions")
        finally:
            self.pause.clear()

    def drive(self) -> None:
        kinds = ["supervisor", "chain", "infer", "redis"]
        plan = [kinds[i % 4] for i in range(N_KILLS)] + ["reorg"] * N_REORGS
        self.rng.shuffle(plan)
        gap = N_JOBS / RATE / (len(plan) + 1)  # the faults spread over the submissions
        for what in plan:
            time.sleep(self.rng.uniform(0.5, 1.5) * gap)
            self.ensure_up()
            if what == "reorg":
                self.reorg()
            else:
                self.kill(what)
            self.faults.append(what)
            self.last_fault = time.monotonic()
        time.sleep(3)
        self.ensure_up()

    # ---- the run ----
    def job_ids(self) -> list[int]:
        ids = []
        events = self.net.dev.market.events.JobSubmitted()
        for h in self.hashes:
            receipt = self.net.w3.eth.get_transaction_receipt(h)
            for ev in events.process_receipt(receipt):
                ids.append(int(ev["args"]["job_id"]))
        return ids

    def run(self) -> dict[str, Any]:
        from verinfer.jobs import JobStatus

        w3, market = self.net.w3, self.net.dev.market.functions
        clients = [self.net.addr(c) for c in (1, 2, 3)]
        deposited = sum(int(market.balance_of(c).call()) for c in clients)
        first_block = w3.eth.block_number
        self.start_node()
        submitter = threading.Thread(target=self.submit_loop, daemon=True)
        submitter.start()
        self.drive()
        while submitter.is_alive():  # what dies from the last fault is restarted meanwhile
            self.ensure_up()
            submitter.join(timeout=2)
        time.sleep(3)
        ids = self.job_ids()
        ended = {JobStatus.FINALIZED, JobStatus.CANCELLED, JobStatus.EXPIRED, JobStatus.SLASHED}

        def statuses() -> list[JobStatus]:
            return [JobStatus(market.job_status(j).call()) for j in ids]

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            self.ensure_up()
            if all(s == JobStatus.PUBLISHED or s in ended for s in statuses()):
                break
            time.sleep(2)
        drain_s = time.monotonic() - self.last_fault
        log(f"drained {drain_s:.0f}s after the last fault; moving the clock past the deadlines")
        w3.provider.make_request("evm_increaseTime", [RESULT_S + 120])
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not all(s in ended for s in statuses()):
            self.ensure_up()
            time.sleep(2)
        final = statuses()
        figures = self.account(ids, final, clients, deposited, first_block)
        figures["drain_s_after_last_fault"] = round(drain_s, 1)
        figures["faults"] = {k: self.faults.count(k) for k in sorted(set(self.faults))}
        text = self.node.log()
        figures["max_senders_seen"] = senders_overlap(text)
        figures["nonce_resyncs"] = text.count("nonce resync")
        return figures

    def account(
        self, ids: list[int], final: list[Any], clients: list[str], deposited: int, first: int
    ) -> dict[str, Any]:
        from verinfer.jobs import JobStatus

        w3, dev = self.net.w3, self.net.dev
        me = self.net.addr(4)

        def by_job(name: str) -> dict[int, list[Any]]:
            out: dict[int, list[Any]] = {}
            for ev in getattr(dev.market.events, name)().get_logs(from_block=first):
                out.setdefault(int(ev["args"]["job_id"]), []).append(ev["args"])
            return out

        submitted = {j: args[0] for j, args in by_job("JobSubmitted").items()}
        fin, can, exp = by_job("JobFinalized"), by_job("JobCancelled"), by_job("JobExpired")
        pubs = by_job("ResultPublished")
        ok = True
        cost = 0
        for j in ids:
            escrow = int(submitted[j]["max_payment"])
            if j in fin:
                (a,) = fin[j]
                ok &= a["payment"] + a["refund"] + a["fee"] + a["audit_share"] == escrow
                cost += a["payment"] + a["fee"] + a["audit_share"]
            elif j in can:
                ok &= can[j][0]["refund"] == escrow
            elif j in exp:  # the escrow back plus the node's penalty (Market.expire)
                ok &= exp[j][0]["refund"] == escrow + exp[j][0]["penalty"]
                cost -= exp[j][0]["penalty"]
        balances = sum(int(dev.market.functions.balance_of(c).call()) for c in clients)
        held = sum(  # escrow of jobs not ended: still held by the market, not lost
            int(submitted[j]["max_payment"])
            for j in ids
            if j not in fin and j not in can and j not in exp
        )
        ok &= balances + held == deposited - cost
        reverted: dict[str, int] = {}
        for n in range(first, w3.eth.block_number + 1):
            for tx in w3.eth.get_block(n, full_transactions=True)["transactions"]:
                if tx["from"] == me and w3.eth.get_transaction_receipt(tx["hash"])["status"] == 0:
                    name = "other"
                    for contract in (dev.market, dev.court):
                        if tx["to"] == contract.address:
                            name = contract.decode_function_input(tx["input"])[0].fn_name
                    reverted[name] = reverted.get(name, 0) + 1
        return {
            "jobs": len(ids),
            "finalized": sum(s == JobStatus.FINALIZED for s in final),
            "refunded": sum(s in (JobStatus.CANCELLED, JobStatus.EXPIRED) for s in final),
            "stuck": sum(
                s not in (JobStatus.FINALIZED, JobStatus.CANCELLED, JobStatus.EXPIRED)
                for s in final
            ),
            "duplicate_publishes": sum(len(v) - 1 for v in pubs.values() if len(v) > 1),
            "reverted_node_txs": sum(reverted.values()),
            "reverted_by_call": reverted,
            "conservation_ok": bool(ok),
        }

    def close(self) -> None:
        from verinfer.node.devchain import stop_process

        try:
            self.net.stop_nodes()
        finally:
            for proc in (self.redis_proc, self.anvil):
                stop_process(proc, group=True)
            if os.environ.get("CHAOS_KEEP"):
                log(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    chaos = Chaos()
    try:
        figures = chaos.run()
    finally:
        chaos.close()
    keys = [
        "jobs",
        "finalized",
        "refunded",
        "stuck",
        "duplicate_publishes",
        "reverted_node_txs",
        "max_senders_seen",
        "conservation_ok",
        "drain_s_after_last_fault",
    ]
    ordered = {k: figures[k] for k in keys} | {k: v for k, v in figures.items() if k not in keys}
    print(json.dumps(ordered))


if __name__ == "__main__":
    main()
