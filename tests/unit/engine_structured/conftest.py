"""A tiny random checkpoint (byte-level BPE tokenizer) for the structured-output tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepserve.engine.tiny import make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random llama checkpoint; its tokenizer is the engine's byte-level BPE."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("structured") / "llama", "llama", seed=5)
