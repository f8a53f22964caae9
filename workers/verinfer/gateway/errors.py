"""OpenAI-style error objects: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


class GatewayError(Exception):
    """A request the gateway answers with an OpenAI error object and an HTTP status.

    ``retry`` says whether the OpenAI client may resend it (``x-should-retry``): never for
    errors where a resend would pay for a second job.
    """

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str,
        param: str | None = None,
        retry: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.retry = retry

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        """The HTTP response."""
        return JSONResponse(
            self.body(),
            status_code=self.status,
            headers={"x-should-retry": "true" if self.retry else "false"},
        )


def bad_request(
    message: str, param: str | None = None, code: str = "invalid_request"
) -> GatewayError:
    """400: the request itself is wrong."""
    return GatewayError(400, message, "invalid_request_error", code, param)


def unauthorized(message: str) -> GatewayError:
    """401: missing or wrong API key."""
    return GatewayError(401, message, "invalid_request_error", "invalid_api_key")


def unknown_model(model: str) -> GatewayError:
    """404: the model is not registered in the market."""
    return GatewayError(
        404,
        f"The model '{model}' does not exist in this market (GET /v1/models lists them)",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


def insufficient_balance(message: str) -> GatewayError:
    """402: the prepaid balance cannot escrow the job."""
    return GatewayError(402, message, "insufficient_quota", "insufficient_balance")


def limit_exceeded(message: str, code: str) -> GatewayError:
    """A spending limit of the gateway: per request (400) or per day (429)."""
    status = 400 if code == "max_payment_per_request_exceeded" else 429
    kind = "invalid_request_error" if status == 400 else "insufficient_quota"
    return GatewayError(status, message, kind, code, "max_tokens" if status == 400 else None)


def job_timeout(message: str) -> GatewayError:
    """504: the job's result did not come in time (the job stays on chain)."""
    return GatewayError(504, message, "timeout", "job_timeout")


def job_failed(message: str, code: str) -> GatewayError:
    """502: the job ended without a checked result (cancelled, expired, bad digest)."""
    return GatewayError(502, message, "server_error", code)
