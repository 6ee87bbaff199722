"""Load a Hugging Face checkpoint directory into a :class:`Transformer`.

The model is built on the meta device (no memory, no init cost), tensors are read
memory-mapped from ``*.safetensors`` and assigned with ``load_state_dict(assign=True)``.
Every failure raises :class:`CheckpointError` (or ``UnsupportedModelError``) naming the
file or tensor at fault.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from deepserve.engine.model.args import ModelArgs, UnsupportedModelError
from deepserve.engine.model.transformer import Transformer

log = logging.getLogger(__name__)

# Tensors present in real checkpoints that this engine does not use (DeepSeek-V3's
# multi-token-prediction layer is handled by the layer-index filter below). DeepSeek-V3.2's
# indexer tensors are loaded by deepserve.engine.sparse when sparse attention is on.
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$|\.self_attn\.indexer\.")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class CheckpointError(ValueError):
    """The checkpoint directory is missing files or holds tensors that do not fit."""


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """Return ``config.json`` of ``model_dir`` as a dict."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (is {model_dir} a Hugging Face checkpoint?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """Return the weight files, following ``model.safetensors.index.json`` if present."""
    root = Path(model_dir)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: invalid index: {exc}") from exc
        files = [root / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{root}: no *.safetensors files")
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in the index but missing")
    return files


def _read_tensors(files: list[Path], num_layers: int) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:  # memory-mapped
                for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    layer = _LAYER.match(name)
                    if _IGNORED.search(name) or (layer and int(layer.group(1)) >= num_layers):
                        continue
                    tensors[name] = handle.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{file}: cannot read safetensors: {exc}") from exc
    return tensors


def load_transformer(model_dir: str | Path, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> Transformer:
    """Build the model described by ``model_dir/config.json`` and load its weights.

    Returns a :class:`Transformer` in eval mode on ``device``/``dtype`` (router weights
    and biases of MoE layers stay float32 as in the reference). Raises
    :class:`CheckpointError` for missing/unexpected/misshapen tensors and
    :class:`UnsupportedModelError` for architectures this engine does not implement.
    """
    args = ModelArgs.from_hf_config(read_config(model_dir))
    with torch.device("meta"):
        model = Transformer(args)
    expected = model.state_dict()
    tensors = _read_tensors(safetensors_files(model_dir), args.num_layers)
    tied = args.tie_word_embeddings and "lm_head.weight" not in tensors
    if tied and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{model_dir}: missing tensors ({len(missing)}): {missing[:5]}")
    if unexpected:
        raise CheckpointError(f"{model_dir}: unexpected tensors ({len(unexpected)}): {unexpected[:5]}")
    state: dict[str, torch.Tensor] = {}
    for name, meta in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(meta.shape):
            raise CheckpointError(
                f"{name}: shape {tuple(tensor.shape)} in checkpoint, model expects {tuple(meta.shape)}")
        keep_fp32 = name.endswith(("mlp.gate.weight", "e_score_correction_bias"))
        state[name] = tensor.to(device=device, dtype=torch.float32 if keep_fp32 else dtype)
    model.load_state_dict(state, strict=True, assign=True)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    log.info("loaded %s (%s, %d layers) from %s on %s/%s", args.architecture,
             "MLA" if args.is_mla else "GQA", args.num_layers, model_dir, device, dtype)
    return model.eval()


__all__ = ["CheckpointError", "UnsupportedModelError", "load_transformer", "read_config",
           "safetensors_files"]
