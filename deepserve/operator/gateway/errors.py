"""The refusals the gateway answers itself (never reaching a model)."""

from __future__ import annotations

from deepserve.engine.openai_api import OpenAIError


class Refused(Exception):
    """A request the gateway answers itself: the error, a metrics reason, extra headers."""

    def __init__(self, error: OpenAIError, reason: str, headers: dict[str, str] | None = None):
        super().__init__(error.message)
        self.error, self.reason, self.headers = error, reason, headers


def not_found(model: str) -> OpenAIError:
    """404 for a model that does not exist, or is outside the caller's plan (same body)."""
    return OpenAIError(404, f"the model '{model}' does not exist", param="model", code="model_not_found")
