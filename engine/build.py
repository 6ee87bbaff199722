"""Build an :class:`InferenceEngine` from :class:`EngineOptions` (device and precision)."""

from __future__ import annotations

import logging

import torch
from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.options import EngineOptions
from deepserve.engine.runtime import InferenceEngine
from deepserve.engine.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(options: EngineOptions) -> torch.device:
    """``cuda`` when asked for or available (``auto``), else ``cpu``."""
    if options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: 'cuda' requested but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_precision(options: EngineOptions, device: torch.device) -> str:
    """Precision this engine runs in: ``auto`` is bf16 on GPU and fp32 on CPU.

    fp8 weights need the precision scheduler (engine part 2); until then fp8 runs in
    bf16 and says so in the logs and in the ``precision`` output of every response.
    """
    precision = options.precision
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp8":
        log.warning("precision fp8 is not implemented yet; running in bf16")
        return "bf16"
    return precision


def build_engine(options: EngineOptions) -> InferenceEngine:
    """Load the checkpoint in ``options.model_dir`` and return a ready engine."""
    device = resolve_device(options)
    precision = resolve_precision(options, device)
    model = load_transformer(options.model_dir, device=device, dtype=_DTYPES[precision])
    tokenizer = TextTokenizer.from_dir(options.model_dir, model.args.eos_token_ids)
    return InferenceEngine(
        model, tokenizer, slots=options.cache_slots, max_input_tokens=options.max_input_tokens,
        max_new_tokens_limit=options.max_new_tokens_limit, precision=precision,
        compile_decode=options.compile and device.type == "cuda")
