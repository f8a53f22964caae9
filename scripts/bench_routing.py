"""`make bench-routing`: 200 jobs through the SDK router (``Client.router``) against three real
node processes on Anvil: good, slow (its inference worker waits 3 s before each batch, so it
publishes late; its keeper claims the jobs that name it 1 s before their window ends) and
flaky (only its chain worker runs: jobs that name it it never takes, open jobs it would
claim and never publish). Then the same number of jobs pinned to the good node alone (the
slow and flaky nodes stopped), for the reference p95.

The client keeps BENCH_WINDOW jobs (default 8) in flight; each job names the router's choice
as preferred node, with a 2 s exclusive window, a 7 s claim window and a 14 s result window.

Figures (last stdout line, one JSON object):
* jobs, served (a result held, digest checked), refunded (ended cancelled or expired after
  every attempt, escrow back): served + refunded = jobs.
* double_paid: jobs with more than one escrow not refunded (an attempt that was neither
  cancelled nor expired besides the served one), plus a balance check: the client's prepaid
  balance went down by exactly the escrows of the served attempts (else the difference, in
  jobs' worth, is added).
* p50_s / p95_s: wall seconds from a job's first submission to its held result.
* share_good: share of jobs whose first submission went to the good node.
* p95_s_single_good_node: p95 of the same jobs pinned to the good node alone.
BENCH_JOBS=n changes the job count.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workers"))
os.chdir(ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

JOBS = int(os.environ.get("BENCH_JOBS", "200"))
WINDOW = int(os.environ.get("BENCH_WINDOW", "8"))
EXCLUSIVE_S = 2
REQUEST = {"prompt": "route me", "max_tokens": 4, "claim_window": 7, "result_window": 14}


def _pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _run(router: Any, model: str, n: int, policy: Any) -> list[Any]:
    """Route ``n`` jobs, at most WINDOW in flight; every job until served or refunded."""
    jobs: list[Any] = []
    live: list[Any] = []
    deadline = time.monotonic() + 60 + n * 5
    while len(jobs) < n or live:
        while len(jobs) < n and len(live) < WINDOW:
            job = router.start({"model": model, **REQUEST}, policy)
            jobs.append(job)
            live.append(job)
        router.step(live)
        live = [j for j in live if not j.done]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(live)} jobs still live at the deadline")
        time.sleep(0.2)
    return jobs


def _figures(jobs: list[Any], paid: int) -> dict[str, Any]:
    served = [j for j in jobs if j.served]
    refunded = [j for j in jobs if not j.served and all(
        a.outcome in ("cancelled", "expired") for a in j.attempts)]  # fmt: skip
    double = sum(
        1 for j in jobs if sum(a.outcome not in ("cancelled", "expired") for a in j.attempts) > 1
    )
    held = sum(j.attempts[-1].escrow for j in served)
    if paid != held:  # more went out of the prepaid balance than the served escrows
        double += max(1, abs(paid - held) // max(1, jobs[0].attempts[0].escrow))
    seconds = sorted(j.seconds for j in served if j.seconds is not None)
    return {
        "jobs": len(jobs),
        "served": len(served),
        "refunded": len(refunded),
        "double_paid": double,
        "p50_s": round(_pct(seconds, 0.5), 3),
        "p95_s": round(_pct(seconds, 0.95), 3),
    }


def main() -> None:
    from ape import networks
    from ape.logging import logger

    logger.set_level("ERROR")  # no "Confirmed 0x..." line per transaction
    from verinfer.client import Client
    from verinfer.node.devchain import transact
    from verinfer.node.localnet import CHEATER, CLIENT_A, NODE_A, NODE_B, NodeProcess, local_net
    from verinfer.routing import RoutePolicy

    tmp = Path(tempfile.mkdtemp(prefix="verinfer-bench-routing-"))
    with local_net(tmp, chain="anvil") as net:
        transact(net.w3, net.dev.market.functions.set_param(3, EXCLUSIVE_S), net.addr(0))
        fast = {"deadline_margin_s": 1, "est_job_s": 0.5}
        good = net.node(NODE_A, "good", **fast).start()
        slow = net.node(NODE_B, "slow", batch_wait_s=3, batch_max_wait_s=3, **fast).start()
        flaky = NodeProcess("flaky", net.node_env(CHEATER, "flaky", **fast), tmp / "flaky.log")
        with open(flaky.log_path, "ab") as out:
            flaky.proc = subprocess.Popen(
                [sys.executable, "-m", "verinfer.cli", "node", "run", "--role", "chain"],
                env=flaky.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        net.nodes.append(flaky)
        good.wait_ready(300)
        slow.wait_ready(300)
        with networks.parse_network_choice(f"ethereum:local:{net.rpc_url}"):
            client = Client(net.dev.market.address, f"test:{CLIENT_A}")
            said: list[str] = []
            router = client.router(attempts=3, on_event=said.append, db_path=tmp / "idx.sqlite")
            (model_info,) = client.models()
            model = "0x" + model_info.model_id.hex()
            before = client.balances().prepaid
            t0 = time.monotonic()
            jobs = _run(router, model, JOBS, RoutePolicy())
            routed_s = time.monotonic() - t0
            paid = before - client.balances().prepaid
            figures = _figures(jobs, paid)
            first = [j.attempts[0].node for j in jobs]
            figures["share_good"] = round(first.count(net.addr(NODE_A)) / len(jobs), 3)
            figures["by_first_node"] = {
                name: first.count(net.addr(i))
                for name, i in (("good", NODE_A), ("slow", NODE_B), ("flaky", CHEATER))
            }
            figures["failovers"] = sum(1 for j in jobs if len(j.attempts) > 1)
            figures["routed_wall_s"] = round(routed_s, 1)
            slow.stop()
            flaky.stop()
            before = client.balances().prepaid
            single = _run(router, model, JOBS, RoutePolicy(pin=net.addr(NODE_A)))
            alone = _figures(single, before - client.balances().prepaid)
            figures["p95_s_single_good_node"] = alone["p95_s"]
            figures["p50_s_single_good_node"] = alone["p50_s"]
            figures["single_good_node_served"] = alone["served"]
            figures["p95_ratio"] = round(figures["p95_s"] / max(alone["p95_s"], 1e-9), 3)
            figures["events_sample"] = said[:3]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
