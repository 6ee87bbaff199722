"""Deterministic tiny checkpoints in the real Hugging Face format, for tests and demos.

``make_tiny_checkpoint(dir, "llama" | "qwen2" | "deepseek_v3")`` writes ``config.json``,
``model.safetensors`` (random weights from a seeded generator), ``tokenizer.json`` (a
byte-level BPE trained with ``tokenizers`` on the corpus shipped with this package),
``tokenizer_config.json`` and ``generation_config.json``. Same arguments, same bytes.
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from deepserve.engine.contract.builtin import TINY_ARCHITECTURES as TINY_ARCHITECTURES
from deepserve.engine.contract.builtin import TINY_VOCAB_SIZE, tiny_config
from deepserve.engine.model.args import ModelArgs
from deepserve.engine.model.transformer import Transformer

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def corpus_text() -> str:
    """Return the small English corpus shipped with the package."""
    return resources.files("deepserve.engine").joinpath("tiny_corpus.txt").read_text("utf-8")


def train_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE tokenizer on :func:`corpus_text` (deterministic)."""
    return Tokenizer.from_str(_trained_tokenizer_json(vocab_size))


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus_text().splitlines(keepends=True), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)])
    return str(tokenizer.to_str())


def random_state_dict(args: ModelArgs, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights for ``args`` with the checkpoint's tensor names and shapes.

    Matrices get std 1/sqrt(fan_in) so activations and logits are O(1): greedy choices
    are then well separated and parity tests are not decided by rounding.
    """
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in Transformer(args).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("e_score_correction_bias"):
            tensor = torch.randn(shape, generator=gen) * 0.1
        elif name.endswith("norm.weight"):
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            tensor = 0.02 * torch.randn(shape, generator=gen)
        elif name == "model.embed_tokens.weight":
            tensor = 0.25 * torch.randn(shape, generator=gen)
        else:
            tensor = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
        state[name] = tensor.contiguous()
    if args.tie_word_embeddings:
        del state["lm_head.weight"]
    return state


def make_tiny_checkpoint(out_dir: str | Path, architecture: str = "llama", seed: int = 0,
                         config_overrides: dict[str, Any] | None = None) -> Path:
    """Write a tiny random checkpoint of ``architecture`` to ``out_dir`` and return it.

    ``config_overrides`` are merged into ``config.json`` (e.g. a ``rope_scaling`` block).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    bos_id, eos_id = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    assert bos_id is not None and eos_id is not None
    config = {**tiny_config(architecture, tokenizer.get_vocab_size(), bos_id, eos_id),
              **(config_overrides or {})}
    args = ModelArgs.from_hf_config(config)
    save_file(random_state_dict(args, seed), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
        "pad_token": PAD, "model_max_length": config["max_position_embeddings"],
        "add_bos_token": True}, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False}, indent=2) + "\n")
    return out
