"""`make bench-gateway`: 100 chat completions, 10 at a time, through the official `openai`
client against `verinfer gateway` in front of one real node on Anvil (automine), with the
project's tiny model. Last stdout line: one JSON object.

``gateway_overhead_ms`` of a request = its HTTP exchange as the client's HTTP layer sees it
(``httpx`` event hooks under the openai client: request written -> response headers in) minus
the job's submit-to-result time: from the moment the gateway sends
the submit transaction (``verinfer.timing.sent_unix``) to the moment the job's
``ResultPublished`` log is available: when an independent observer gets it (a websocket
``eth_subscribe`` to Anvil's logs, pushed when the block is mined) or the gateway notices it,
whichever is first. The gateway's own lag is thus part of its overhead, not of the job, and a
late observer does not count for the gateway. ``client_overhead_ms`` = the whole openai call
minus the job time (adds the openai package's own request building and response parsing; the
10 load threads share one interpreter lock). ``gateway_internal_ms`` is the gateway's own
figure (``verinfer.timing.gateway_ms``: time in the gateway minus its own send-to-seen time).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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


RESULT_PUBLISHED = "ResultPublished(uint256,address,bytes,uint32,uint8,bytes32,uint64,uint64)"


def observe(rpc_url: str, market: str, out_path: str) -> None:
    """Observer process: append ``job_id unix_time`` when each ResultPublished log is pushed
    (a websocket ``eth_subscribe`` to the node's logs; runs until killed)."""
    from eth_utils import keccak
    from websockets.sync.client import connect

    topic = "0x" + keccak(text=RESULT_PUBLISHED).hex()
    with connect(rpc_url.replace("http://", "ws://"), max_size=None) as ws:
        sub = {"address": market, "topics": [topic]}
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                            "params": ["logs", sub]}))  # fmt: skip
        assert "result" in json.loads(ws.recv(timeout=10))
        with open(out_path, "a", buffering=1) as out:
            out.write("ready\n")
            for message in ws:
                now = time.time()
                log_ = json.loads(message).get("params", {}).get("result")
                if log_ and len(log_.get("topics", [])) > 1:
                    out.write(f"{int(log_['topics'][1], 16)} {now:.6f}\n")


def start_observer(rpc_url: str, market: str, out_path: Path) -> subprocess.Popen:
    """Start the observer process; wait until it is subscribed."""
    proc = subprocess.Popen([sys.executable, __file__, "--observe", rpc_url, market, str(out_path)])
    deadline = time.monotonic() + 30
    while not (out_path.exists() and out_path.read_text().startswith("ready")):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the log observer did not start")
        time.sleep(0.05)
    return proc


def observed(out_path: Path) -> dict[int, float]:
    """job id -> unix time its ResultPublished log was pushed."""
    seen: dict[int, float] = {}
    for line in out_path.read_text().splitlines()[1:]:
        job, at = line.split()
        seen.setdefault(int(job), float(at))
    return seen


def p50(rows: list[dict[str, Any]], key: str) -> float:
    """Median of ``key`` over ``rows`` (NaN when empty), rounded."""
    return round(statistics.median(r[key] for r in rows), 2) if rows else float("nan")


