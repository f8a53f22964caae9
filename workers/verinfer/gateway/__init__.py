"""The OpenAI-compatible gateway: OpenAI HTTP requests in, on-chain verinfer jobs out."""
