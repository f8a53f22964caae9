"""The gateway through the official `openai` package: a real node on a real Anvil serves every
job; each answer is checked against what the chain recorded for its job."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.pytest import from_fixture
from verinfer.digest import FinishReason
from verinfer.inputs import encode_chat_input, encode_text_input
from verinfer.jobs import JobStatus
from verinfer.node.localnet import CLIENT_A, PRICE, Net, NodeProcess, wait_for
from verinfer.node.redis_server import free_port
from verinfer.tokenizers_local import decode_tokens

from tests.gateway.conftest import API_KEY, BROKE, Gateway, start_gateway, stop_gateway

pytestmark = pytest.mark.timeout(240)
MODEL = "verinfer-tiny-llama"
CHAT = [{"role": "user", "content": "What is an open model?"}]


@pytest.fixture(scope="module")
def gw(net: Net, node: NodeProcess) -> Iterator[Gateway]:
    """Gateway paying from client A: 0.05 tokens per request (50 output tokens), 1000 a day."""
    gw = start_gateway(net, CLIENT_A, "gw-a", "--max-per-request", "0.05", "--timeout", "60")
    yield gw
    assert stop_gateway(gw) == 0, gw.log()[-3000:]


@pytest.fixture(scope="module")
def broke_gw(net: Net, gw: Gateway) -> Iterator[Gateway]:
    """Gateway paying from an account with nothing prepaid; 0.01 tokens a day."""
    args = ("--max-per-request", "0.05", "--max-per-day", "0.01")
    gw = start_gateway(net, BROKE, "gw-broke", *args)
    yield gw
    assert stop_gateway(gw) == 0, gw.log()[-3000:]


def prepaid(net: Net, account: int) -> int:
    return int(net.dev.market.functions.balance_of(net.addr(account)).call())


def submitted(net: Net) -> list[Any]:
    return net.events("JobSubmitted")


def check_against_chain(net: Net, ext: dict[str, Any], text: str, max_tokens: int) -> Any:
    """The answer is exactly the job the chain holds: digest, tokens, text, payer, escrow."""
    record = net.record(ext["job_id"])
    assert record.client == net.addr(CLIENT_A)
    assert record.max_payment == max_tokens * PRICE == ext["max_payment"]
    assert ext["result_digest"] == "0x" + record.result_digest.hex()
    assert record.result_digest == record.expected_digest()
    assert ext["digest_ok"] is True
    assert ext["token_ids"] == record.output_token_ids
    assert text == decode_tokens(net.model_id, record.output_token_ids)
    assert ext["cost"] == record.output_tokens * PRICE
    assert ext["node"] == record.node
    assert net.status(ext["job_id"]) >= JobStatus.PUBLISHED
    return record


def test_models__lists_the_registered_model_with_its_price(net: Net, gw: Gateway) -> None:
    models = gw.openai().models.list().data
    (tiny,) = [m for m in models if m.id == MODEL]
    ext = tiny.model_extra["verinfer"]
    assert ext["model_id"] == "0x" + net.model_id.hex()
    assert ext["price_per_token"] == PRICE
    assert set(ext["nodes"]) == {net.addr(i) for i in (4, 5, 6)}
    assert tiny.object == "model"


def test_chat_completion__one_paid_job__answer_matches_the_chain(net: Net, gw: Gateway) -> None:
    before, jobs_before = prepaid(net, CLIENT_A), len(submitted(net))
    resp = gw.openai().chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=8, temperature=0.7, seed=11
    )
    ext = resp.model_extra["verinfer"]
    record = check_against_chain(net, ext, resp.choices[0].message.content, 8)
    assert len(submitted(net)) == jobs_before + 1
    assert record.input == encode_chat_input(CHAT)
    params = record.sampling_params
    assert (params.max_tokens, params.temperature_milli, params.seed) == (8, 700, 11)
    assert resp.usage.completion_tokens == record.output_tokens == len(ext["token_ids"])
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    reason = "stop" if record.finish_reason == FinishReason.STOP else "length"
    assert resp.choices[0].finish_reason == reason
    assert resp.object == "chat.completion" and resp.model == MODEL
    assert prepaid(net, CLIENT_A) == before - 8 * PRICE  # escrowed until finalization
    assert ext["timing"]["job_ms"] > 0 and ext["timing"]["gateway_ms"] >= 0


def test_chat_completion__streamed__same_result_as_events(net: Net, gw: Gateway) -> None:
    stream = gw.openai().chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=6,
        seed=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    (final,) = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    ext = final.model_extra["verinfer"]
    record = check_against_chain(net, ext, text, 6)
    assert chunks[-1].usage.completion_tokens == record.output_tokens
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_completion__text_prompt__answer_matches_the_chain(net: Net, gw: Gateway) -> None:
    resp = gw.openai().completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=7, seed=13, temperature=0
    )
    ext = resp.model_extra["verinfer"]
    record = check_against_chain(net, ext, resp.choices[0].text, 7)
    assert record.input == encode_text_input("Once upon a time")
    assert record.sampling_params.temperature_milli == 0
    assert resp.usage.completion_tokens == record.output_tokens
    assert resp.object == "text_completion"


def test_concurrent_requests__submitted_together__each_its_own_job(net: Net, gw: Gateway) -> None:
    client, n = gw.openai(), 8
    barrier = threading.Barrier(n)

    def one(i: int) -> Any:
        barrier.wait()
        msgs = [{"role": "user", "content": f"question {i}"}]
        return client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5, seed=i)

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n)))
    exts = [a.model_extra["verinfer"] for a in answers]
    assert len({e["job_id"] for e in exts}) == n
    for i, (a, e) in enumerate(zip(answers, exts, strict=True)):
        record = check_against_chain(net, e, a.choices[0].message.content, 5)
        assert record.input == encode_chat_input([{"role": "user", "content": f"question {i}"}])
    assert max(e["batch"] for e in exts) > 1  # some arrived together and went out together


def test_results__pushed_over_the_websocket__said_at_start(gw: Gateway) -> None:
    port = gw.log().split("results: ws://127.0.0.1:")[1].split()[0]
    assert port.isdigit() and "pushes (eth_getLogs backstop every 1s)" in gw.log()


def test_no_websocket__polls_for_results__same_checked_answer(
    net: Net, node: NodeProcess, gw: Gateway
) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    env = {"VERINFER_GATEWAY_WS_URL": dead}
    poll_gw = start_gateway(net, CLIENT_A, "gw-poll", "--max-per-request", "0.05", env=env)
    try:
        assert f"results: eth_getLogs every 0.005s (no websocket at {dead}" in poll_gw.log()
        resp = poll_gw.openai().chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=6, seed=21
        )
        check_against_chain(net, resp.model_extra["verinfer"], resp.choices[0].message.content, 6)
    finally:
        assert stop_gateway(poll_gw) == 0, poll_gw.log()[-3000:]


# ---- errors ----
def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_error__bad_request__400_names_the_field(net: Net, gw: Gateway) -> None:
    jobs = len(submitted(net))
    with pytest.raises(openai.BadRequestError) as info:
        gw.openai().chat.completions.create(model=MODEL, messages=[], max_tokens=4)
    err = error_of(info.value)
    assert (err["type"], err["code"], err["param"]) == (
        "invalid_request_error",
        "invalid_request",
        "messages",
    )
    with pytest.raises(openai.BadRequestError) as info:
        gw.openai().chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, n=2)
    assert error_of(info.value)["param"] == "n"
    with pytest.raises(openai.BadRequestError) as info:  # Market.vy takes 8000 bytes at most
        gw.openai().completions.create(model=MODEL, prompt="x" * 8_000, max_tokens=4)
    assert (error_of(info.value)["code"], error_of(info.value)["param"]) == (
        "input_too_large",
        "prompt",
    )
    assert len(submitted(net)) == jobs


def test_error__bad_input__400_before_anything_is_paid(net: Net, gw: Gateway) -> None:
    """An empty prompt, a message without content, a prompt that with max_tokens exceeds the
    model's context (1024 tokens): refused with a clear message, nothing submitted."""
    jobs = len(submitted(net))
    with pytest.raises(openai.BadRequestError) as info:
        gw.openai().completions.create(model=MODEL, prompt="", max_tokens=4)
    err = error_of(info.value)
    assert (err["message"], err["param"]) == ("prompt: prompt is empty", "prompt")
    with pytest.raises(openai.BadRequestError) as info:
        gw.openai().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": ""}], max_tokens=4
        )
    err = error_of(info.value)
    assert (err["message"], err["param"]) == (
        "messages: chat message 0 has no content",
        "messages",
    )
    with pytest.raises(openai.BadRequestError) as info:  # also over the per-request limit:
        gw.openai().completions.create(model=MODEL, prompt="1 " * 1000, max_tokens=200)
    err = error_of(info.value)  # the context is checked first, nothing is reserved for it
    assert (err["message"], err["code"], err["param"]) == (
        "prompt of 1002 tokens + max_tokens 200 exceeds the model context of 1024 tokens",
        "context_length_exceeded",
        "max_tokens",
    )
    assert len(submitted(net)) == jobs


