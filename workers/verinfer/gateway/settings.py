"""Gateway settings, validated once at start-up (``VERINFER_GATEWAY_*`` environment)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """How the gateway listens, what it may spend, and how it batches and waits.

    Amounts are in whole tokens of the market's payment token (``"0.5"``); the gateway turns
    them into base units with the token's decimals once connected.

    Results are followed through a websocket log subscription (``ws_url``, default: the HTTP
    endpoint's own host and port as ``ws://``) with an ``eth_getLogs`` backstop every
    ``backstop_s``; without a websocket (or with ``subscribe`` off) by polling every
    ``poll_interval_s``.
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
