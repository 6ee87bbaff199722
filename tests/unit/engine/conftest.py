"""Tiny checkpoints shared by the engine unit tests (made once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepserve.engine.tiny import TINY_ARCHITECTURES, make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random checkpoint per supported architecture."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_checkpoint(root / arch, arch, seed=1) for arch in TINY_ARCHITECTURES}
