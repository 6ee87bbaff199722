"""Render chat messages into a prompt with the model's own chat template (no torch).

The template is ``chat_template`` in the checkpoint's ``tokenizer_config.json``, rendered
the way Hugging Face transformers does it: a sandboxed jinja2 environment with
``trim_blocks``/``lstrip_blocks``, the ``raise_exception`` global and a ``tojson`` filter,
called with ``messages``, ``add_generation_prompt=True`` and the special-token strings
(https://huggingface.co/docs/transformers/main/en/chat_templating). The engine's tokenizer
adds BOS itself, so a BOS the template writes at the very start is dropped (as
``apply_chat_template`` does by encoding without special tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from deepserve.engine.sampling import InvalidRequestError

MESSAGES_FIELD = "chat_messages"
ROLES = frozenset({"system", "user", "assistant"})
MAX_MESSAGES = 256


def _token_text(value: Any) -> str:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def parse_messages(raw: str) -> list[dict[str, str]]:
    """Validate the JSON list of ``{"role", "content"}`` messages; raise naming the field."""
    try:
        messages = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequestError(MESSAGES_FIELD, "must be a JSON list of messages") from exc
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError(MESSAGES_FIELD, "must be a non-empty JSON list of messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequestError(MESSAGES_FIELD, f"at most {MAX_MESSAGES} messages")
    out = []
    for i, m in enumerate(messages):
        if (not isinstance(m, dict) or set(m) != {"role", "content"}
                or m["role"] not in ROLES or not isinstance(m["content"], str)):
            raise InvalidRequestError(
                MESSAGES_FIELD, f"[{i}] must be {{role: {'|'.join(sorted(ROLES))}, content: string}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template and the special tokens it may refer to."""

    source: str
    bos_token: str
    eos_token: str

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> ChatTemplate | None:
        """The template of the checkpoint in ``model_dir``; None when it has none."""
        path = Path(model_dir) / "tokenizer_config.json"
        if not path.is_file():
            return None
        config = json.loads(path.read_text(encoding="utf-8"))
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: use "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if not isinstance(template, str) or not template:
            return None
        chat = cls(template, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))
        _compiled(template)  # compile at model load: a broken template fails loudly, once
        return chat

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for ``messages`` ending with the assistant's turn."""
        text = _compiled(self.source).render(
            messages=messages, add_generation_prompt=True,
            bos_token=self.bos_token, eos_token=self.eos_token)
        if self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token):]
        return str(text)


def _raise(message: str) -> NoReturn:
    raise InvalidRequestError(MESSAGES_FIELD, f"refused by the chat template: {message}")


_CACHE: dict[str, Any] = {}


def _compiled(source: str) -> Any:
    if source not in _CACHE:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
        _CACHE[source] = env.from_string(source)
    return _CACHE[source]
