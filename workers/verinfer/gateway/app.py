"""The FastAPI app: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Each completion becomes one on-chain job paid from the operator's prepaid balance; the answer
is sent once the result is held (published, digest checked). ``stream: true`` is answered as
server-sent events at that moment. Every answer carries a ``verinfer`` extension object: job
id, result digest, cost, the node that served and the node the job was routed to
(``routed_to``, null when it went open), and the gateway's timings.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from verinfer.digest import FinishReason
from verinfer.gateway import errors
from verinfer.gateway.chain import ChainWorker, JobOutcome, JobRequest, model_label
from verinfer.gateway.schemas import ChatCompletionRequest, CompletionRequest
from verinfer.gateway.tokens import PromptCounter
from verinfer.inputs import InputFormatError, decode_input, encode_chat_input, encode_text_input

TIMEOUT_HEADER = "x-verinfer-timeout"
MAX_INPUT_BYTES = 8_000  # Market.vy MAX_INPUT_BYTES: a longer input cannot be submitted
_bearer = HTTPBearer(auto_error=False, description="The gateway's local API key")


def create_app(worker: ChainWorker, api_key: str) -> FastAPI:
    """The gateway app over a started ``ChainWorker``; only ``api_key`` may spend."""
    app = FastAPI(
        title="verinfer gateway",
        version="0.1.0",
        description="OpenAI-compatible API; every completion is a verified on-chain job.",
    )
    counter = PromptCounter()
    settings = worker.settings

    async def check_key(  # async: a sync dependency would cost a thread-pool hop per request
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if creds is None:
            raise errors.unauthorized(
                "You didn't provide an API key: send 'Authorization: Bearer <gateway key>'"
            )
        if not hmac.compare_digest(creds.credentials.encode(), api_key.encode()):
            raise errors.unauthorized("Incorrect API key provided for this verinfer gateway")

    @app.exception_handler(errors.GatewayError)
    async def _gateway_error(_: Request, exc: errors.GatewayError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        where = f"{param}: " if param else ""
        return errors.bad_request(f"{where}{first.get('msg', 'invalid')}", param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else "http_error"
        err = errors.GatewayError(exc.status_code, str(exc.detail), "invalid_request_error", code)
        return err.response()

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models() -> dict[str, Any]:
        """The registered models, each with the nodes serving it and their prices."""
        models = await asyncio.wrap_future(worker.call(lambda w: w.models()))
        scale = Decimal(10) ** worker.decimals
        data = []
        for m in models:
            prices = sorted(set(m.nodes.values()))
            data.append(
                {
                    "id": model_label(m, models),
                    "object": "model",
                    "created": 0,
                    "owned_by": "verinfer",
                    "verinfer": {
                        "model_id": "0x" + m.model_id.hex(),
                        "name": m.name,
                        "revision": m.revision,
                        "nodes": m.nodes,
                        "price_per_token": max(prices) if prices else None,
                        "price_per_token_tokens": str(max(prices) / scale) if prices else None,
                        "token": worker.symbol,
                    },
                }
            )
        return {"object": "list", "data": data}

    @app.get("/v1/providers", dependencies=[Depends(check_key)])
    async def list_providers(model: str | None = None) -> dict[str, Any]:
        """Read-only: every node's track record and routing score (docs/routing.md), per
        model (``?model=NAME``: that model's only), best first."""

        def read(w: ChainWorker) -> list[dict[str, Any]]:
            from verinfer.routing import rank

            assert w.client is not None
            models = w.models()
            chosen = [w.resolve(model)] if model is not None else models
            indexer = w.client.indexer()
            policy = w.router.policy if w.router is not None else None  # the gateway's weights
            return [
                {
                    "model": model_label(m, models),
                    "model_id": "0x" + m.model_id.hex(),
                    "providers": [s.as_dict() for s in rank(indexer.records(m.model_id), policy)],
                }
                for m in chosen
            ]

        data = await asyncio.wrap_future(worker.call(read))
        return {"object": "list", "token": worker.symbol, "data": data}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)], response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """A chat completion, run as one on-chain job."""
        _refuse_unsupported(body)
        # OpenAI's "developer" role is the system prompt of newer clients
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        data = _encode(lambda: encode_chat_input(messages), "messages")
        max_tokens = body.max_completion_tokens or body.max_tokens or settings.default_max_tokens
        outcome, prompt_tokens = await _run(body, data, max_tokens, request)
        return _respond(body, outcome, prompt_tokens, chat=True)

    @app.post("/v1/completions", dependencies=[Depends(check_key)], response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """A text completion, run as one on-chain job."""
        _refuse_unsupported(body)
        if body.echo:
            raise errors.bad_request("echo is not supported", "echo")
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise errors.bad_request("give exactly one prompt per request", "prompt")
            prompt = prompt[0]
        text = prompt
        data = _encode(lambda: encode_text_input(text), "prompt")
        max_tokens = body.max_tokens or settings.default_max_tokens
        outcome, prompt_tokens = await _run(body, data, max_tokens, request)
        return _respond(body, outcome, prompt_tokens, chat=False)

    async def _run(
        body: Any, data: bytes, max_tokens: int, request: Request
    ) -> tuple[JobOutcome, int]:
        """Hand the job to the chain threads; count its prompt tokens while it runs (in a
        worker thread, once its transaction is sent). Returns the held outcome and the prompt
        token count."""
        timeout = settings.job_timeout_s
        raw = request.headers.get(TIMEOUT_HEADER)
        if raw is not None:
            try:
                timeout = float(raw)
            except ValueError:
                timeout = -1.0
            if not 0 < timeout <= settings.job_timeout_s:
                raise errors.bad_request(
                    f"{TIMEOUT_HEADER} must be a number of seconds in (0, "
                    f"{settings.job_timeout_s:g}]",
                    TIMEOUT_HEADER,
                )
        temperature = 1.0 if body.temperature is None else body.temperature
        seed = body.seed if body.seed is not None else secrets.randbits(63)
        private = settings.private if body.private is None else body.private
        job = JobRequest(
            body.model,
            data,
            max_tokens,
            temperature,
            seed,
            timeout,
            private,
            node=body.node,
            exclude=tuple(body.exclude_nodes or ()),
            routing=body.routing,
        )
        pending = asyncio.wrap_future(worker.submit(job))
        model_id = worker.cached_model_id(body.model)
        counting: asyncio.Future[int] | None = None
        try:
            if model_id is not None:  # count once the job is on its way, not while the submit
                sent = asyncio.wrap_future(job.sent)  # thread prepares it (same interpreter)
                await asyncio.wait({sent, pending}, return_when=asyncio.FIRST_COMPLETED)
                if not pending.done():
                    counting = asyncio.ensure_future(
                        asyncio.to_thread(counter.count, model_id, data)
                    )
            outcome: JobOutcome = await pending
        except BaseException:
            if counting is not None:
                counting.cancel()
            raise
        if counting is None or model_id != outcome.model.model_id:
            if counting is not None:
                counting.cancel()
            counting = asyncio.ensure_future(
                asyncio.to_thread(counter.count, outcome.model.model_id, data)
            )
        return outcome, await counting

    def _respond(body: Any, outcome: JobOutcome, prompt_tokens: int, chat: bool) -> Response:
        res = outcome.result
        completion_tokens = len(res.token_ids)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        finish = "stop" if res.finish_reason == FinishReason.STOP else "length"
        text = res.text if res.text is not None else ""
        created = int(time.time())
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        model = body.model
        now, now_unix = time.perf_counter(), time.time()
        total_ms = (now - outcome.arrived) * 1000
        timing = {  # ms figures from time.perf_counter(); *_unix: time.time()
            "job_ms": round(outcome.job_ms, 3),  # submit sent -> result seen
            "gateway_ms": round(total_ms - outcome.job_ms, 3),  # the rest, in the gateway
            "to_send_ms": round((outcome.sent_at - outcome.arrived) * 1000, 3),
            "queued_ms": round((outcome.taken_at - outcome.arrived) * 1000, 3),
            "deliver_ms": round((outcome.delivered_at - outcome.seen_at) * 1000, 3),
            "respond_ms": round((now - outcome.delivered_at) * 1000, 3),
            "arrived_unix": round(now_unix - (now - outcome.arrived), 6),
            "sent_unix": round(outcome.sent_unix, 6),
            "responded_unix": round(now_unix, 6),
        }
        ext = {
            "job_id": res.job_id,
            "result_digest": "0x" + res.digest.hex(),
            "digest_ok": res.digest_ok,
            "status": res.status.name,
            "node": res.node,
            "routed_to": outcome.routed_to,
            "model_id": "0x" + outcome.model.model_id.hex(),
            "cost": res.cost,
            "max_payment": res.max_payment,
            "token": worker.symbol,
            "token_ids": res.token_ids,
            "batch": outcome.batch,
            "submit_tx": outcome.tx_hash,
            "tx_jobs": outcome.tx_jobs,
            "timing": timing,
        }
        if not body.stream:
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return JSONResponse(
                {
                    "id": rid,
                    "object": "chat.completion" if chat else "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                    "verinfer": ext,
                }
            )
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _stream_chunks(chat, rid, created, model, text, finish, usage, ext, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream")

    return app


def _stream_chunks(
    chat: bool,
    rid: str,
    created: int,
    model: str,
    text: str,
    finish: str,
    usage: dict[str, int],
    ext: dict[str, Any],
    include_usage: bool,
) -> Iterator[str]:
    """Server-sent events of a finished result: role, content, finish (+ usage), [DONE]."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    head = {"id": rid, "object": obj, "created": created, "model": model}

    def choice(content: str | None, reason: str | None, role: bool = False) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": content or "", "logprobs": None, "finish_reason": reason}
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if content is not None:
            delta["content"] = content
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

    events: list[dict[str, Any]] = []
    if chat:
        events.append({**head, "choices": [choice("", None, role=True)]})
    events.append({**head, "choices": [choice(text, None)]})
    events.append({**head, "choices": [choice(None, finish)], "verinfer": ext})
    if include_usage:
        events.append({**head, "choices": [], "usage": usage})
    for event in events:
        yield f"data: {json.dumps(event)}\n\n"
    yield "data: [DONE]\n\n"


def _refuse_unsupported(body: Any) -> None:
    if body.n not in (None, 1):
        raise errors.bad_request("n must be 1: one job answers one choice", "n")
    if body.stop:
        raise errors.bad_request(
            "stop sequences are not supported: jobs stop at the model's EOS token", "stop"
        )
    if body.top_p not in (None, 1, 1.0):
        raise errors.bad_request("top_p must be 1: jobs sample from the full softmax", "top_p")


def _encode(fn: Any, param: str) -> bytes:
    try:
        data = bytes(fn())
    except UnicodeEncodeError:
        raise errors.bad_request(f"{param} is not valid Unicode text", param) from None
    except ValueError as exc:
        raise errors.bad_request(f"{param}: {exc}", param) from None
    if len(data) > MAX_INPUT_BYTES:
        raise errors.bad_request(
            f"{param} is {len(data)} bytes encoded; a job's input holds at most {MAX_INPUT_BYTES}",
            param,
            "input_too_large",
        )
    try:  # what a node would refuse (an empty prompt, ...): refused before anything is paid
        decode_input(data)
    except InputFormatError as exc:
        raise errors.bad_request(f"{param}: {exc}", param) from None
    return data
