"""Routing and failover end to end on Anvil with three real node processes: good, slow (its
inference worker waits 3 s before each batch: it publishes late; not done 1 s before the
window ends, it claims the jobs that name it then and publishes when done) and flaky (only
its chain worker runs: open jobs it claims and never publishes; the jobs that name it, which
a node runs before it claims, it never takes). A job its preferred node leaves alone falls
open at the end of the exclusive window and another node serves it. After a warm-up the
router sends the jobs to the good node; with the good node stopped, its jobs fall open and
the slow node serves them, without any double payment. (The cancel-and-resubmit path, when
nobody claims, is in test_failover.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from verinfer.failover import RoutedJob, Router
from verinfer.node.devchain import transact
from verinfer.node.localnet import (
    CHEATER,
    CLIENT_A,
    CLIENT_B,
    KEEPER,
    NODE_A,
    NODE_B,
    Net,
    NodeProcess,
    wait_for,
)
from verinfer.routing import RoutePolicy

pytestmark = pytest.mark.timeout(300)

EXCLUSIVE_S = 2
REQUEST = {"prompt": "route me", "max_tokens": 4, "claim_window": 7, "result_window": 14}


@pytest.fixture(scope="module")
def nodes(net: Net) -> dict[str, NodeProcess]:
    owner = net.addr(0)
    transact(net.w3, net.dev.market.functions.set_param(3, EXCLUSIVE_S), owner)
    fast = {"deadline_margin_s": 1, "est_job_s": 0.5}
    good = net.node(NODE_A, "good", **fast).start()
    slow = net.node(NODE_B, "slow", batch_wait_s=3, batch_max_wait_s=3, **fast).start()
    flaky_env = net.node_env(CHEATER, "flaky", **fast)
    # its chain worker only, no inference worker (its inference hosts are down)
    flaky = NodeProcess("flaky", flaky_env, net.tmp / "flaky.log").start("--role", "chain")
    net.nodes.append(flaky)
    good.wait_ready(180)
    slow.wait_ready(180)
    wait_for(lambda: "sender ready" in flaky.log(), 60, "flaky ready")
    return {"good": good, "slow": slow, "flaky": flaky}


@pytest.fixture(scope="module")
def routed(net: Net, nodes: dict[str, NodeProcess], tmp_dir: Any) -> Iterator[Any]:
    """A client (Alice) with ape on the net's chain, and its router."""
    from ape import networks
    from verinfer.client import Client

    with networks.parse_network_choice(f"ethereum:local:{net.rpc_url}"):
        client = Client(net.dev.market.address, f"test:{CLIENT_A}")
        said: list[str] = []
        router = client.router(attempts=3, on_event=said.append, db_path=tmp_dir / "idx.sqlite")
        yield client, router, said


@pytest.fixture(scope="module")
def gateway(net: Net, nodes: dict[str, NodeProcess]) -> Iterator[Any]:
    """`verinfer gateway` paying from client B, routing by score (its default, named here:
    the gateway tests' helper makes it open), started once the warm-up has made the record."""
    from tests.gateway.conftest import start_gateway

    env = {"VERINFER_GATEWAY_ROUTING": "score"}
    gw = start_gateway(net, CLIENT_B, "gateway-routing", env=env)
    yield gw
    gw.proc.terminate()
    gw.proc.wait(timeout=30)


def _route(router: Router, n: int, policy: RoutePolicy | None = None) -> list[RoutedJob]:
    jobs = [router.start({"model": _model(router), **REQUEST}, policy or RoutePolicy())]
    for _ in range(n - 1):
        jobs.append(router.start({"model": _model(router), **REQUEST}, policy or RoutePolicy()))
    router.run(jobs, timeout=90)
    return jobs


def _model(router: Router) -> str:
    (model,) = router.client.models()
    return "0x" + model.model_id.hex()


def test_warm_up_then_routing__good_node_gets_the_jobs(net: Net, routed: Any) -> None:
    client, router, said = routed
    good, slow, flaky = net.addr(NODE_A), net.addr(NODE_B), net.addr(CHEATER)
    warm = _route(router, 6)
    first = [j.attempts[0].node for j in warm]
    assert sorted(first) == sorted([good, slow, flaky] * 2)  # every node tried twice
    assert all(j.served for j in warm), [j.as_dict()["attempts"] for j in warm]
    flaky_jobs = [j for j in warm if j.attempts[0].node == flaky]
    for job in flaky_jobs:  # never taken by it: open after its window, served by another node
        assert [a.outcome for a in job.attempts] == ["served"]
        assert job.result is not None and job.result.node in (good, slow)
        (claimed,) = net.events("JobClaimed", job_id=job.handle.job_id)
        (submitted,) = net.events("JobSubmitted", job_id=job.handle.job_id)
        waited = (
            net.w3.eth.get_block(claimed["blockNumber"])["timestamp"]
            - (net.w3.eth.get_block(submitted["blockNumber"])["timestamp"])
        )
        assert waited >= EXCLUSIVE_S  # claimed by another node only once the window was over
    assert any("did not claim within its exclusive window" in line for line in said)
    slow_jobs = [j for j in warm if j.attempts[0].node == slow]
    assert all(j.result is not None and j.result.node == slow for j in slow_jobs)
    router.sync(force=True)
    recs = {r.node: r for r in router.indexer.records(client.resolve_model(_model(router)))}
    assert (recs[flaky].offered, recs[flaky].missed, recs[flaky].published) == (2, 2, 0)
    assert recs[slow].publish_p50_s > recs[good].publish_p50_s
    measured = _route(router, 10)
    to_good = sum(1 for j in measured if j.attempts[0].node == good)
    assert to_good >= 9, [j.attempts[0].node for j in measured]
    assert all(j.served and j.result and j.result.digest_ok for j in measured)


