"""The web page in a real browser (Debian's chromium driven by Playwright) against a real Anvil,
the real contracts and real `verinfer node run` processes serving the tiny model: an honest node
and a cheater (the dev/test setting VERINFER_DEV_CHEAT_WEIGHTS). The wallet is the test-only
injected EIP-1193 provider (test_only_eip1193_provider.js): Anvil signs with a dev key.

Screenshots of every step go to the pytest tmp dir (``web-screens*``), printed on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from verinfer.digest import FinishReason
from verinfer.inputs import decode_input, encode_chat_input
from verinfer.jobs import JobStatus, submitted_time
from verinfer.node.devchain import UNIT, transact
from verinfer.node.localnet import (
    CHEATER,
    CLIENT_C,
    NODE_A,
    NODE_B,
    PRICE,
    Net,
    local_net,
    wait_for,
)
from verinfer.privacy import (
    EncryptionKey,
    node_open_input,
    private_result_digest,
    seal_output,
)
from verinfer.tokenizers_local import decode_tokens

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("VERINFER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_TOKENS = 8
UNSERVED = "verinfer-web-unserved"
NODE_B_KEY = EncryptionKey(b"\x42" * 32)  # node B's encryption key (a fixed test secret)

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - make setup installs it
    pytest.skip(
        "browser tests skipped: playwright is not installed (make setup installs it)",
        allow_module_level=True,
    )
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"browser tests skipped: no chromium at {CHROMIUM} (make setup installs Debian's "
        "chromium; or set VERINFER_CHROMIUM)",
        allow_module_level=True,
    )


def fmt(base_units: int) -> str:
    """Base units as the page prints them (viem's formatUnits + the symbol)."""
    whole, frac = divmod(base_units, UNIT)
    text = f"{whole}.{frac:018d}".rstrip("0").rstrip(".") if frac else str(whole)
    return f"{text} vUSD"


def units(base_units: int) -> str:
    """Token units as the models table prints them (the symbol in the column's header)."""
    return fmt(base_units).removesuffix(" vUSD")


class Miner:
    """A block every ``every`` seconds, as a real chain makes them (Anvil here mines only on
    a transaction): the court draws its verifier from a block after the dispute's."""

    def __init__(self, net: Net, every: float = 1.0) -> None:
        self.net, self.every = net, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.net.dev.mine()
            except Exception:
                return


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """Anvil + Redis + the protocol; node B leaves the market (so the verifier drawn for a
    dispute of the cheater is node A, whose process runs); node A and the cheater run."""
    with local_net(tmp_path_factory.mktemp("web-net"), chain="anvil") as dev_net:
        transact(
            dev_net.w3,
            dev_net.dev.market.functions.stop_serving(dev_net.model_id),
            dev_net.addr(NODE_B),
        )
        # tokens in the client's wallet (its prepaid balance was funded by setup_net)
        transact(
            dev_net.w3,
            dev_net.dev.token.functions.mint(dev_net.addr(CLIENT_C), 20 * UNIT),
            dev_net.addr(CLIENT_C),
        )
        nodes = [dev_net.node(NODE_A, "node-a"), dev_net.node(CHEATER, "cheater", cheat=True)]
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
        miner = Miner(dev_net)
        miner.thread.start()
        try:
            yield dev_net
        finally:
            miner.stop.set()
            miner.thread.join(timeout=5)


@pytest.fixture(scope="module")
def site(net: Net) -> Iterator[str]:
    """`verinfer web`'s server in a thread, configured for this market (its track-record
    index in the net's tmp dir)."""
    from verinfer.web import Providers, page_config, serve_in_thread

    config = page_config(net.rpc_url, net.dev.market.address, 31337, 0)
    providers = Providers(config, net.tmp / "web-index.sqlite")
    server = serve_in_thread(config, providers=providers)
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    providers.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-screens")


def open_page(browser: Any, site: str, net: Net, account: int, chain_id: int | None = None) -> Page:
    """A new page with the test-only wallet of dev account ``account`` injected."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    wallet = {"rpcUrl": net.rpc_url, "account": net.addr(account), "chainId": chain_id}
    page.add_init_script(f"window.__VERINFER_TEST_WALLET__ = {json.dumps(wallet)};")
    page.add_init_script(path=str(HERE / "test_only_eip1193_provider.js"))
    page.goto(site)
    return page


@pytest.fixture(scope="module")
def page(browser: Any, site: str, net: Net, screens: Path) -> Iterator[Page]:
    """The client's page, connected."""
    pg = open_page(browser, site, net, CLIENT_C)
    pg.click("#connect")
    expect(pg.locator("#net-status")).to_contain_text("right network")
    yield pg
    pg.screenshot(path=str(screens / "last.png"), full_page=True)
    pg.close()


@pytest.fixture(scope="module")
def unserved(net: Net) -> bytes:
    """A model only node B serves, with a real encryption key; B runs no process (the tests
    play its part where they need one). Returns the model id."""
    market = net.dev.market.functions
    transact(net.w3, market.register_model(UNSERVED, "r1", b"\x01" * 32), net.addr(0))
    (reg,) = [e for e in net.events("ModelRegistered") if e["args"]["name"] == UNSERVED]
    transact(net.w3, market.serve_model(reg["args"]["model_id"], PRICE), net.addr(NODE_B))
    transact(
        net.w3,
        market.update_node(NODE_B_KEY.pubkey, "http://node-b.invalid"),
        net.addr(NODE_B),
    )
    return bytes(reg["args"]["model_id"])


def shot(page: Page, screens: Path, name: str) -> None:
    page.screenshot(path=str(screens / f"{name}.png"), full_page=True)


def test_connect__shows_network_market_token_models_nodes_prices_stakes(
    page: Page, net: Net, screens: Path
) -> None:
    shot(page, screens, "01-connected")
    expect(page.locator("#net-chain")).to_contain_text("31337")
    expect(page.locator("#net-market")).to_have_text(net.dev.market.address)
    expect(page.locator("#net-token")).to_contain_text("vUSD")
    expect(page.locator("#bal-prepaid")).to_have_text(fmt(1_000 * UNIT))
    expect(page.locator("#bal-wallet")).to_have_text(fmt(20 * UNIT))
    models = page.locator("#models")
    expect(models).to_contain_text("verinfer-tiny-llama")
    for index, state in ((NODE_A, "active"), (CHEATER, "active"), (NODE_B, None)):
        row = models.locator("tr", has=page.locator(f"code[title='{net.addr(index)}']"))
        if state is None:  # node B left the market: not listed
            expect(row).to_have_count(0)
        else:
            cells = row.locator("td")  # node, score, served, p50, price, stake, seen, state
            expect(cells.nth(4)).to_have_text(units(PRICE))  # vUSD: in the column's header
            expect(cells.nth(5)).to_have_text(units(2_000 * UNIT))
            expect(cells.nth(7)).to_have_text(state)


def test_bad_input__rejected_signature__too_small_balance__one_line_each(
    page: Page, net: Net, screens: Path
) -> None:
    page.fill("#amount", "100000")
    page.click("#withdraw")
    expect(page.locator("#balance-step")).to_have_text(
        "Balance too small: your prepaid balance is 1000 vUSD, you asked for 100000 vUSD."
    )
    page.fill("#amount", "abc")
    page.click("#deposit")
    expect(page.locator("#balance-step")).to_have_text("Enter an amount of vUSD above 0.")
    page.evaluate("window.__VERINFER_TEST_WALLET__.reject = true")
    page.fill("#amount", "1")
    page.click("#deposit")
    expect(page.locator("#balance-step")).to_have_text(
        "You rejected the signature: nothing was sent."
    )
    shot(page, screens, "02-rejected")
    page.evaluate("window.__VERINFER_TEST_WALLET__.reject = false")
    market = net.dev.market.functions
    assert market.balance_of(net.addr(CLIENT_C)).call() == 1_000 * UNIT


def test_wrong_network__banner_and_switch(browser: Any, site: str, net: Net, screens: Path) -> None:
    other = open_page(browser, site, net, CLIENT_C, chain_id=1)
    other.click("#connect")
    expect(other.locator("#banner")).to_contain_text(
        "Wrong network: your wallet is on chain 1, this market is on chain 31337."
    )
    expect(other.locator("#send")).to_be_disabled()
    shot(other, screens, "03-wrong-network")
    other.click("#switch")
    expect(other.locator("#net-status")).to_contain_text("right network")
    expect(other.locator("#banner")).to_be_hidden()
    other.close()


def test_deposit__approves_then_deposits(page: Page, net: Net, screens: Path) -> None:
    client = net.addr(CLIENT_C)
    page.fill("#amount", "5")
    page.click("#deposit")
    expect(page.locator("#balance-step")).to_have_text("Deposited 5 vUSD.")
    expect(page.locator("#bal-prepaid")).to_have_text(fmt(1_005 * UNIT))
    expect(page.locator("#bal-wallet")).to_have_text(fmt(15 * UNIT))
    shot(page, screens, "04-deposited")
    assert net.dev.market.functions.balance_of(client).call() == 1_005 * UNIT
    assert net.dev.token.functions.balanceOf(client).call() == 15 * UNIT
    (dep,) = net.events("Deposited", account=client)[-1:]
    assert dep["args"]["amount"] == 5 * UNIT and dep["args"]["balance"] == 1_005 * UNIT
    approvals = net.dev.token.events.Approval().get_logs(from_block=0)
    assert any(a["args"]["owner"] == client and a["args"]["value"] == 5 * UNIT for a in approvals)


def chat(page: Page, node: str, text: str) -> Any:
    """Send ``text`` to ``node``; returns the new answer's locator once it is held."""
    before = page.locator(".msg.assistant").count()
    page.select_option("#node", node)
    page.fill("#max-tokens", str(MAX_TOKENS))
    expect(page.locator("#est-cost")).to_have_text(fmt(MAX_TOKENS * PRICE))
    page.fill("#message", text)
    page.click("#send")
    answer = page.locator(".msg.assistant").nth(before)
    expect(answer.locator(".details")).to_contain_text("held (digest checked)", timeout=90_000)
    return answer


def test_chat__real_answer_cost_refund__then_dispute_the_cheater__slash__withdraw(
    page: Page, net: Net, screens: Path
) -> None:
    client = net.addr(CLIENT_C)
    # one message to the honest node: the answer the node computed, decoded in the page
    first = chat(page, net.addr(NODE_A), "What is the capital of France?")
    job1 = int(first.get_attribute("data-job") or 0)
    shot(page, screens, "05-answer")
    rec1 = net.record(job1)
    assert rec1.node == net.addr(NODE_A) and rec1.client == client
    assert decode_input(rec1.input) == [
        {"role": "user", "content": "What is the capital of France?"}
    ]
    text1 = decode_tokens(rec1.model_id, rec1.output_token_ids)
    assert text1 is not None
    expect(first.locator(".answer-text")).to_have_text(text1)
    cost = rec1.output_tokens * PRICE
    expect(first.locator(".cost")).to_have_text(fmt(cost))
    expect(first.locator(".refund")).to_have_text(fmt(MAX_TOKENS * PRICE - cost))
    expect(first.locator(".details")).to_contain_text(f"job {job1}")
    assert net.status(job1) == JobStatus.PUBLISHED

    # the conversation goes on, to the cheater: its input carries the history in chat form
    second = chat(page, net.addr(CHEATER), "And of Germany?")
    job2 = int(second.get_attribute("data-job") or 0)
    rec2 = net.record(job2)
    assert rec2.node == net.addr(CHEATER)
    assert decode_input(rec2.input) == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": text1},
        {"role": "user", "content": "And of Germany?"},
    ]

    # dispute it: the bond is shown before signing; node A's verdict; the cheater slashed
    second.locator(".dispute-open").click()
    expect(second.locator(".bond")).to_have_text(fmt(100 * UNIT))
    shot(page, screens, "06-dispute-offer")
    second.locator(".dispute-sign").click()
    expect(second.locator(".verdict")).to_contain_text("the answer is invalid", timeout=90_000)
    shot(page, screens, "07-verdict")
    (posted,) = net.events("VerdictPosted", "court", job_id=job2)
    assert posted["args"]["verifier"] == net.addr(NODE_A) and posted["args"]["valid"] is False
    windows = (
        net.dev.market.functions.challenge_window().call()
        + net.dev.court.functions.appeal_window().call()
    )
    net.dev.mine(seconds=windows + 1)  # time passes; node A's keeper settles
    expect(second.locator(".settled")).to_contain_text(
        f"slashed {fmt(2_000 * UNIT)}", timeout=90_000
    )
    shot(page, screens, "08-slashed")
    assert net.status(job2) == JobStatus.SLASHED
    (slash,) = net.events("NodeSlashed", job_id=job2)
    assert slash["args"]["node"] == net.addr(CHEATER) and slash["args"]["amount"] == 2_000 * UNIT
    (slashed,) = net.events("JobSlashed", job_id=job2)
    expect(second.locator(".settled")).to_contain_text(
        f"you were refunded {fmt(slashed['args']['refund'])}"
    )

    # past jobs: both, with their statuses
    expect(page.locator(f"#jobs-table tr[data-job='{job2}'] .status")).to_have_text(
        "SLASHED", timeout=10_000
    )
    expect(page.locator(f"#jobs-table tr[data-job='{job1}'] .status")).to_have_text(
        "FINALIZED", timeout=30_000
    )
    # ... and the prepaid balance after each: the market's balance at the job's last event
    for job in (job1, job2):
        last = max(
            e["blockNumber"]
            for name in ("JobSubmitted", "JobClaimed", "ResultPublished", "JobFinalized",
                         "JobVerifying", "JobSlashed")
            for e in net.events(name, job_id=job)
        )  # fmt: skip
        after = net.dev.market.functions.balance_of(client).call(block_identifier=last)
        expect(page.locator(f"#jobs-table tr[data-job='{job}'] td").nth(5)).to_have_text(fmt(after))

    # collect the credits (bond back + reward), then withdraw 5 of the prepaid balance
    claimable = net.dev.market.functions.claimable(client).call()
    assert claimable > 100 * UNIT
    wallet = net.dev.token.functions.balanceOf(client).call()
    page.click("#collect")
    expect(page.locator("#balance-step")).to_have_text(
        f"Collected {fmt(claimable)} to your wallet."
    )
    prepaid = net.dev.market.functions.balance_of(client).call()
    page.fill("#amount", "5")
    page.click("#withdraw")
    expect(page.locator("#balance-step")).to_have_text("Withdrew 5 vUSD to your wallet.")
    expect(page.locator("#bal-prepaid")).to_have_text(fmt(prepaid - 5 * UNIT))
    shot(page, screens, "09-withdrawn")
    assert net.dev.token.functions.balanceOf(client).call() == wallet + claimable + 5 * UNIT
    assert net.dev.market.functions.claimable(client).call() == 0
    (out,) = net.events("DepositWithdrawn", account=client)
    assert out["args"]["amount"] == 5 * UNIT


