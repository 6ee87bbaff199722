"""Grammar-constrained decoding with xgrammar (https://github.com/mlc-ai/xgrammar).

:class:`GrammarCompiler` turns a :class:`~.spec.ResponseFormat` into a compiled grammar for
one tokenizer (compiled grammars are cached by xgrammar); each constrained sequence holds a
:class:`TokenConstraint` (a grammar matcher). Every step, :func:`mask_logits` fills the
allowed-token bitmask of the constrained rows and sets the other tokens' logits to -inf,
in place; unconstrained rows are not touched. xgrammar is imported on first use (it takes
~1.5 s and pulls in transformers), so an engine that never sees a constrained request never
loads it.

JSON grammars are compiled without free whitespace (``any_whitespace=False``: separators
``", "`` and ``": "``) so a model cannot spin in whitespace forever, and tokens holding a
control byte (0x00-0x1f) are masked out as well: xgrammar 0.2.9's length-bounded strings
(``maxLength``) admit raw control characters, which JSON forbids inside strings, and compact
JSON needs none elsewhere.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepserve.engine.sampling import InvalidRequestError
from deepserve.engine.structured.spec import FIELD, ResponseFormat

if TYPE_CHECKING:
    from deepserve.engine.tokenizer import TextTokenizer


class TokenConstraint:
    """The grammar state of one sequence: which tokens may come next."""

    def __init__(self, matcher: Any, allowed_words: torch.Tensor | None) -> None:
        self.matcher = matcher
        self.allowed_words = allowed_words  # packed bitmask ANDed in (JSON: no control bytes), or None

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write this sequence's allowed tokens into ``bitmask[row]`` (int32 words, 1 = allowed)."""
        self.matcher.fill_next_token_bitmask(bitmask, row)
        if self.allowed_words is not None:
            bitmask[row] &= self.allowed_words

    def accept(self, token: int) -> bool:
        """Advance by ``token``; False if the grammar does not allow it."""
        return bool(self.matcher.accept_token(token))

    @property
    def finished(self) -> bool:
        """True once the grammar has accepted its end (a stop token, or nothing more fits)."""
        return bool(self.matcher.is_terminated())


class GrammarCompiler:
    """Compiles response formats for one tokenizer and vocabulary size (thread-safe)."""

    def __init__(self, tokenizer: TextTokenizer, vocab_size: int, threads: int = 1) -> None:
        self.tokenizer, self.vocab_size, self.threads = tokenizer, vocab_size, threads
        self._lock = threading.Lock()
        self._compiler: Any = None
        self._json_allowed: torch.Tensor | None = None
        self._xgr: Any = None

    def _ready(self) -> Any:
        with self._lock:
            if self._compiler is None:
                import xgrammar as xgr
                from transformers import PreTrainedTokenizerFast

                # xgrammar reads the vocabulary type (byte-level, byte-fallback, raw) from the
                # fast tokenizer's serialized form; the wrapper adds nothing else
                wrapped = PreTrainedTokenizerFast(tokenizer_object=self.tokenizer.tokenizer)
                stop = sorted(self.tokenizer.eos_ids) or None
                info = xgr.TokenizerInfo.from_huggingface(wrapped, vocab_size=self.vocab_size,
                                                          stop_token_ids=stop)
                self._json_allowed = _packed_allowed(info, self.vocab_size)
                self._compiler = xgr.GrammarCompiler(info, max_threads=self.threads)
                self._xgr = xgr
            return self._compiler

    def constraint(self, fmt: ResponseFormat) -> TokenConstraint:
        """A fresh constraint for one sequence; raises :class:`InvalidRequestError`
        (``response_format``) when the grammar cannot be built."""
        compiler = self._ready()
        xgr = self._xgr
        try:
            if fmt.type == "regex":
                grammar = compiler.compile_regex(fmt.regex)
            elif fmt.type == "json_object":  # any object; keys and values free
                grammar = compiler.compile_json_schema('{"type": "object"}', any_whitespace=False,
                                                       strict_mode=False)
            else:
                grammar = compiler.compile_json_schema(fmt.schema, any_whitespace=False)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError with its parser's text
            raise InvalidRequestError(FIELD, f"cannot build a grammar: {exc}") from exc
        matcher = xgr.GrammarMatcher(grammar, terminate_without_stop_token=not self.tokenizer.eos_ids)
        return TokenConstraint(matcher, None if fmt.type == "regex" else self._json_allowed)

    def bitmask(self, rows: int) -> torch.Tensor:
        """An int32 bitmask buffer for ``rows`` sequences (CPU)."""
        self._ready()
        return self._xgr.allocate_token_bitmask(rows, self.vocab_size)  # type: ignore[no-any-return]

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
        """Set logits of disallowed tokens to -inf in ``rows`` of ``logits`` [B, V], in place."""
        self._xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device, non_blocking=True),
                                              vocab_size=self.vocab_size, indices=rows)


def _packed_allowed(info: Any, vocab_size: int) -> torch.Tensor:
    """Packed int32 words with bit t set unless token t decodes to a control byte."""
    allowed = np.ones(-(-vocab_size // 32) * 32, dtype=bool)
    special = set(info.special_token_ids) | set(info.stop_token_ids)
    for token, raw in enumerate(info.decoded_vocab[:vocab_size]):
        if token not in special and any(b < 0x20 for b in raw):
            allowed[token] = False
    words = np.packbits(allowed, bitorder="little").view("<i4")  # bit j of word i: token 32i+j
    return torch.from_numpy(words.astype(np.int32))


def mask_logits(compiler: GrammarCompiler, logits: torch.Tensor,
                constraints: dict[int, TokenConstraint], bitmask: torch.Tensor) -> None:
    """Mask the rows of ``logits`` [B, V] that ``constraints`` names (row -> constraint)."""
    if not constraints:
        return
    rows = sorted(constraints)
    for row in rows:
        constraints[row].fill(bitmask, row)
    compiler.apply(logits, bitmask, rows)
