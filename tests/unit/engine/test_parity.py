"""The engine matches Hugging Face transformers on tiny random checkpoints (fp32, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from deepserve.engine.build import build_engine
from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.options import EngineOptions
from deepserve.engine.sampling import SamplingParams
from deepserve.engine.tiny import TINY_ARCHITECTURES, make_tiny_checkpoint
from deepserve.engine.tokenizer import TextTokenizer

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.unit

PROMPTS = ["The cache holds what the model", "Sampling", "A request can be cancelled at any time."]


def _hf(model_dir: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _hf_greedy(hf: Any, ids: list[int], steps: int) -> list[int]:
    seq = torch.tensor([ids])
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(hf(seq).logits[0, -1].argmax())
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    return out


def _logit_gap(model_dir: Path) -> float:
    ours = load_transformer(model_dir)
    ours.setup_caches(3, 64)
    ids = TextTokenizer.from_dir(model_dir).encode(PROMPTS[2])
    tokens = torch.tensor([ids])
    with torch.no_grad():
        ref = _hf(model_dir)(tokens).logits
        got = ours(tokens, torch.arange(len(ids))[None], torch.tensor([2]))
    return float((ref - got).abs().max())


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_prefill_logits_match_transformers(tiny_dirs: dict[str, Path], arch: str) -> None:
    assert _logit_gap(tiny_dirs[arch]) < 1e-4


@pytest.mark.parametrize(("arch", "rope"), [
    ("llama", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    ("deepseek_v3", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}),
])
def test_scaled_rope_logits_match_transformers(tmp_path: Path, arch: str, rope: dict[str, Any]) -> None:
    model_dir = make_tiny_checkpoint(tmp_path / arch, arch, seed=2,
                                     config_overrides={"rope_scaling": rope})
    assert _logit_gap(model_dir) < 1e-4


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_greedy_64_tokens_identical_and_batched_equals_single(
        tiny_dirs: dict[str, Path], arch: str) -> None:
    model_dir = tiny_dirs[arch]
    # two slots for three prompts: the third joins when the first slot frees (continuous batching)
    engine = build_engine(EngineOptions(model_dir=str(model_dir), device="cpu", max_batch_size=2,
                                        max_input_tokens=32, max_new_tokens_limit=64))
    params = SamplingParams(max_tokens=64, ignore_eos=True)
    short = SamplingParams(max_tokens=20, ignore_eos=True)
    handles = [engine.submit(PROMPTS[0], params), engine.submit(PROMPTS[1], short),
               engine.submit(PROMPTS[2], params)]
    engine.run_until_idle()
    batched = [h.final.token_ids for h in handles if h.final is not None]
    single = [engine.generate([p], params if i != 1 else short)[0].token_ids
              for i, p in enumerate(PROMPTS)]
    assert batched == single
    assert [len(t or []) for t in batched] == [64, 20, 64]
    hf = _hf(model_dir)
    for prompt, tokens in zip(PROMPTS, batched, strict=True):
        assert tokens == _hf_greedy(hf, engine.tokenizer.encode(prompt), len(tokens or []))
