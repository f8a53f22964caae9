"""`make bench-gateway`: 100 chat completions, 10 at a time, through the official `openai`
client against `verinfer gateway` in front of one real node on Anvil (automine), with the
project's tiny model. Last stdout line: one JSON object.

``gateway_overhead_ms`` of a request = its latency as the openai client sees it (HTTP and
parsing included) minus the job's submit-to-result time (the gateway sends the submit
transaction -> its log poll sees the published result, ``verinfer.timing.job_ms``).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workers"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_REQUESTS = int(os.environ.get("BENCH_REQUESTS", "100"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "10"))
MAX_TOKENS = 16


def log(msg: str) -> None:
    """Progress on stderr (stdout ends with the JSON line)."""
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> int:
    """Run the benchmark; print the JSON figures last."""
    import openai
    from verinfer.node.devchain import deploy_protocol, start_anvil
    from verinfer.node.redis_server import start_redis

    from tests.gateway.conftest import start_gateway, stop_gateway
    from tests.node.harness import CLIENT_A, NODE_A, setup_net

    tmp = Path(tempfile.mkdtemp(prefix="verinfer-bench-gw-"))
    anvil, rpc, _ = start_anvil(log_path=tmp / "anvil.log")
    redis_proc, redis_url = start_redis(tmp / "redis")
    node = gw = None
    try:
        net = setup_net(deploy_protocol(rpc), rpc, redis_url, tmp)
        node = net.node(NODE_A, "bench-node").start()
        gw = start_gateway(net, CLIENT_A, "bench-gw", "--max-per-request", "1")
        client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0)
        client.chat.completions.create(  # warm-up: the node's first job loads its model
            model="verinfer-tiny-llama",
            messages=[{"role": "user", "content": "warm up"}],
            max_tokens=MAX_TOKENS,
        )

        def one(i: int) -> dict[str, Any]:
            t0 = time.perf_counter()
            try:
                resp = client.chat.completions.create(
                    model="verinfer-tiny-llama",
                    messages=[{"role": "user", "content": f"request {i}: what is a GPU?"}],
                    max_tokens=MAX_TOKENS,
                    seed=i,
                    timeout=120,
                )
            except openai.APIError as exc:
                return {"ok": False, "error": str(exc)}
            latency = time.perf_counter() - t0
            ext = resp.model_extra["verinfer"]
            ok = bool(ext["digest_ok"]) and resp.choices[0].message.content is not None
            job_ms = float(ext["timing"]["job_ms"])
            return {
                "ok": ok,
                "latency": latency,
                "overhead_ms": latency * 1000 - job_ms,
                "gateway_ms": float(ext["timing"]["gateway_ms"]),
                "batch": int(ext["batch"]),
            }

        log(f"{N_REQUESTS} chat completions, concurrency {CONCURRENCY}")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            runs = list(pool.map(one, range(N_REQUESTS)))
        wall = time.perf_counter() - t0
        good = [r for r in runs if r["ok"]]
        for r in runs:
            if not r["ok"]:
                log(f"failed: {r.get('error')}")
        lat = [r["latency"] for r in good] or [float("nan")]
        over = [r["overhead_ms"] for r in good] or [float("nan")]
        inside = [r["gateway_ms"] for r in good] or [float("nan")]
        figures = {
            "requests": N_REQUESTS,
            "ok": len(good),
            "p50_s": round(statistics.median(lat), 3),
            "p95_s": round(pct(lat, 0.95), 3),
            "gateway_overhead_ms_p50": round(statistics.median(over), 2),
            "gateway_overhead_ms_p95": round(pct(over, 0.95), 2),
            "gateway_internal_ms_p50": round(statistics.median(inside), 2),
            "mean_batch": round(statistics.mean(r["batch"] for r in good), 2) if good else 0,
            "wall_s": round(wall, 2),
            "concurrency": CONCURRENCY,
            "max_tokens": MAX_TOKENS,
        }
    finally:
        if gw is not None:
            stop_gateway(gw)
        if node is not None:
            node.stop()
        redis_proc.terminate()
        anvil.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures))
    return 0 if figures["ok"] == N_REQUESTS else 1


if __name__ == "__main__":
    sys.exit(main())
