"""The serving contract shared by the planner, the operator and the engine (imports no torch).

- :mod:`.config`: one reader of Hugging Face ``config.json`` (:class:`ModelArgs`);
- :mod:`.precision`: the precision vocabulary, dtype names and the copies each policy keeps;
- :mod:`.memory`: parameter counts by storage class and the weight/KV/rotary-table bytes;
- :mod:`.builtin`: the built-in tiny models' names and configs.
"""

from deepserve.engine.contract.builtin import BUILTIN_MODELS, builtin_config, tiny_config
from deepserve.engine.contract.config import (
    ModelArgs,
    RopeArgs,
    ShapeError,
    UnsupportedModelError,
)
from deepserve.engine.contract.memory import (
    ParamCounts,
    kv_bytes_per_token,
    kv_cache_bytes,
    param_counts,
    resident_weight_bytes,
    rope_table_bytes,
)
from deepserve.engine.contract.precision import (
    ELEMENT_BYTES,
    LOAD_PRECISIONS,
    POLICIES,
    TORCH_DTYPE_NAMES,
    compute_precision,
    master_precision,
    weight_copies,
)

__all__ = [
    "BUILTIN_MODELS",
    "ELEMENT_BYTES",
    "LOAD_PRECISIONS",
    "POLICIES",
    "TORCH_DTYPE_NAMES",
    "ModelArgs",
    "ParamCounts",
    "RopeArgs",
    "ShapeError",
    "UnsupportedModelError",
    "builtin_config",
    "compute_precision",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "master_precision",
    "param_counts",
    "resident_weight_bytes",
    "rope_table_bytes",
    "tiny_config",
    "weight_copies",
]