def test_rpc_drops__banner__then_back(page: Page, net: Net, screens: Path) -> None:
    page.route(lambda url: url.startswith(net.rpc_url), lambda route: route.abort())
    try:
        expect(page.locator("#banner")).to_contain_text(
            f"The RPC does not answer ({net.rpc_url})", timeout=15_000
        )
        shot(page, screens, "10-rpc-down")
    finally:
        page.unroute_all()
    expect(page.locator("#banner")).to_be_hidden(timeout=15_000)


def test_no_node_claims__cancel_shows_the_refund(
    browser: Any, site: str, net: Net, screens: Path, unserved: bytes
) -> None:
    """A model only node B serves, and node B runs no process: nobody claims."""
    client = net.addr(CLIENT_C)
    market = net.dev.market.functions
    other = open_page(browser, site, net, CLIENT_C)
    other.click("#connect")
    expect(other.locator("#net-status")).to_contain_text("right network")
    other.select_option("#model", label="verinfer-web-unserved@r1")
    other.fill("#max-tokens", "4")
    other.fill("#message", "Anyone there?")
    other.click("#send")
    answer = other.locator(".msg.assistant").first
    expect(answer).to_contain_text("submitted: waiting for a node to claim the job")
    job = int(answer.get_attribute("data-job") or 0)
    prepaid = market.balance_of(client).call()
    answer.locator(".cancel").click()
    expect(other.locator("#chat-step")).to_have_text(
        f"Job {job} cancelled: {fmt(4 * PRICE)} back in your prepaid balance."
    )
    expect(answer.locator(".status")).to_have_text("CANCELLED")
    expect(answer.locator(".refund")).to_have_text(fmt(4 * PRICE))
    shot(other, screens, "11-cancelled")
    assert net.status(job) == JobStatus.CANCELLED
    (cancelled,) = net.events("JobCancelled", job_id=job)
    assert cancelled["args"]["refund"] == 4 * PRICE
    assert market.balance_of(client).call() == prepaid + 4 * PRICE
    other.close()


