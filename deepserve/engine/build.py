"""Build an :class:`InferenceEngine` from :class:`EngineOptions` (device and precision)."""

from __future__ import annotations

import dataclasses
import logging
import os

import torch

from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.contract.precision import master_precision
from deepserve.engine.features import install_features
from deepserve.engine.options import EngineOptions
from deepserve.engine.precision.adaptive import DTYPES
from deepserve.engine.runtime import InferenceEngine
from deepserve.engine.sources import resolve_model_dir
from deepserve.engine.speculative import SpeculativeDecoder
from deepserve.engine.tokenizer import TextTokenizer

log = logging.getLogger(__name__)



def resolve_device(options: EngineOptions) -> torch.device:
    """``cuda`` when asked for or available (``auto``), else ``cpu``."""
    # DEEPSERVE_DEVICE overrides the rendered option (operators, and the dev local runner
    # that plays GPU pods on a CPU-only machine).
    wanted = os.environ.get("DEEPSERVE_DEVICE") or options.device
    if wanted == "cpu":
        return torch.device("cpu")
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: 'cuda' requested but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_precision(options: EngineOptions, device: torch.device) -> str:
    """Precision the weights load in: ``auto``/``fp8`` load bf16 on GPU and fp32 on CPU.

    With ``auto`` the precision scheduler then picks per batch (see
    :mod:`deepserve.engine.precision`); ``fp8`` adds fp8 weight copies and computes in them.
    """
    return master_precision(options.precision, device.type)


def build_engine(options: EngineOptions) -> InferenceEngine:
    """Load the checkpoint in ``options.model_dir`` and return a ready engine."""
    device = resolve_device(options)
    precision = resolve_precision(options, device)
    model_dir = resolve_model_dir(options.model_dir)
    options = dataclasses.replace(options, model_dir=model_dir)
    model = load_transformer(model_dir, device=device, dtype=DTYPES[precision])
    tokenizer = TextTokenizer.from_dir(model_dir, model.args.eos_token_ids)
    features = install_features(model, options, tokenizer.encode)
    compile_decode = options.compile and device.type == "cuda"
    if compile_decode and features.sparse is not None:
        log.warning("compile: off with sparse attention (data-dependent selection)")
        compile_decode = False
    speculative = None
    if options.speculative_model:  # the draft loads in the target's dtype on the same device
        draft = load_transformer(resolve_model_dir(options.speculative_model), device=device,
                                 dtype=DTYPES[precision])
        speculative = SpeculativeDecoder(draft, options.speculative_tokens)
    return InferenceEngine(
        model, tokenizer,  # paged: concurrency bounded by blocks, not by whole-length slots
        slots=options.max_batch_size if options.kv_page_tokens else options.cache_slots,
        max_input_tokens=options.max_input_tokens,
        max_new_tokens_limit=options.max_new_tokens_limit, precision=features.precision,
        compile_decode=compile_decode, features=features, kv_cache_dtype=options.kv_cache_dtype,
        kv_page_tokens=options.kv_page_tokens, prefill_chunk_tokens=options.prefill_chunk_tokens,
        speculative=speculative,
        kv_blocks=options.kv_cache_tokens // options.kv_page_tokens if options.kv_page_tokens else 0)