def _cli(net: Net, tmp_dir: Any, *args: str) -> Any:
    from click.testing import CliRunner
    from verinfer.cli import main

    env = {
        "VERINFER_HOME": str(tmp_dir / "cli-home"),
        "VERINFER_NETWORK": f"ethereum:local:{net.rpc_url}",
        "VERINFER_MARKET": net.dev.market.address,
        "VERINFER_ACCOUNT": None,
        "VERINFER_CHAIN_ID": None,
    }
    return CliRunner(mix_stderr=False).invoke(main, list(args), env=env, catch_exceptions=False)


def test_cli_node_list_and_info__records_and_scores(net: Net, routed: Any, tmp_dir: Any) -> None:
    good, slow, flaky = net.addr(NODE_A), net.addr(NODE_B), net.addr(CHEATER)
    model = _model(routed[1])
    out = _cli(net, tmp_dir, "node", "list", "--model", model, "--json")
    assert out.exit_code == 0, out.stderr
    listed = json.loads(out.stdout)
    assert listed["model_id"] == model
    assert [n["node"] for n in listed["nodes"]] == [good, slow, flaky]  # best first
    top = listed["nodes"][0]
    assert top["published"] >= 12 and top["missed"] == 0 and top["score"] > 0.7
    assert listed["nodes"][2]["published"] == 0 and listed["nodes"][2]["score"] < 0.4
    human = _cli(net, tmp_dir, "node", "list", "--model", model)
    assert human.exit_code == 0 and "score" in human.stdout and "warm-up" not in human.stdout
    out = _cli(net, tmp_dir, "node", "list", "--model", model, "--exclude", good, "--json")
    assert [n["node"] for n in json.loads(out.stdout)["nodes"]] == [slow, flaky]
    info = _cli(net, tmp_dir, "node", "info", flaky, "--json")
    assert info.exit_code == 0, info.stderr
    (record,) = json.loads(info.stdout)["record"]
    assert (record["offered"], record["missed"], record["model_id"]) == (2, 2, model)
    placed = _cli(net, tmp_dir, "job", "submit", model, "hi", "--route", "--max-tokens", "4",
                  "--wait", "60", "--json")  # fmt: skip
    assert placed.exit_code == 0, placed.stderr
    sent = json.loads(placed.stdout)
    assert sent["served"] and sent["node"] == good and len(sent["attempts"]) == 1
    assert sent["result"]["digest_ok"] and sent["attempts"][0]["outcome"] == "served"
    clash = _cli(net, tmp_dir, "job", "submit", model, "hi", "--route", "--node", slow)
    assert clash.exit_code == 1
    assert (
        clash.stderr.strip()
        == "verinfer: --route chooses the node itself: drop --node and --private"
    )
    bad = _cli(net, tmp_dir, "node", "list", "--model", model, "--weights", "speed=1")
    assert bad.exit_code == 1
    assert bad.stderr.strip() == (
        "verinfer: bad --weights: unknown weight 'speed' (reliability, latency, price, stake)"
    )


def test_gateway_providers__read_only_records_per_model(
    net: Net, routed: Any, gateway: Any
) -> None:
    import httpx

    model, gw = _model(routed[1]), gateway
    auth = {"Authorization": f"Bearer {gw.key}"}
    answer = httpx.get(f"{gw.base_url}/providers", params={"model": model}, headers=auth)
    assert answer.status_code == 200, answer.text
    (entry,) = answer.json()["data"]
    assert entry["model_id"] == model
    nodes = [p["node"] for p in entry["providers"]]
    assert nodes[0] == net.addr(NODE_A) and set(nodes) == {
        net.addr(NODE_A), net.addr(NODE_B), net.addr(CHEATER)
    }  # fmt: skip
    assert entry["providers"][0]["published"] >= 12
    assert httpx.get(f"{gw.base_url}/providers").status_code == 401
    unknown = httpx.get(f"{gw.base_url}/providers", params={"model": "nope"}, headers=auth)
    assert unknown.status_code == 404