def test_private_job__sealed_to_the_node_in_the_page__opened_and_checked_in_the_page(
    browser: Any, site: str, net: Net, screens: Path, unserved: bytes
) -> None:
    other = open_page(browser, site, net, CLIENT_C)
    other.click("#connect")
    expect(other.locator("#net-status")).to_contain_text("right network")
    other.check("#private")
    # node A registered no usable encryption key: refused before anything is signed
    other.select_option("#node", net.addr(NODE_A))
    other.fill("#message", "A secret question")
    other.click("#send")
    expect(other.locator("#chat-step")).to_have_text(
        "This node has no usable encryption key: it cannot take private jobs."
    )
    other.select_option("#model", label=f"{UNSERVED}@r1")
    other.select_option("#node", net.addr(NODE_B))
    other.fill("#max-tokens", "4")
    other.click("#send")
    answer = other.locator(".msg.assistant").first
    expect(answer).to_contain_text("submitted: waiting for a node to claim the job")
    job = int(answer.get_attribute("data-job") or 0)
    record = net.record(job)
    # node B's side, with privacy.py: the page's envelope opens to the chat input
    inner, job_key = node_open_input(record.input, NODE_B_KEY.secret)
    assert inner == encode_chat_input([{"role": "user", "content": "A secret question"}])
    assert record.submitted_at >= 2**63  # the market flagged it private
    tokens = [5, 6, 7]
    sealed = seal_output(tokens, job_key, job)
    digest = private_result_digest(
        job, unserved, record.input, record.params, tokens, FinishReason.STOP, job_key
    )
    transact(
        net.w3,
        net.dev.market.functions.claim_and_publish(
            job, record.as_struct(), sealed, len(tokens), int(FinishReason.STOP), digest
        ),
        net.addr(NODE_B),
    )
    expect(answer.locator(".details")).to_contain_text("held (digest checked)")
    expect(answer.locator(".details")).to_contain_text(f"job {job} (private)")
    expect(answer.locator(".answer-text")).to_have_text(
        "no tokenizer for this model here: token ids 5 6 7"
    )
    expect(answer.locator(".cost")).to_have_text(fmt(3 * PRICE))
    shot(other, screens, "12-private")
    assert net.status(job) == JobStatus.PUBLISHED
    (published,) = net.events("ResultPublished", job_id=job)
    assert published["args"]["result_digest"] == digest
    other.close()


