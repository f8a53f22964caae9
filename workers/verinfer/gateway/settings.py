"""Gateway settings, validated once at start-up (``VERINFER_GATEWAY_*`` environment)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from verinfer.chain_errors import ClientError
from verinfer.routing import Weights


class GatewaySettings(BaseSettings):
    """How the gateway listens, what it may spend, and how it batches and waits.

    Amounts are in whole tokens of the market's payment token (``"0.5"``); the gateway turns
    them into base units with the token's decimals once connected.

    Results are followed through a websocket log subscription (``ws_url``, default: the HTTP
    endpoint's own host and port as ``ws://``) with an ``eth_getLogs`` backstop every
    ``backstop_s``; without a websocket (or with ``subscribe`` off) by polling every
    ``poll_interval_s``.

    Public jobs go to the node the track record ranks first (``routing = "score"``, weights
    ``route_weights`` in the CLI's ``--weights`` syntax, the record synced at most every
    ``route_sync_s``), or open to the first claimer (``routing = "open"``); see
    ``gateway.route``.
    """

    model_config = SettingsConfigDict(env_prefix="VERINFER_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65_535)
    api_key: SecretStr | None = None
    max_payment_per_request: Decimal = Field(default=Decimal("1"), gt=0)
    max_payment_per_day: Decimal = Field(default=Decimal("100"), gt=0)
    job_timeout_s: float = Field(default=120.0, gt=0)
    default_max_tokens: int = Field(default=64, ge=1)
    batch_window_ms: float = Field(default=0.0, ge=0)
    poll_interval_s: float = Field(default=0.005, gt=0)
    subscribe: bool = True
    ws_url: str | None = None
    backstop_s: float = Field(default=1.0, gt=0)
    models_ttl_s: float = Field(default=30.0, ge=0)
    price_ttl_s: float = Field(default=5.0, ge=0)
    private: bool = False  # every job private unless a request says "private": false
    routing: Literal["score", "open"] = "score"
    route_weights: str | None = None  # "reliability=0.7,latency=0.3" (Weights.parse)
    route_sync_s: float = Field(default=5.0, gt=0)

    @field_validator("route_weights")
    @classmethod
    def _weights(cls, value: str | None) -> str | None:
        if value is not None:
            Weights.parse(value)  # a ValueError: refused at start-up
        return value

    def weights(self) -> Weights:
        """The routing weights (``route_weights``, else the defaults)."""
        return Weights.parse(self.route_weights) if self.route_weights else Weights()


def load_settings(**given: Any) -> GatewaySettings:
    """The settings from ``given`` and the environment; a bad value is one ClientError line
    naming its ``VERINFER_GATEWAY_*`` variable."""
    try:
        return GatewaySettings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(x) for x in first.get("loc", ())) or "?"
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise ClientError(f"bad VERINFER_GATEWAY_{name.upper()}: {msg}") from None
