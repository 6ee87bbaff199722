"""Benchmark speculative decoding: tokens/s with and without a draft model, acceptance rate.

Target ``builtin://tiny-chat`` (3 layers x 96, trained here at creation), draft
``builtin://tiny-chat-draft`` (1 layer x 64, trained the same way, same tokenizer). Prompts
are the chat prompts the model was trained on (``tiny_chat.conversations``), answered to the
end (eos) or ``--max-tokens``. Each configuration runs ``--runs`` times on a fresh engine
(modes interleaved); greedy outputs are checked identical to plain decoding on every run.

    .venv/bin/python bench/bench_speculative.py                  # CPU, one thread, ~2 min
    .venv/bin/python bench/bench_speculative.py --device cuda    # GPU (tiny models: launch-bound)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from deepserve.engine.build import build_engine
from deepserve.engine.options import EngineOptions
from deepserve.engine.runtime import InferenceEngine
from deepserve.engine.sampling import SamplingParams
from deepserve.engine.tiny import corpus_text
from deepserve.engine.tiny_chat import conversations, render_prompt


def run_once(engine: InferenceEngine, prompts: list[str], params: SamplingParams,
             batch: int) -> tuple[float, int, list[list[int]]]:
    """Serve ``prompts`` ``batch`` at a time; (seconds, generated tokens, token ids)."""
    outputs: list[list[int]] = []
    started = time.perf_counter()
    for i in range(0, len(prompts), batch):
        outputs += [list(r.token_ids or []) for r in engine.generate(prompts[i:i + batch], params)]
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, sum(map(len, outputs)), outputs


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--tokens", default="2,4", type=lambda s: [int(x) for x in s.split(",")],
                        help="draft tokens per step (speculative_tokens) to try")
    parser.add_argument("--batches", default="1,4", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--prompt-set", default="train", choices=["train", "novel"],
                        help="train: the trained chat openings; novel: 4 random corpus words each")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.prompt_set == "train":
        prompts = [render_prompt(user) for user, _ in conversations()[: args.prompts]]
    else:  # openings the models never saw: they agree less
        words = corpus_text().split()
        gen = torch.Generator().manual_seed(1)
        prompts = [render_prompt(" ".join(words[int(i)] for i in torch.randint(0, len(words), (4,), generator=gen)))
                   for _ in range(args.prompts)]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=7)
    base = {"model_dir": "builtin://tiny-chat", "device": args.device, "max_batch_size": max(args.batches),
            "max_input_tokens": 128, "max_new_tokens_limit": args.max_tokens}
    modes = [("plain", 0)] + [(f"draft k={k}", k) for k in args.tokens]
    print(f"device {args.device}, {len(prompts)} {args.prompt_set} chat prompts, max_tokens {args.max_tokens}, "
          f"temperature {args.temperature}, {args.runs} runs: median (range)")
    print(f"{'batch':>5} {'mode':<11} {'tok/s':>20} {'speed-up':>9} {'acceptance':>20} "
          f"{'tokens/target pass':>20}")
    for batch in args.batches:
        rates: dict[str, list[float]] = {name: [] for name, _ in modes}
        accept: dict[str, list[float]] = {name: [] for name, _ in modes}
        per_pass: dict[str, list[float]] = {name: [] for name, _ in modes}
        for _ in range(args.runs):
            reference: list[list[int]] | None = None
            for name, k in modes:
                opts = dict(base, speculative_model="builtin://tiny-chat-draft", speculative_tokens=k) if k else base
                engine = build_engine(EngineOptions(**opts))  # type: ignore[arg-type]
                run_once(engine, prompts[:batch], params, batch)  # warm the allocator and kernels
                spec = engine.speculative
                if spec is not None:
                    spec.stats.__init__()  # type: ignore[misc]
                seconds, tokens, outputs = run_once(engine, prompts, params, batch)
                rates[name].append(tokens / seconds)
                if reference is None:
                    reference = outputs
                elif args.temperature == 0:
                    assert outputs == reference, f"{name}: greedy output differs from plain decoding"
                if spec is not None:
                    accept[name].append(100 * spec.stats.acceptance_rate)
                    per_pass[name].append(spec.stats.emitted / max(1, spec.stats.rows))
        plain = statistics.median(rates["plain"])
        for name, _ in modes:
            acc = summary(accept[name]) + " %" if accept[name] else "-"
            passes = summary(per_pass[name]) if per_pass[name] else "1"
            print(f"{batch:>5} {name:<11} {summary(rates[name]):>20} "
                  f"{statistics.median(rates[name]) / plain:>8.2f}x {acc:>20} {passes:>20}")


if __name__ == "__main__":
    main()
