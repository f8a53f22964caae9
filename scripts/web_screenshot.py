"""The screenshot in docs/web.md: the page in Debian's chromium, a real answer from a real node.

A fresh local network (Anvil, Redis, the protocol, SmolLM2-135M-Instruct registered; see
verinfer.node.localnet), one `verinfer node run` process (node A) serving the model, `verinfer
web`'s server, and the page driven by Playwright with the test-only EIP-1193 provider of
tests/web (Anvil signs with a dev key). It asks one question, waits for the answer to be held
and saves the page to docs/img/web-chat.png (WEB_SHOT_OUT). ``WEB_SHOT_MODEL=tiny`` uses the
small random model instead. Prints one JSON object on its last line.

Run: ``make web-screenshot``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the capital of France? Answer in one sentence."


def main() -> int:
    from playwright.sync_api import expect, sync_playwright
    from verinfer.node.localnet import CLIENT_C, NODE_A, local_net
    from verinfer.web import page_config, serve_in_thread

    model: Literal["tiny", "smollm2"] = (
        "tiny" if os.environ.get("WEB_SHOT_MODEL") == "tiny" else "smollm2"
    )
    out = Path(os.environ.get("WEB_SHOT_OUT", ROOT / "docs" / "img" / "web-chat.png"))
    chromium = (
        os.environ.get("VERINFER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    )
    shim = ROOT / "tests" / "web" / "test_only_eip1193_provider.js"
    started = time.monotonic()
    with local_net(model=model) as net:  # in a temporary dir, removed afterwards
        net.node(NODE_A, "node-a").start().wait_ready(timeout=300)
        server = serve_in_thread(page_config(net.rpc_url, net.dev.market.address, 31337, 0))
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run"],
            )  # fmt: skip
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            wallet = {"rpcUrl": net.rpc_url, "account": net.addr(CLIENT_C)}
            page.add_init_script(f"window.__VERINFER_TEST_WALLET__ = {json.dumps(wallet)};")
            page.add_init_script(path=str(shim))
            page.goto(url)
            page.click("#connect")
            expect(page.locator("#net-status")).to_contain_text("right network")
            page.select_option("#node", net.addr(NODE_A))
            page.fill("#max-tokens", "32")
            page.fill("#message", QUESTION)
            page.click("#send")
            answer = page.locator(".msg.assistant").first
            expect(answer.locator(".details")).to_contain_text("held", timeout=300_000)
            page.wait_for_timeout(1500)  # past jobs and balances refresh
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            text = answer.locator(".answer-text").inner_text()
            details = answer.locator(".details").inner_text()
            browser.close()
        server.shutdown()
    result = {
        "model": model,
        "question": QUESTION,
        "answer": text,
        "details": " ".join(details.split()),
        "screenshot": str(out),
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