def test_error__unknown_model__404_model_not_found(net: Net, gw: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        gw.openai().chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=4)
    err = error_of(info.value)
    assert (err["code"], err["param"]) == ("model_not_found", "model")
    assert "gpt-4o" in err["message"]


def test_error__wrong_or_missing_api_key__401(net: Net, gw: Gateway) -> None:
    jobs = len(submitted(net))
    client = openai.OpenAI(base_url=gw.base_url, api_key="not-the-key")
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4)
    assert error_of(info.value)["code"] == "invalid_api_key"
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": MODEL, "messages": CHAT})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert len(submitted(net)) == jobs


def test_error__over_the_per_request_limit__400_nothing_sent(net: Net, gw: Gateway) -> None:
    jobs = len(submitted(net))
    with pytest.raises(openai.BadRequestError) as info:  # 60 tokens x PRICE > 0.05 tokens
        gw.openai().chat.completions.create(model=MODEL, messages=CHAT, max_tokens=60)
    err = error_of(info.value)
    assert (err["code"], err["param"]) == ("max_payment_per_request_exceeded", "max_tokens")
    assert err["message"] == (  # token units, not base units
        "this request escrows 0.06 vUSD, more than the gateway's max payment per request "
        "(0.05 vUSD); ask for fewer max_tokens"
    )
    assert len(submitted(net)) == jobs