def main() -> int:
    """Run the benchmark; print the JSON figures last."""
    import openai
    from verinfer.node.devchain import deploy_protocol, start_anvil
    from verinfer.node.localnet import CLIENT_A, NODE_A, setup_net
    from verinfer.node.redis_server import start_redis

    from tests.gateway.conftest import start_gateway, stop_gateway

    tmp = Path(tempfile.mkdtemp(prefix="verinfer-bench-gw-"))
    anvil, rpc, _ = start_anvil(log_path=tmp / "anvil.log")
    redis_proc, redis_url = start_redis(tmp / "redis")
    node = gw = observer = None
    try:
        net = setup_net(deploy_protocol(rpc), rpc, redis_url, tmp)
        node = net.node(NODE_A, "bench-node").start()
        settings = {k: v for k, v in os.environ.items() if k.startswith("VERINFER_GATEWAY_")}
        gw = start_gateway(net, CLIENT_A, "bench-gw", "--max-per-request", "1", env=settings)
        observer = start_observer(rpc, net.dev.market.address, tmp / "observed.txt")
        stamps = threading.local()  # per client thread: when httpx sent / got the headers

        def sent(_: Any) -> None:
            stamps.sent = time.perf_counter()

        def answered(_: Any) -> None:
            stamps.answered = time.perf_counter()

        http = openai.DefaultHttpxClient(event_hooks={"request": [sent], "response": [answered]})
        client = openai.OpenAI(
            base_url=gw.base_url, api_key=gw.key, max_retries=0, http_client=http
        )
        client.chat.completions.create(  # warm-up: the node's first job loads its model
            model="verinfer-tiny-llama",
            messages=[{"role": "user", "content": "warm up"}],
            max_tokens=MAX_TOKENS,
        )

        def one(i: int) -> dict[str, Any]:
            t0 = time.perf_counter()
            t0_unix = time.time()
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
            t1_unix = time.time()
            exchange = stamps.answered - stamps.sent  # HTTP request sent -> response headers
            ext = (resp.model_extra or {})["verinfer"]
            timing = ext["timing"]
            ok = bool(ext["digest_ok"]) and resp.choices[0].message.content is not None
            nan = float("nan")  # a breakdown figure an older gateway does not give
            return {
                "ok": ok,
                "latency": latency,
                "exchange": exchange,
                "job_id": int(ext["job_id"]),
                "sent_unix": float(timing["sent_unix"]),
                "gw_job_ms": float(timing["job_ms"]),
                "to_send_ms": float(timing["to_send_ms"]),
                "gateway_ms": float(timing["gateway_ms"]),
                "batch": int(ext["batch"]),
                "tx_jobs": int(ext["tx_jobs"]),
                "submit_tx": str(ext["submit_tx"]),
                "in_ms": (timing.get("arrived_unix", nan) - t0_unix) * 1000,
                "out_ms": (t1_unix - timing.get("responded_unix", nan)) * 1000,
                "queued_ms": timing.get("queued_ms", nan),
                "deliver_ms": timing.get("deliver_ms", nan),
                "respond_ms": timing.get("respond_ms", nan),
            }

        log(f"{N_REQUESTS} chat completions, concurrency {CONCURRENCY}")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            runs = list(pool.map(one, range(N_REQUESTS)))
        wall = time.perf_counter() - t0
        time.sleep(0.5)  # the observer's last lines
        seen = observed(tmp / "observed.txt")
        for r in runs:
            if r["ok"] and r["job_id"] not in seen:
                r.update(ok=False, error=f"job {r['job_id']}: the observer saw no result")
            elif r["ok"]:
                observer_ms = (seen[r["job_id"]] - r["sent_unix"]) * 1000
                # the result was there when either saw it first (a late observer must not
                # lengthen the job at the gateway's expense)
                r["job_ms"] = min(observer_ms, r["gw_job_ms"])
                r["overhead_ms"] = r["exchange"] * 1000 - r["job_ms"]
                r["client_overhead_ms"] = r["latency"] * 1000 - r["job_ms"]
                r["poll_lag_ms"] = r["gw_job_ms"] - observer_ms
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
            "client_overhead_ms_p50": p50(good, "client_overhead_ms"),
            "gateway_internal_ms_p50": round(statistics.median(inside), 2),
            "job_ms_p50": p50(good, "job_ms"),
            # where the overhead goes: request in -> submit sent; result log available ->
            # the gateway's poll sees it
            "to_send_ms_p50": p50(good, "to_send_ms"),
            "poll_lag_ms_p50": p50(good, "poll_lag_ms"),
            "in_ms_p50": p50(good, "in_ms"),
            "queued_ms_p50": p50(good, "queued_ms"),
            "deliver_ms_p50": p50(good, "deliver_ms"),
            "respond_ms_p50": p50(good, "respond_ms"),
            "out_ms_p50": p50(good, "out_ms"),
            "mean_batch": round(statistics.mean(r["batch"] for r in good), 2) if good else 0,
            "mean_tx_jobs": round(statistics.mean(r["tx_jobs"] for r in good), 2) if good else 0,
            "submit_txs": len({r["submit_tx"] for r in good}),
            "wall_s": round(wall, 2),
            "concurrency": CONCURRENCY,
            "max_tokens": MAX_TOKENS,
        }
    finally:
        if observer is not None:
            observer.terminate()
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
    if sys.argv[1:2] == ["--observe"]:
        observe(*sys.argv[2:5])
        sys.exit(0)
    sys.exit(main())
