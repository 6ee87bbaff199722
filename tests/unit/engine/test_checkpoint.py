"""Checkpoint loading: architecture from config.json and clear errors for broken input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepserve.engine.checkpoint import CheckpointError, load_transformer
from deepserve.engine.model.args import ModelArgs, UnsupportedModelError

pytestmark = pytest.mark.unit


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_architecture_comes_from_config_not_folder_name(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    misleading = _copy(tiny_dirs["deepseek_v3"], tmp_path / "llama-7b")
    model = load_transformer(misleading)
    assert model.args.architecture == "deepseek_v3" and model.args.is_mla
    assert model.args.is_moe_layer(1) and not model.args.is_moe_layer(0)


def test_unsupported_architecture_is_named(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model_dir = _copy(tiny_dirs["llama"], tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="MambaForCausalLM"):
        load_transformer(model_dir)
    with pytest.raises(UnsupportedModelError, match="rope_type"):
        ModelArgs.from_hf_config({**config, "architectures": ["LlamaForCausalLM"],
                                  "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})


def test_missing_and_misshapen_tensors_are_named(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model_dir = _copy(tiny_dirs["llama"], tmp_path / "m")
    weights = load_file(model_dir / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, model_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors.*layers\.1\.mlp\.up_proj"):
        load_transformer(model_dir)
    weights["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(weights, model_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"up_proj.weight: shape \(3, 3\)"):
        load_transformer(model_dir)


def test_corrupt_or_absent_files_raise_checkpoint_error(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_transformer(tmp_path)
    model_dir = _copy(tiny_dirs["qwen2"], tmp_path / "m")
    (model_dir / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_transformer(model_dir)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors"):
        load_transformer(model_dir)
