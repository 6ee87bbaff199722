"""The inference engine: continuous batching over a static KV cache, with streaming.

Requests wait in a queue; each :meth:`InferenceEngine.step` retires cancelled requests,
prefills waiting ones into free cache slots (the first token streams right away) and
then decodes one token for every running sequence in a single batched forward pass.
Finished sequences free their slot immediately, so short answers never wait for long
ones. ``step`` is driven by a background thread (:meth:`start`) or by the caller.

A request takes the lowest free slot, and a decode step runs over the first slots up to
the highest running one, padded to a fixed bucket size (:mod:`deepserve.engine.decode_graphs`):
a few shapes, each compiled and captured once at start, whatever batch sizes arrive.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch

from deepserve.engine.decode_graphs import BucketedDecoder
from deepserve.engine.features import EngineFeatures
from deepserve.engine.generate import prefill
from deepserve.engine.model.transformer import Transformer
from deepserve.engine.paged_kv import PagedSlots
from deepserve.engine.prefix_cache import PrefixCache
from deepserve.engine.requests import ChunkCallback, GenerationChunk, RequestHandle, RequestStats
from deepserve.engine.sampling import (
    InvalidRequestError,
    SamplingParams,
    make_generator,
    sample_token,
)
from deepserve.engine.speculative import SpeculativeDecoder, speculative_round
from deepserve.engine.structured.grammar import GrammarCompiler, TokenConstraint, mask_logits
from deepserve.engine.tokenizer import StreamDecoder, TextTokenizer

__all__ = ["ChunkCallback", "GenerationChunk", "InferenceEngine", "RequestHandle", "RequestStats"]

log = logging.getLogger(__name__)

# "auto": the weights' dtype; "fp8": E4M3 at unit scale (half the bytes of bf16)
KV_CACHE_DTYPES: dict[str, torch.dtype | None] = {"auto": None, "fp8": torch.float8_e4m3fn}


@dataclass
class _Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    handle: RequestHandle
    decoder: StreamDecoder
    callback: ChunkCallback | None
    is_cancelled: Callable[[], bool] | None
    generator: torch.Generator | None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    slot: int = -1
    next_pos: int = 0
    last_token: int = 0
    generated: int = 0
    output_ids: list[int] = field(default_factory=list)
    precision: str = ""
    reused_tokens: int = 0
    reserved_blocks: int = 0  # paged cache: blocks set aside for prompt + max_tokens
    adapter: str | None = None  # LoRA adapter (deepserve.engine.lora); None: the base model
    adapter_slot: int = 0  # its pool slot while admitted (0: the base model)
    constraint: TokenConstraint | None = None  # response_format: the grammar's state
    prefill_pos: int | None = None  # prompt rows in the cache while prefilling; None: decoding


class InferenceEngine:
    """Serves one loaded model to many concurrent requests (continuous batching)."""

    def __init__(self, model: Transformer, tokenizer: TextTokenizer, *, slots: int,
                 max_input_tokens: int, max_new_tokens_limit: int, precision: str = "fp32",
                 compile_decode: bool = False, features: EngineFeatures | None = None,
                 warm_up: bool | None = None, kv_cache_dtype: str = "auto",
                 kv_page_tokens: int = 0, kv_blocks: int = 0,
                 prefill_chunk_tokens: int = 0,
                 speculative: SpeculativeDecoder | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        # features (sparse attention, adaptive precision, prefix cache); all off by default
        self.features = features or EngineFeatures(precision=precision)
        self.device = model.lm_head.weight.device
        self.precision = precision
        self.max_input_tokens, self.max_new_tokens_limit = max_input_tokens, max_new_tokens_limit
        self.max_seq_len = min(max_input_tokens + max_new_tokens_limit,
                               model.args.max_position_embeddings)
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype: must be one of {sorted(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
        if kv_cache_dtype == "fp8" and self.features.sparse is not None:
            raise ValueError("kv_cache_dtype: fp8 is not supported with sparse attention")
        self.kv_cache_dtype = kv_cache_dtype
        self.paged: PagedSlots | None = None  # paged KV cache: blocks on demand
        # speculative decoding: a draft model proposes, one target pass verifies
        self.speculative = speculative
        if speculative is not None and (kv_page_tokens or self.features.sparse is not None):
            raise ValueError("speculative_model: not with kv_page_tokens or sparse attention")
        if kv_page_tokens:
            if self.features.prefix_cache is not None or self.features.sparse is not None:
                raise ValueError("kv_page_tokens: a paged cache shares prefixes itself; not "
                                 "with the slot prefix cache or sparse attention")
            width = -(-self.max_seq_len // kv_page_tokens)  # default: the static cache's memory
            self.paged = PagedSlots(model, self.max_seq_len, kv_page_tokens, kv_blocks or slots * width,
                                    KV_CACHE_DTYPES[kv_cache_dtype])
        else:
            spare = speculative.extra_rows if speculative is not None else 0  # rows for guesses
            model.setup_caches(slots, self.max_seq_len + spare, KV_CACHE_DTYPES[kv_cache_dtype])
            if speculative is not None:
                speculative.setup(slots, self.max_seq_len, model.args.vocab_size)
        self.slots = slots
        if prefill_chunk_tokens < 0:
            raise ValueError(f"prefill_chunk_tokens: must be >= 0, got {prefill_chunk_tokens}")
        # > 0: at most this many prompt tokens are prefilled per step, between decode steps
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self._prefilling: collections.deque[_Sequence] = collections.deque()  # admission order
        # structured output: xgrammar is loaded by the first constrained request
        self.grammars = GrammarCompiler(tokenizer, model.args.vocab_size)
        self._bitmask: torch.Tensor | None = None
        self._free = list(range(slots))  # a min-heap: running sequences stay in low slots
        self._running: dict[int, _Sequence] = {}
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._lock = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = False
        # routed experts pick data-dependent token sets: a graph break (no fullgraph) and a
        # host sync (no CUDA graph)
        dense = model.args.n_routed_experts == 0
        self.decoder = BucketedDecoder(model, slots, compile=compile_decode,
                                       graphs=compile_decode and dense, fullgraph=dense,
                                       table_width=self.paged.width if self.paged else 0,
                                       pad_block=self.paged.pad_block if self.paged else 0)
        if compile_decode if warm_up is None else warm_up:
            self.warm_up()

    def warm_up(self) -> float:
        """Compile and capture the decode step at every bucket size (before serving);
        returns the seconds it took, so no request pays a compile later."""
        with torch.inference_mode(), self.features.compute(self.features.precision):
            seconds = self.decoder.warm_up(key=self.features.precision)
        log.info("decode warm-up: buckets %s in %.1f s", self.decoder.buckets, seconds)
        return seconds

    # ----- requests -------------------------------------------------------------------
    def validate(self, prompt: str, params: SamplingParams) -> list[int]:
        """Tokenize ``prompt`` and check it fits; raise :class:`InvalidRequestError`."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequestError("text_input", "prompt must be a non-empty string")
        ids = self.tokenizer.encode(prompt)
        if len(ids) > self.max_input_tokens:
            raise InvalidRequestError(
                "text_input", f"prompt has {len(ids)} tokens, the limit is {self.max_input_tokens}")
        if params.max_tokens > self.max_new_tokens_limit:
            raise InvalidRequestError(
                "max_tokens", f"{params.max_tokens} exceeds the limit {self.max_new_tokens_limit}")
        if len(ids) + params.max_tokens > self.max_seq_len:
            raise InvalidRequestError(
                "max_tokens", f"prompt ({len(ids)}) + max_tokens ({params.max_tokens}) exceeds "
                f"the context of {self.max_seq_len} tokens")
        return ids

    def submit(self, prompt: str, params: SamplingParams, request_id: str | None = None,
               on_chunk: ChunkCallback | None = None,
               is_cancelled: Callable[[], bool] | None = None,
               adapter: str | None = None) -> RequestHandle:
        """Queue a request and return its handle; invalid requests raise at once.

        Chunks go to ``on_chunk`` (called on the engine thread) or, when it is None, to
        the handle. ``is_cancelled`` is polled every step (e.g. the client disconnected).
        ``adapter`` names one of the model's LoRA adapters (loaded on first use).
        """
        ids = self.validate(prompt, params)
        if adapter is not None:
            self.features.check_adapter(adapter)
        rid = request_id or f"req-{next(self._ids)}"
        handle = RequestHandle(rid)
        seq = _Sequence(rid, ids, params, handle, StreamDecoder(self.tokenizer, params.stop),
                        on_chunk, is_cancelled, make_generator(params, self.device),
                        adapter=adapter)
        if params.response_format is not None:  # compiled here: a bad grammar is refused at once
            seq.constraint = self.grammars.constraint(params.response_format)
        with self._lock:
            self._waiting.append(seq)
            self._lock.notify_all()
        return handle

    def has_work(self) -> bool:
        """True while requests are waiting or running."""
        with self._lock:
            return bool(self._waiting or self._running)

    # ----- the scheduler step ---------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> None:
        """Retire cancelled requests, admit waiting ones, decode one token for all."""
        try:
            self._retire_cancelled()
            self._admit()
            self._prefill_some()
            if self._running:
                self._decode_all()
        except Exception as exc:  # keep serving: fail the affected requests, not the server
            log.exception("engine step failed")
            for seq in list(self._running.values()):
                self._finish(seq, "error", "", error=f"{type(exc).__name__}: {exc}")

    def _retire_cancelled(self) -> None:
        for seq in list(self._running.values()):
            if seq.handle.cancelled or (seq.is_cancelled is not None and seq.is_cancelled()):
                self._finish(seq, "cancelled", "")
        with self._lock:
            waiting = list(self._waiting)
        for seq in waiting:
            if seq.handle.cancelled or (seq.is_cancelled is not None and seq.is_cancelled()):
                with self._lock:
                    self._waiting.remove(seq)
                self._finish(seq, "cancelled", "")

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._free or not self._waiting:
                    return
                seq = self._waiting[0]
                error = self._pin_adapter(seq)  # None: its adapter waits for a free pool slot
                if error is None:
                    return
                if self.paged is not None:  # admit only what the pool can finish
                    seq.reserved_blocks = self.paged.reserve(len(seq.prompt_ids), seq.params.max_tokens)
                    if not seq.reserved_blocks:
                        return
                self._waiting.popleft()
                seq.slot = heapq.heappop(self._free)
            self._running[seq.slot] = seq
            if error:  # the adapter could not be loaded: this request fails, others go on
                self._finish(seq, "error", "", error=error)
                continue
            seq.started_at, seq.started = datetime.now(UTC), time.monotonic()
            seq.precision = self.features.choose_precision(seq.prompt_ids)
            self._begin_prefill(seq)
            if not self.prefill_chunk_tokens:  # whole prompts, each before the next is admitted
                self._prefill_some()

    def _begin_prefill(self, seq: _Sequence) -> None:
        """Map what the caches already hold of the prompt; queue the rest for prefill."""
        if self.paged is not None:
            seq.reused_tokens = self.paged.begin(seq.slot, seq.prompt_ids)
        else:
            cache = self._prefix_cache_for(seq)
            seq.reused_tokens = cache.restore(seq.slot, seq.prompt_ids) if cache is not None else 0
        seq.prefill_pos = seq.reused_tokens
        self._prefilling.append(seq)

    def _prefix_cache_for(self, seq: _Sequence) -> PrefixCache | None:
        # the prefix cache is keyed by tokens only: an adapter changes the keys and values
        return self.features.prefix_cache if seq.adapter is None else None

    def _prefill_some(self) -> None:
        """Prefill admitted prompts in admission order: all of them, or with chunked
        prefill at most ``prefill_chunk_tokens`` prompt tokens this step (a long prompt
        then spreads over several steps and the running sequences keep decoding)."""
        budget = self.prefill_chunk_tokens or None
        while self._prefilling and (budget is None or budget > 0):
            seq = self._prefilling[0]
            if seq.prefill_pos is None or self._running.get(seq.slot) is not seq:  # cancelled
                self._prefilling.popleft()
                continue
            start, total = seq.prefill_pos, len(seq.prompt_ids)
            end = total if budget is None else min(total, start + budget)
            chunk = seq.prompt_ids[start:end]
            self.features.bind_adapters([seq.adapter_slot])
            with self.features.compute(seq.precision):
                if self.paged is not None:
                    logits = self.paged.prefill_chunk(self.model, seq.slot, chunk, start)
                else:
                    logits = prefill(self.model, torch.tensor(chunk, dtype=torch.long), seq.slot,
                                     start_pos=start)
            seq.prefill_pos = end
            if budget is not None:
                budget -= end - start
            if end < total:
                continue
            self._prefilling.popleft()
            if self.paged is not None:
                self.paged.finish_prefill(seq.slot, seq.prompt_ids)
            else:
                cache = self._prefix_cache_for(seq)
                if cache is not None:
                    cache.store(seq.slot, seq.prompt_ids)
            if self.speculative is not None:
                self.speculative.prefill(seq.slot, seq.prompt_ids)
            seq.prefill_pos, seq.next_pos = None, total
            if seq.constraint is not None:
                self._constrain(logits.unsqueeze(0), {0: seq.constraint})
            self._accept(seq, sample_token(logits, seq.params, seq.generator))

    def _decode_all(self) -> None:
        decoding = {slot: seq for slot, seq in self._running.items() if seq.prefill_pos is None}
        if not decoding:
            return
        # slots 0..width-1; free ones among them decode padding. A slot still prefilling is
        # inside the width (so the decoder's own padding never writes its row 0) and decodes
        # padding at its next prompt row, which its next chunk overwrites before it is read.
        width = max(self._running) + 1
        tokens = torch.zeros(width, dtype=torch.long)
        positions = torch.zeros(width, dtype=torch.long)
        for slot, seq in self._running.items():
            tokens[slot] = seq.last_token
            positions[slot] = seq.next_pos if seq.prefill_pos is None else seq.prefill_pos
        precision = self.features.batch_precision(s.precision for s in decoding.values())
        if self.speculative is not None:
            self._speculate(decoding, width, precision)
            return
        self.features.bind_adapters([self._running[s].adapter_slot if s in self._running else 0
                                     for s in range(width)])
        with self.features.compute(precision):
            table = None if self.paged is None else self.paged.step_table(
                {slot: seq.next_pos + 1 for slot, seq in decoding.items()}, width).to(self.device)
            logits = self.decoder(tokens.to(self.device), positions.to(self.device), key=precision,
                                  table=table)
        self._constrain(logits, {slot: seq.constraint for slot, seq in decoding.items()
                                 if seq.constraint is not None})
        greedy = logits.argmax(dim=-1).tolist()  # one device sync for every greedy sequence
        for slot, seq in decoding.items():
            seq.next_pos += 1
            token = greedy[slot] if seq.params.greedy else sample_token(
                logits[slot], seq.params, seq.generator)
            self._accept(seq, token)

    def _speculate(self, decoding: dict[int, _Sequence], width: int, precision: str) -> None:
        """One speculative round (:mod:`deepserve.engine.speculative`): each decoding
        sequence emits 1..k+1 tokens, the same as plain decoding would (greedy) or
        distributed as it (sampled)."""
        spec = self.speculative
        assert spec is not None
        pads = {slot: seq.prefill_pos for slot, seq in self._running.items() if seq.prefill_pos is not None}
        guessing = {slot for slot, seq in decoding.items() if seq.constraint is None}

        def target(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            with self.features.compute(precision):
                return self.model(tokens.to(self.device), positions.to(self.device), None).float()

        logits, guesses, probs = speculative_round(spec, target, width, decoding, guessing, pads)
        first = logits[:, 0].contiguous()  # [W, V]: constrained rows use only this, masked
        self._constrain(first, {slot: seq.constraint for slot, seq in decoding.items()
                                if seq.constraint is not None})
        for slot, seq in decoding.items():
            tokens = (spec.verify(logits[slot], guesses, probs, slot, seq) if slot in guessing
                      else [sample_token(first[slot], seq.params, seq.generator)])
            spec.stats.emitted += len(tokens)
            for token in tokens:
                seq.next_pos += 1
                self._accept(seq, token)
                if self._running.get(slot) is not seq:  # finished (stop, length, eos)
                    break

    def _constrain(self, logits: torch.Tensor, rows: dict[int, TokenConstraint]) -> None:
        """Mask ``logits`` [B, V] in place to what each constrained row's grammar allows."""
        if not rows:
            return
        if self._bitmask is None:
            self._bitmask = self.grammars.bitmask(self.slots)
        mask_logits(self.grammars, logits, rows, self._bitmask)

    def _accept(self, seq: _Sequence, token: int) -> None:
        """Record one generated token and emit text or finish the sequence."""
        if seq.first_token is None:
            seq.first_token = time.monotonic()
        seq.generated += 1
        seq.last_token = token
        seq.output_ids.append(token)
        if seq.constraint is not None and not seq.constraint.accept(token):  # masked: cannot happen
            self._finish(seq, "error", seq.decoder.flush(), error=f"token {token} is outside the grammar")
            return
        if token in self.tokenizer.eos_ids and not seq.params.ignore_eos:
            self._finish(seq, "stop", seq.decoder.flush())
            return
        piece = seq.decoder.push(token)
        if seq.decoder.stopped:
            self._finish(seq, "stop", piece)
        elif seq.constraint is not None and seq.constraint.finished:  # nothing more fits
            self._finish(seq, "stop", piece + seq.decoder.flush())
        elif seq.generated >= seq.params.max_tokens or seq.next_pos + 1 >= self.max_seq_len:
            self._finish(seq, "length", piece + seq.decoder.flush())
        elif piece:
            self._emit(seq, GenerationChunk(seq.request_id, piece, len(seq.prompt_ids), seq.generated))

    def _pin_adapter(self, seq: _Sequence) -> str | None:
        """Pin a waiting request's adapter in the pool (loading it on first use).

        Returns "" when pinned (or no adapter), None while every pool slot is held by
        running requests, or the reason it cannot be loaded.
        """
        if seq.adapter is None or seq.adapter_slot:
            return ""
        try:
            slot = self.features.pin_adapter(seq.adapter)
        except Exception as exc:  # a broken adapter fails its requests, not the engine
            log.warning("adapter %s: %s", seq.adapter, exc)
            return f"{type(exc).__name__}: {exc}"
        if slot is None:
            return None
        seq.adapter_slot = slot
        return ""

    def _finish(self, seq: _Sequence, reason: str, text: str, error: str | None = None) -> None:
        if seq.adapter_slot:  # the adapter stays resident, unpinned, until evicted
            self.features.release_adapter(seq.adapter_slot)
            seq.adapter_slot = 0
        if seq.slot >= 0 and self._running.get(seq.slot) is seq:
            del self._running[seq.slot]
            with self._lock:
                heapq.heappush(self._free, seq.slot)
            if self.paged is not None:  # finished or cancelled: its blocks go back
                self.paged.release(seq.slot, seq.reserved_blocks)
        now = time.monotonic()
        ttft = seq.first_token - seq.started if seq.first_token is not None else None
        tpot = ((now - seq.first_token) / (seq.generated - 1)
                if seq.first_token is not None and seq.generated > 1 else None)
        stats = RequestStats(len(seq.prompt_ids), seq.generated, seq.started_at,
                             datetime.now(UTC), ttft, tpot)
        precision = seq.precision or self.features.precision
        self.features.record_served(precision)
        self._emit(seq, GenerationChunk(seq.request_id, text, len(seq.prompt_ids), seq.generated,
                                        True, reason, error, stats, list(seq.output_ids),
                                        precision, seq.reused_tokens, adapter=seq.adapter))

    def _emit(self, seq: _Sequence, chunk: GenerationChunk) -> None:
        if seq.callback is None:
            seq.handle._put(chunk)
            return
        try:
            seq.callback(chunk)
        except Exception:  # a broken client must not stop the engine
            log.exception("chunk callback failed for %s", seq.request_id)
        if chunk.finished:
            seq.handle.final = chunk

    def feature_stats(self) -> dict[str, object]:
        """Counters of the part-2 techniques (KV entries read, prefix hits, precisions)."""
        return self.features.stats()

    # ----- drivers --------------------------------------------------------------------
    def run_until_idle(self) -> None:
        """Step until no request is waiting or running (synchronous use, tests)."""
        while self.has_work():
            self.step()

    def generate(self, prompts: list[str], params: SamplingParams) -> list[GenerationChunk]:
        """Generate for ``prompts`` together (batched); return each request's whole text.

        The returned chunks are the final chunks with ``text`` holding the full completion.
        """
        handles = [self.submit(p, params) for p in prompts]
        self.run_until_idle()
        results = []
        for handle in handles:
            chunks = handle.drain()
            final = chunks[-1]
            final.text = "".join(c.text for c in chunks)
            results.append(final)
        return results

    def start(self) -> None:
        """Run :meth:`step` on a background thread until :meth:`stop`."""
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="deepserve-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not (self._waiting or self._running):
                    self._lock.wait(timeout=0.5)
                if self._stop:
                    return
            self.step()

    def stop(self, cancel_pending: bool = True) -> None:
        """Stop the background thread; pending requests are cancelled unless told not to."""
        if cancel_pending:
            with self._lock:
                seqs = list(self._waiting) + list(self._running.values())
            for seq in seqs:
                seq.handle.cancel()
            deadline = time.monotonic() + 10
            while self.has_work() and time.monotonic() < deadline and self._thread is not None:
                time.sleep(0.01)
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
