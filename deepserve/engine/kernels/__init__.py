"""Hand-written GPU kernels (Triton language) behind plain PyTorch functions.

Each kernel has a PyTorch reference it is tested against; callers ask ``*_supported``
first and fall back to the reference where Triton is missing or the shapes are outside
what the kernel handles. On CPU the kernels run only under ``TRITON_INTERPRET=1`` (tests).
"""

from deepserve.engine.kernels import flash_decode
from deepserve.engine.kernels.flash_decode import (
    decode_attention,
    decode_attention_reference,
    decode_attention_supported,
)
from deepserve.engine.kernels.indexer_scores import (
    indexer_scores,
    indexer_scores_reference,
    indexer_scores_supported,
)

__all__ = ["decode_attention", "decode_attention_reference", "decode_attention_supported",
           "flash_decode", "indexer_scores", "indexer_scores_reference", "indexer_scores_supported"]
