"""Parallelism applied to a built model from outside its code (tensor parallelism)."""

from deepserve.engine.parallel.tensor_parallel import TensorParallelError, apply_tensor_parallel

__all__ = ["TensorParallelError", "apply_tensor_parallel"]
