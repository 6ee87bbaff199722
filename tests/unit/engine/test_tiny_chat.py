"""builtin://tiny-chat: trained deterministically, in the checkpoint layout, with a chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from deepserve.engine.contract.builtin import BUILTIN_MODELS, builtin_config
from deepserve.engine.tiny_chat import CHAT_TEMPLATE, conversations, make_tiny_chat_checkpoint

pytestmark = pytest.mark.unit


def test_training_is_deterministic_and_writes_a_chat_checkpoint(tmp_path: Path) -> None:
    a = make_tiny_chat_checkpoint(tmp_path / "a", steps=3)
    b = make_tiny_chat_checkpoint(tmp_path / "b", steps=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    config = json.loads((a / "config.json").read_text())
    planned = builtin_config("tiny-chat")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim", "vocab_size"):
        assert config[key] == planned[key], key  # the planner sizes what the engine builds
    assert json.loads((a / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    weights = load_file(str(a / "model.safetensors"))
    assert weights["model.embed_tokens.weight"].shape == (config["vocab_size"], config["hidden_size"])
    assert BUILTIN_MODELS["tiny-chat"] == "llama"


def test_conversations_come_from_the_corpus() -> None:
    turns = conversations()
    assert len(turns) >= 30
    assert all(answer.startswith(user) and answer.endswith((".", "!", "?")) for user, answer in turns)
