"""The web page in a real browser (Debian's chromium driven by Playwright) against a real Anvil,
the real contracts and real `verinfer node run` processes serving the tiny model: an honest node
and a cheater (the dev/test setting VERINFER_DEV_CHEAT_WEIGHTS). The wallet is the test-only
injected EIP-1193 provider (test_only_eip1193_provider.js): Anvil signs with a dev key.

Screenshots of every step go to the pytest tmp dir (``web-screens*``), printed on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from verinfer.digest import FinishReason
from verinfer.inputs import decode_input, encode_chat_input
from verinfer.jobs import JobStatus
from verinfer.node.devchain import UNIT, transact
from verinfer.node.localnet import CHEATER, CLIENT_C, NODE_A, NODE_B, PRICE, Net, local_net
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
    """`verinfer web`'s server in a thread, configured for this market."""
    from verinfer.web import page_config, serve_in_thread

    config = page_config(net.rpc_url, net.dev.market.address, 31337, 0)
    server = serve_in_thread(config)
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


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
            cells = row.locator("td")
            expect(cells.nth(1)).to_have_text(fmt(PRICE))
            expect(cells.nth(2)).to_have_text(fmt(2_000 * UNIT))
            expect(cells.nth(3)).to_have_text(state)


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
