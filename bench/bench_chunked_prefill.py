"""Benchmark chunked prefill: inter-token latency of running decodes while long prompts arrive.

A fixed set of decode sequences (short prompts, ``--decode-tokens`` tokens each) runs in one
engine; every ``--every`` engine steps a prompt from ``--prompts`` arrives (lengths cycle; the
issue's mix is 128..32k tokens, scaled down on CPU to what a tiny model prefills in well under
a second). Each decode sequence's tokens are timestamped as the engine streams them; the
figure is the p99 (and p50) gap between consecutive tokens of the decode sequences, over the
same schedule in three modes: no arrivals (decode-only), arrivals prefilled whole
(unchunked), and arrivals prefilled ``--chunks`` tokens per step (chunked). Each mode runs
``--runs`` times (fresh engine, same schedule); the table shows median and range.

    .venv/bin/python bench/bench_chunked_prefill.py                 # CPU, ~2 min, one thread
    .venv/bin/python bench/bench_chunked_prefill.py --device cuda \\
        --prompts 128,1024,4096,16384,32768 --chunks 512,2048 --every 16 --decoders 16
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deepserve.engine.build import build_engine
from deepserve.engine.options import EngineOptions
from deepserve.engine.requests import GenerationChunk
from deepserve.engine.runtime import InferenceEngine
from deepserve.engine.sampling import SamplingParams
from deepserve.engine.tiny import corpus_text, make_tiny_checkpoint


def checkpoint(root: Path, cuda: bool, max_tokens: int) -> Path:
    """A llama checkpoint sized for the device (random weights, real HF layout)."""
    size = ({"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 8,
             "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128} if cuda else
            {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64})
    return make_tiny_checkpoint(root, "llama", seed=0,
                                config_overrides={**size, "max_position_embeddings": max_tokens})


def prompt_text(engine: InferenceEngine, tokens: int, salt: int) -> str:
    """Corpus text of about ``tokens`` tokens, distinct per ``salt`` (no shared prefixes)."""
    words = corpus_text().split()
    text = f"[{salt}] " + " ".join(words[(salt * 37) % len(words):] + words) + " "
    while len(engine.tokenizer.encode(text)) < tokens:
        text += text
    return engine.tokenizer.decode(engine.tokenizer.encode(text)[1:tokens])


@dataclass
class Gaps:
    """Token timestamps of the decode sequences -> gaps between consecutive tokens."""

    last: dict[str, tuple[float, int]] = field(default_factory=dict)
    gaps: list[float] = field(default_factory=list)

    def on_chunk(self, chunk: GenerationChunk) -> None:
        now = time.perf_counter()
        prev = self.last.get(chunk.request_id)
        if prev is not None and chunk.generated_tokens > prev[1]:
            # a token that streamed no text shows up with the next one: split the gap evenly
            n = chunk.generated_tokens - prev[1]
            self.gaps.extend([(now - prev[0]) / n] * n)
        self.last[chunk.request_id] = (now, chunk.generated_tokens)


def run_once(model_dir: Path, device: str, args: argparse.Namespace, chunk: int | None,
             arrivals: bool) -> dict[str, float]:
    """One engine, one schedule; returns p50/p99 gap (ms) and wall time."""
    longest = max(args.prompts)
    engine = build_engine(EngineOptions(
        model_dir=str(model_dir), device=device, max_batch_size=args.decoders + 4,
        max_input_tokens=longest + longest // 8 + 16, max_new_tokens_limit=args.decode_tokens + 8,
        precision="fp32" if device == "cpu" else "bf16", prefill_chunk_tokens=chunk or 0))
    gaps = Gaps()
    decode = SamplingParams(max_tokens=args.decode_tokens, ignore_eos=True)
    for i in range(args.decoders):
        engine.submit(f"decode sequence {i}", decode, on_chunk=gaps.on_chunk)
    engine.step()  # all decoders admitted and streaming before the measured steps
    arrival = SamplingParams(max_tokens=2, ignore_eos=True)
    started, step, k = time.perf_counter(), 0, 0
    while engine.has_work():
        if arrivals and step % args.every == args.every // 2 and step < args.decode_tokens - args.every:
            length = args.prompts[k % len(args.prompts)]
            engine.submit(prompt_text(engine, length, k), arrival)
            k += 1
        engine.step()
        step += 1
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    ordered = sorted(gaps.gaps)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1] * 1000, "wall": wall,
            "arrivals": k, "tokens": len(ordered)}


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--prompts", default="64,256,1024,2048,128,512",
                        type=lambda s: [int(x) for x in s.split(",")],
                        help="arriving prompt lengths, cycled (CPU default: 128..32k / 16)")
    parser.add_argument("--chunks", default="16,32,128", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--decoders", type=int, default=4)
    parser.add_argument("--decode-tokens", type=int, default=240)
    parser.add_argument("--every", type=int, default=20, help="engine steps between arrivals")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = checkpoint(Path(tmp), args.device == "cuda", max(args.prompts) * 9 // 8 + args.decode_tokens + 32)
        modes: list[tuple[str, int | None, bool]] = [("decode-only", None, False), ("unchunked", None, True)]
        modes += [(f"chunked {c}", c, True) for c in args.chunks]
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in modes}
        for _ in range(args.runs):  # interleaved, so drift in machine load hits every mode
            for name, chunk, arrivals in modes:
                results[name].append(run_once(model_dir, args.device, args, chunk, arrivals))
    base = statistics.median(r["p99"] for r in results["decode-only"])
    print(f"device {args.device}, {args.decoders} decode sequences x {args.decode_tokens} tokens, "
          f"a prompt every {args.every} steps from {args.prompts}, {args.runs} runs (median (range))")
    print(f"{'mode':<14} {'p50 gap ms':>22} {'p99 gap ms':>22} {'p99 / decode-only':>18} "
          f"{'max gap ms':>22} {'wall s':>20}")
    for name, runs in results.items():
        p99 = [r["p99"] for r in runs]
        print(f"{name:<14} {summary([r['p50'] for r in runs]):>22} {summary(p99):>22} "
              f"{statistics.median(p99) / base:>18.2f} {summary([r['max'] for r in runs]):>22} "
              f"{summary([r['wall'] for r in runs]):>20}")
    arrived = results["unchunked"][0]["arrivals"]
    print(f"arrivals per run: {arrived:.0f}; gaps per run: {results['unchunked'][0]['tokens']:.0f}")


if __name__ == "__main__":
    main()