def test_error__insufficient_balance__402_nothing_sent(net: Net, broke_gw: Gateway) -> None:
    jobs = len(submitted(net))
    assert prepaid(net, BROKE) == 0
    with pytest.raises(openai.APIStatusError) as info:
        broke_gw.openai().chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    assert info.value.status_code == 402
    err = error_of(info.value)
    assert (err["type"], err["code"]) == ("insufficient_quota", "insufficient_balance")
    assert err["message"] == (  # token units, not base units
        "insufficient balance: job escrows 0.005 vUSD, prepaid balance left is 0 vUSD "
        "(deposit more with `verinfer balance deposit`)"
    )
    assert len(submitted(net)) == jobs


def test_error__over_the_daily_limit__429_not_retried(net: Net, broke_gw: Gateway) -> None:
    jobs = len(submitted(net))
    with pytest.raises(openai.RateLimitError) as info:  # 20 x PRICE > 0.01 tokens a day
        broke_gw.openai().chat.completions.create(model=MODEL, messages=CHAT, max_tokens=20)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert error_of(info.value)["code"] == "daily_limit_exceeded"
    assert error_of(info.value)["message"].startswith("daily spending limit reached: 0 vUSD of ")
    assert error_of(info.value)["message"].endswith(", this request escrows 0.02 vUSD")
    assert len(submitted(net)) == jobs


def test_error__timeout__504_job_stays_on_chain(net: Net, gw: Gateway) -> None:
    jobs = len(submitted(net))
    with pytest.raises(openai.InternalServerError) as info:
        gw.openai().chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=4,
            seed=14,
            extra_headers={"x-verinfer-timeout": "0.05"},
        )
    assert info.value.status_code == 504
    assert info.value.response.headers["x-should-retry"] == "false"
    err = error_of(info.value)
    assert (err["type"], err["code"]) == ("timeout", "job_timeout")
    (event,) = submitted(net)[jobs:]
    job_id = int(event["args"]["job_id"])
    assert f"job {job_id} " in err["message"]
    wait_for(lambda: net.status(job_id) >= JobStatus.PUBLISHED, 60, "the late result")


# ---- the gateway's own OpenAPI schema ----
@pytest.fixture(scope="module")
def gateway_schema(gw: Gateway) -> Any:
    import schemathesis

    return schemathesis.openapi.from_url(gw.url + "/openapi.json")


schema = from_fixture("gateway_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_openapi_schema__no_server_error(case: Any, gw: Gateway) -> None:
    # "routing": "score" on this chain offers warm-up jobs to the two staked nodes that do not
    # run (a 504 after the wait, by design): the gateway's setting (open) stays here;
    # tests/routing runs score routing against three live nodes
    if isinstance(case.body, dict):
        case.body.pop("routing", None)
    case.call_and_validate(
        headers={"Authorization": f"Bearer {API_KEY}"}, checks=[not_a_server_error], timeout=60
    )