# ---- the nodes' track record: providers.json (verinfer.web.Providers) and the models table ----
def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as res:
        assert res.status == 200 and res.headers["Content-Type"] == "application/json"
        return dict(json.loads(res.read()))


def ago(seconds: int) -> str:
    """A time span as the page writes it (providers.js ``ago``)."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def providers_of(snapshot: dict[str, Any], model_id: bytes) -> list[dict[str, Any]]:
    (entry,) = [m for m in snapshot["data"] if m["model_id"] == "0x" + model_id.hex()]
    return list(entry["providers"])


def fresh_providers(site: str, model_id: bytes, until: Any) -> dict[str, Any]:
    """providers.json once ``until(providers of model_id)`` holds (the server syncs at most
    every 5 s)."""
    snapshot: dict[str, Any] = {}

    def ready() -> bool:
        nonlocal snapshot
        snapshot = get_json(site + "providers.json")
        return bool(snapshot["data"]) and until(providers_of(snapshot, model_id))

    wait_for(ready, timeout=20, what="providers.json to show the jobs")
    return snapshot


@pytest.fixture(scope="module")
def node_b_back(net: Net) -> str:
    """Node B serves the small model again (no process runs for it): a node with no record
    there, which the router tries first (warm-up). Returns its address."""
    transact(net.w3, net.dev.market.functions.serve_model(net.model_id, PRICE), net.addr(NODE_B))
    return net.addr(NODE_B)


def test_providers_json__real_jobs__records_and_scores_ranked(
    site: str, net: Net, node_b_back: str
) -> None:
    """Node A served the chat job (the honest node's process), the cheater was slashed out,
    node B is back with no record: B first (warm-up, untried), then A; the numbers from the
    market's events, the score by docs/routing.md's formula."""
    a = net.addr(NODE_A)
    claims = net.events("JobClaimed", node=a)
    assert len(claims) == 1  # the chat test's first job
    job = claims[0]["args"]["job_id"]
    (sub,) = net.events("JobSubmitted", job_id=job)
    (pub,) = net.events("ResultPublished", job_id=job)
    snapshot = fresh_providers(
        site, net.model_id, lambda ps: [p["node"] for p in ps] == [node_b_back, a]
    )
    assert snapshot["market"] == net.dev.market.address and snapshot["stale"] is False
    assert (snapshot["token"], snapshot["decimals"]) == ("vUSD", 18)
    assert "error" not in snapshot
    head = net.w3.eth.block_number
    assert 0 < snapshot["indexed_block"] <= head
    assert snapshot["indexed_time"] == net.w3.eth.get_block(snapshot["indexed_block"])["timestamp"]
    assert abs(snapshot["taken_at"] - time.time()) < 30
    b_rec, a_rec = providers_of(snapshot, net.model_id)
    latency = pub["args"]["published_at"] - submitted_time(sub["args"]["submitted_at"])
    seen = max(net.w3.eth.get_block(e["blockNumber"])["timestamp"] for e in (claims[0], pub))
    assert {k: a_rec[k] for k in (
        "node", "model_id", "serving", "slashed_out", "price_per_token", "stake", "offered",
        "missed", "claimed", "published", "finalized", "expired", "disputed", "slashed",
        "publish_p50_s", "last_seen", "warming_up")} == {
        "node": a, "model_id": "0x" + net.model_id.hex(), "serving": True, "slashed_out": False,
        "price_per_token": PRICE, "stake": 2_000 * UNIT, "offered": 1, "missed": 0,
        "claimed": 1, "published": 1, "finalized": 1, "expired": 0, "disputed": 0, "slashed": 0,
        "publish_p50_s": float(latency), "last_seen": seen, "warming_up": True,
    }  # fmt: skip
    # docs/routing.md: reliability (1 + 1) / (2 + 1), latency 10 / (10 + p50), price and stake 1
    expected = (2 / 3) ** 0.6 * (10 / (10 + latency)) ** 0.25
    assert a_rec["score"] == round(expected, 4)
    assert a_rec["reliability"] == round(2 / 3, 4)
    assert (b_rec["node"], b_rec["claimed"], b_rec["offered"]) == (node_b_back, 0, 0)
    assert b_rec["warming_up"] is True and b_rec["score"] == round(0.5**0.85, 4)
    # the cheater, slashed out, is not offered; the model B alone serves lists B
    assert net.addr(CHEATER) not in [p["node"] for p in providers_of(snapshot, net.model_id)]
    registered = {e["args"]["name"]: e for e in net.events("ModelRegistered")}
    assert [m["model"] for m in snapshot["data"]] == list(registered)


def test_models__track_record_next_to_each_model__best_first__new_node(
    page: Page, site: str, net: Net, node_b_back: str, screens: Path
) -> None:
    a = net.addr(NODE_A)
    snapshot = fresh_providers(site, net.model_id, lambda ps: len(ps) == 2)
    a_rec = providers_of(snapshot, net.model_id)[1]
    model = page.locator(f".model[data-model='0x{net.model_id.hex()}']")
    rows = model.locator("tr")
    # best first: B (untried, warm-up) then A; the cheater, slashed out, left the market
    expect(rows.nth(1).locator("code")).to_have_attribute("title", node_b_back, timeout=25_000)
    expect(rows.nth(2).locator("code")).to_have_attribute("title", a)
    expect(rows).to_have_count(3)
    expect(page.locator("#record-status")).to_contain_text("track record at block")
    b_cells, a_cells = (rows.nth(i).locator("td") for i in (1, 2))
    expect(b_cells.nth(1)).to_have_text("new")
    expect(a_cells.nth(1)).to_have_text(f"{a_rec['score']:.3f} warm-up")
    expect(a_cells.nth(2)).to_have_text("100% 1/1")
    expect(a_cells.nth(3)).to_have_text(f"{a_rec['publish_p50_s']:g} s")
    expect(rows.nth(0).locator("th").nth(4)).to_have_text("pricevUSD / token")  # the unit
    expect(a_cells.nth(4)).to_have_text(units(PRICE))
    expect(a_cells.nth(5)).to_have_text(units(2_000 * UNIT))
    # last seen, before the newest indexed block (the chat test moved the chain's clock an hour)
    expect(a_cells.nth(6)).to_have_text(ago(snapshot["indexed_time"] - a_rec["last_seen"]))
    expect(b_cells.nth(2)).to_have_text("—")
    expect(b_cells.nth(7)).to_have_text("active")
    shot(page, screens, "13-track-record")


def test_node_picker__ordered_by_record__best_preselected__the_persons_choice_kept(
    browser: Any, site: str, net: Net, node_b_back: str, unserved: bytes
) -> None:
    other = open_page(browser, site, net, CLIENT_C)
    other.click("#connect")
    expect(other.locator("#net-status")).to_contain_text("right network")
    options = other.locator("#node option")
    expect(options).to_have_count(3)
    expect(options.nth(1)).to_have_attribute("value", node_b_back)
    expect(options.nth(1)).to_contain_text("new")
    expect(options.nth(2)).to_have_attribute("value", net.addr(NODE_A))
    expect(options.nth(2)).to_contain_text("score 0.")
    # pre-selected: the best node with a record of its own (B, first in the routing order, is
    # untried)
    expect(other.locator("#node")).to_have_value(net.addr(NODE_A))
    other.select_option("#node", node_b_back)  # the person's choice ...
    other.select_option("#model", label=f"{UNSERVED}@r1")
    expect(other.locator("#node")).to_have_value(node_b_back)  # its only node
    other.select_option("#model", index=0)
    expect(other.locator("#node")).to_have_value(node_b_back)  # ... kept
    other.close()


def test_providers_json_fails__page_usable__track_record_unavailable(
    browser: Any, site: str, net: Net, screens: Path
) -> None:
    other = browser.new_page(viewport={"width": 1280, "height": 900})
    other.route("**/providers.json", lambda route: route.fulfill(status=500, body="boom"))
    wallet = {"rpcUrl": net.rpc_url, "account": net.addr(CLIENT_C), "chainId": None}
    other.add_init_script(f"window.__VERINFER_TEST_WALLET__ = {json.dumps(wallet)};")
    other.add_init_script(path=str(HERE / "test_only_eip1193_provider.js"))
    other.goto(site)
    other.click("#connect")
    expect(other.locator("#record-status")).to_have_text("track record unavailable")
    row = other.locator("#models tr", has=other.locator(f"code[title='{net.addr(NODE_A)}']"))
    expect(row.locator("td").nth(1)).to_have_text("—")
    expect(row.locator("td").nth(4)).to_have_text(units(PRICE))
    expect(other.locator("#node")).to_have_value("")  # no record: any node, as before
    shot(other, screens, "14-record-unavailable")
    answer = chat(other, net.addr(NODE_A), "Still there?")  # the page still chats
    job = int(answer.get_attribute("data-job") or 0)
    assert net.record(job).node == net.addr(NODE_A)
    assert net.status(job) == JobStatus.PUBLISHED
    other.close()


class Cuttable:
    """A TCP forwarder to the chain's RPC that the test can cut (the RPC goes down: open
    connections reset, new ones refused)."""

    def __init__(self, rpc_url: str) -> None:
        self.target = ("127.0.0.1", int(rpc_url.rsplit(":", 1)[1].strip("/")))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.down = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                down, _ = self.sock.accept()
            except OSError:
                return
            if self.down:
                down.close()
                return
            up = socket.create_connection(self.target)
            self.conns += [down, up]
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self.pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        self.down = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (Linux)
        self.sock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()


def test_providers_json__rpc_down__last_good_snapshot_stale_with_the_error__not_a_500(
    browser: Any, site: str, net: Net, node_b_back: str, screens: Path
) -> None:
    """The server's own RPC goes down: it answers its last good snapshot, marked stale with
    the error; the page (its chain reads on the live RPC, providers.json relayed from that
    server) shows the record and says it is stale."""
    from verinfer.web import Providers, make_server, page_config

    rpc = Cuttable(net.rpc_url)
    config = page_config(rpc.url, net.dev.market.address, 31337, 0)
    providers = Providers(config, net.tmp / "stale-index.sqlite", ttl_s=0.5)
    server = make_server(config, providers=providers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/providers.json"
    try:
        good = wait_for(lambda: (s := get_json(url)) and not s["stale"] and s, 20, "a snapshot")
        assert [p["node"] for p in providers_of(good, net.model_id)] == [
            node_b_back, net.addr(NODE_A)
        ]  # fmt: skip
        rpc.cut()
        cut_at = time.time()
        stale = wait_for(lambda: (s := get_json(url)) and s["stale"] and s, 20, "a stale answer")
        assert stale["error"].startswith(f"cannot sync the track record from {rpc.url}: ")
        assert "\n" not in stale["error"]
        assert stale["taken_at"] <= cut_at and stale["indexed_block"] >= good["indexed_block"]
        assert providers_of(stale, net.model_id) == providers_of(good, net.model_id)
        other = browser.new_page(viewport={"width": 1280, "height": 900})
        other.route("**/providers.json", lambda route: route.fulfill(response=route.fetch(url=url)))
        other.goto(site)
        expect(other.locator("#record-status")).to_have_text(
            f"track record at block {stale['indexed_block']} (stale: the server cannot reach "
            "the chain)"
        )
        row = other.locator("#models tr", has=other.locator(f"code[title='{net.addr(NODE_A)}']"))
        expect(row.locator("td").nth(2)).to_have_text(re.compile(r"^\d+% \d+/\d+$"))
        shot(other, screens, "15-record-stale")
        other.close()
    finally:
        server.shutdown()
        server.server_close()
        providers.close()


def test_export__providers_json_snapshot_with_its_time(net: Net, tmp_path: Path) -> None:
    from verinfer.web import Providers, export_site, page_config

    config = page_config(net.rpc_url, net.dev.market.address, 31337, 0)
    before = int(time.time())
    files = export_site(tmp_path, config, [], Providers(config, tmp_path / "index.sqlite"))
    assert "providers.json" in files
    snapshot = json.loads((tmp_path / "providers.json").read_text())
    assert before <= snapshot["taken_at"] <= time.time() and snapshot["stale"] is False
    assert snapshot["market"] == net.dev.market.address
    nodes = {p["node"]: p for p in providers_of(snapshot, net.model_id)}
    assert nodes[net.addr(NODE_A)]["published"] == len(
        net.events("ResultPublished", node=net.addr(NODE_A))
    )
