"""Model arguments read from a Hugging Face ``config.json`` (no torch).

The reader lives in the serving contract (:mod:`deepserve.engine.contract.config`), shared
with the planner; this module keeps the engine's import path.
"""

from __future__ import annotations

from deepserve.engine.contract.config import (
    ARCHITECTURES,
    ModelArgs,
    RopeArgs,
    ShapeError,
    UnsupportedModelError,
)

__all__ = ["ARCHITECTURES", "ModelArgs", "RopeArgs", "ShapeError", "UnsupportedModelError"]
