"""Tiny checkpoints and loaded models for the engine part-2 tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepserve.engine.tiny import make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random llama (GQA) and deepseek_v3 (MLA + MoE) checkpoints."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: make_tiny_checkpoint(root / arch, arch, seed=3) for arch in ("llama", "deepseek_v3")}
