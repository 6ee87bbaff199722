"""Benchmark the prefix cache: time to first token of a repeated prompt, with and without.

Builds real engines (``build_engine``) on a generated checkpoint and measures the
engine's own time-to-first-token for a prompt seen before: no cache (full prefill),
a device-tier hit, and a host-tier hit (device budget 0: blocks come back over
PCIe/memcpy), plus a shared system prompt with distinct questions.

    .venv/bin/python bench/bench_prefix_cache.py                # CPU, ~1 min
    .venv/bin/python bench/bench_prefix_cache.py --device cuda  # H200
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

import torch

from deepserve.engine.build import build_engine
from deepserve.engine.options import EngineOptions
from deepserve.engine.runtime import InferenceEngine
from deepserve.engine.sampling import SamplingParams
from deepserve.engine.tiny import corpus_text, make_tiny_checkpoint

ONE_TOKEN = SamplingParams(max_tokens=1, ignore_eos=True)


def checkpoint(root: Path, cuda: bool, max_tokens: int) -> Path:
    """A llama checkpoint sized for the device (random weights, real HF layout)."""
    size = ({"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 8,
             "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128} if cuda else
            {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64})
    return make_tiny_checkpoint(root, "llama", seed=0,
                                config_overrides={**size, "max_position_embeddings": max_tokens})


def prompt_of(engine: InferenceEngine, tokens: int, salt: int) -> str:
    """Corpus text cut to about ``tokens`` tokens, made unique by ``salt``."""
    words = (corpus_text().split() * 200)[salt * 7:]
    text, n = f"[{salt}] ", 0
    step = 64
    while n < tokens:
        text += " ".join(words[:step]) + " "
        words = words[step:]
        n = len(engine.tokenizer.encode(text))
    ids = engine.tokenizer.encode(text)[1:tokens]  # drop BOS (encode adds it again)
    return engine.tokenizer.decode(ids)


def ttft_ms(engine: InferenceEngine, prompt: str) -> float:
    final = engine.generate([prompt], ONE_TOKEN)[0]
    assert final.stats is not None and final.stats.time_to_first_token_s is not None
    return final.stats.time_to_first_token_s * 1000


def measure(engine: InferenceEngine, prompt: str, repeats: int) -> tuple[float, float, int]:
    """(first-seen ms, median repeated ms, reused tokens of the last repeat)."""
    cold = ttft_ms(engine, prompt)
    warm = [ttft_ms(engine, prompt) for _ in range(repeats)]
    last = engine.generate([prompt], ONE_TOKEN)[0]
    return cold, statistics.median(warm), last.reused_prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    lengths = args.lengths or ([1024, 4096, 16384] if cuda else [256, 1024, 2048])
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    longest = max(lengths)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = checkpoint(Path(tmp), cuda, longest + 64)
        configs = {"no cache": (0, 0), "device tier": (1024, 0), "host tier only": (0, 2048)}
        engines = {}
        for name, (dev_mib, host_mib) in configs.items():
            engines[name] = build_engine(EngineOptions(
                model_dir=str(model_dir), device=args.device, max_batch_size=1,
                max_input_tokens=longest + 32, max_new_tokens_limit=8,
                precision="bf16" if cuda else "fp32",
                prefix_cache_mib=dev_mib, host_cache_mib=host_mib))
        probe = engines["no cache"]
        ttft_ms(probe, prompt_of(probe, 64, 999))  # warm-up (allocator, kernels)
        print(f"\nrepeated prompt, time to first token (ms), {args.device}, "
              f"{probe.model.args.num_layers} layers x {probe.model.args.hidden_size}")
        print(f"{'prompt tokens':>14}{'config':>16}{'first':>10}{'repeat':>10}{'speedup':>9}"
              f"{'reused':>8}")
        for length in lengths:
            for name, engine in engines.items():
                prompt = prompt_of(engine, length, length)
                cold, warm, reused = measure(engine, prompt, args.repeats)
                print(f"{length:>14}{name:>16}{cold:>10.1f}{warm:>10.1f}{cold / warm:>9.2f}"
                      f"{reused:>8}")
        engine = engines["device tier"]
        system = prompt_of(engine, lengths[-1], 4242)
        ttft_ms(engine, system + " question zero?")
        shared = [ttft_ms(engine, f"{system} question {i}?") for i in range(args.repeats)]
        baseline = [ttft_ms(engines["no cache"], f"{system} question {i}?") for i in range(args.repeats)]
        print(f"\nshared {lengths[-1]}-token system prompt + distinct question: "
              f"{statistics.median(baseline):.1f} ms without, {statistics.median(shared):.1f} ms with "
              f"the cache")
        for name, engine in engines.items():
            print(f"{name}: {engine.feature_stats().get('prefix_cache', {})}")


if __name__ == "__main__":
    main()
