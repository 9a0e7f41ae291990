"""The coordinator's client-facing HTTP surface: the OpenAI-compatible API, API keys, the request queue and metrics."""