def test_gateway_completions__routed_by_the_record__pin__bad_pin_400__open(
    net: Net, routed: Any, gateway: Any
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    good, slow, flaky = net.addr(NODE_A), net.addr(NODE_B), net.addr(CHEATER)
    zero = "0x" + "00" * 20
    model, gw = _model(routed[1]), gateway
    auth = {"Authorization": f"Bearer {gw.key}"}

    def complete(timeout: str = "30", **extra: Any) -> httpx.Response:
        body = {"model": model, "prompt": "route me", "max_tokens": 4, **extra}
        headers = {**auth, "x-verinfer-timeout": timeout}
        return httpx.post(f"{gw.base_url}/completions", json=body, headers=headers, timeout=60)

    def preferred(job_id: int) -> str:
        (event,) = net.events("JobSubmitted", job_id=job_id)
        return str(event["args"]["preferred_node"])

    assert "routing: by track record" in gw.log()
    with ThreadPoolExecutor(4) as pool:  # the record's best, and pinned nodes, side by side
        routed_answer = pool.submit(complete)
        to_flaky = pool.submit(complete, "8", node=flaky)  # it runs such a job before claiming
        not_good = pool.submit(complete, exclude_nodes=[good])
        pinned = pool.submit(complete, node=slow.lower()).result()
    ext = not_good.result().json()["verinfer"]  # the next best by the record
    assert (ext["routed_to"], ext["node"]) == (slow, slow) and preferred(ext["job_id"]) == slow
    # the flaky node (no inference worker alive: it does not secure the job) let its window
    # pass: the job fell open, the gateway waited on, another node served it
    fell = to_flaky.result()
    assert fell.status_code == 200, fell.text
    ext = fell.json()["verinfer"]
    assert ext["routed_to"] == flaky and ext["node"] in (good, slow)
    assert preferred(ext["job_id"]) == flaky
    said = f"job {ext['job_id']}: node {flaky} did not claim it within its exclusive window"
    assert said in gw.log()  # the poll saw it open past the window, or another claimed it
    for answer in (routed_answer.result(), complete()):
        assert answer.status_code == 200, answer.text
        ext = answer.json()["verinfer"]
        assert (ext["routed_to"], ext["node"], ext["digest_ok"]) == (good, good, True)
        assert preferred(ext["job_id"]) == good
    assert pinned.status_code == 200, pinned.text
    ext = pinned.json()["verinfer"]
    assert (ext["routed_to"], ext["node"]) == (slow, slow)
    assert preferred(ext["job_id"]) == slow
    jobs = len(net.events("JobSubmitted"))
    stranger = net.addr(KEEPER)  # no node
    bad = complete(node=stranger)
    assert bad.status_code == 400
    assert bad.json()["error"] == {
        "message": f"node {stranger} is not an eligible node of model verinfer-tiny-llama "
        "(staked, serving it, not slashed: GET /v1/providers?model=... lists them)",
        "type": "invalid_request_error",
        "param": "node",
        "code": "node_not_eligible",
    }
    assert len(net.events("JobSubmitted")) == jobs  # nothing sent, nothing paid
    # open: no preferred node (the flaky node may claim it and never publish: a short wait)
    opened = complete(timeout="3", routing="open")
    assert opened.status_code in (200, 504), opened.text
    (event,) = net.events("JobSubmitted")[jobs:]
    assert event["args"]["client"] == net.addr(CLIENT_B)
    assert event["args"]["preferred_node"] == zero
    if opened.status_code == 200:
        assert opened.json()["verinfer"]["routed_to"] is None
    else:  # claimed by the flaky node, or still open
        said = opened.json()["error"]["message"]
        assert said.startswith(f"job {event['args']['job_id']} has no result after 3s")


def test_good_node_stopped__jobs_fail_over__nothing_paid_twice(
    net: Net, nodes: dict[str, NodeProcess], routed: Any
) -> None:
    client, router, said = routed
    good, slow = net.addr(NODE_A), net.addr(NODE_B)
    assert nodes["good"].stop() == 0
    assert nodes["flaky"].stop() == 0  # else it may claim the opened jobs (and expire them)
    said.clear()
    before = client.balances()
    jobs = _route(router, 2, RoutePolicy(exclude=frozenset({net.addr(CHEATER).lower()})))
    after = client.balances()
    for job in jobs:
        assert job.served, job.as_dict()["attempts"]
        assert job.attempts[0].node == good and [a.outcome for a in job.attempts] == ["served"], (
            nodes["slow"].log()[-6000:]
        )
        assert job.result is not None and job.result.node == slow
        (claimed,) = net.events("JobClaimed", job_id=job.handle.job_id)
        assert claimed["args"]["node"] == slow
    assert any("did not claim within its exclusive window" in line for line in said)
    assert "open job=" in nodes["slow"].log()  # the slow node took them when they fell open
    # the prepaid balance paid the served jobs' escrows and nothing else
    assert before.prepaid - after.prepaid == sum(j.attempts[0].escrow for j in jobs)
