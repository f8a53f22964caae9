"""verinfer: pay for open-model inference on chain, verified by re-execution."""

__version__ = "0.1.0"
