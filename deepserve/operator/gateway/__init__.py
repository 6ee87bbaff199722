"""The OpenAI-compatible front door: API keys, plans, limits, and a proxy to engine pods."""
