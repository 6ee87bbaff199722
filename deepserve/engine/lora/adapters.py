"""LoRA adapters on disk: the PEFT format, and a deterministic built-in adapter for tests.

An adapter directory holds ``adapter_config.json`` (``r``, ``lora_alpha``, optionally
``use_rslora``) and ``adapter_model.safetensors`` with, per targeted module,
``base_model.model.<module path>.lora_A.weight`` ``[r, in]`` and ``...lora_B.weight``
``[out, r]`` — what Hugging Face PEFT saves, so adapters trained with PEFT load as they are.
The update is ``W' = W + scale * B @ A`` with ``scale = lora_alpha / r``
(``lora_alpha / sqrt(r)`` with ``use_rslora``).

``builtin://tiny-lora-<seed>`` is written by :func:`make_tiny_adapter` for the base model
being served: seeded random A and B (B is not zero, unlike a fresh PEFT adapter, so the
adapter changes the output) for every projection the engine can adapt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from deepserve.engine.contract.adapters import BUILTIN_ADAPTER_MATCH, BUILTIN_ADAPTER_PREFIX

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."
BUILTIN_DEFAULT_RANK = 8


class AdapterError(ValueError):
    """An adapter cannot be used; the message names the adapter and what is wrong."""


@dataclass(frozen=True)
class AdapterWeights:
    """One adapter read from disk: ``modules[path] = (A [r, in], B [out, r])`` unscaled."""

    name: str
    rank: int
    scale: float
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def merged_delta(self, path: str) -> torch.Tensor:
        """``scale * B @ A`` for one module: what merging adds to its weight [out, in]."""
        a, b = self.modules[path]
        return self.scale * (b.double() @ a.double())


def read_adapter(directory: str | Path, name: str) -> AdapterWeights:
    """Read a PEFT LoRA adapter; raise :class:`AdapterError` naming ``name`` when it is not one."""
    root = Path(directory)
    try:
        config = json.loads((root / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"adapter {name!r}: cannot read {root / CONFIG_FILE}: {exc}") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {name!r}: peft_type {config.get('peft_type')!r}, only LORA is served")
    for flag in ("use_dora", "fan_in_fan_out"):
        if config.get(flag):
            raise AdapterError(f"adapter {name!r}: {flag} adapters are not supported")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"adapter {name!r}: bias {config.get('bias')!r} is not supported (only 'none')")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"adapter {name!r}: adapter_config.json r must be a positive integer")
    alpha = float(config.get("lora_alpha", rank))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    halves: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(root / WEIGHTS_FILE), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                path, half = _split_key(name, key)
                halves.setdefault(path, {})[half] = handle.get_tensor(key).float()
    except (OSError, RuntimeError) as exc:  # safetensors raises these for missing/corrupt files
        raise AdapterError(f"adapter {name!r}: cannot read {root / WEIGHTS_FILE}: {exc}") from exc
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path, pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"adapter {name!r}: {path} has lora_{'A' if 'A' not in pair else 'B'} missing")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise AdapterError(f"adapter {name!r}: {path} has lora_A {list(a.shape)} and lora_B "
                               f"{list(b.shape)}, expected [r, in] and [out, r] with r={rank}")
        modules[path] = (a, b)
    if not modules:
        raise AdapterError(f"adapter {name!r}: no LoRA weights in {root / WEIGHTS_FILE}")
    return AdapterWeights(name, rank, scale, modules)


def _split_key(name: str, key: str) -> tuple[str, str]:
    body = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
    for half in ("A", "B"):
        for tail in (f".lora_{half}.weight", f".lora_{half}.default.weight"):
            if body.endswith(tail):
                return body[: -len(tail)], half
    raise AdapterError(f"adapter {name!r}: unexpected tensor {key!r} (only lora_A/lora_B weights)")


def write_adapter(directory: str | Path, modules: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  rank: int, alpha: float, base_model: str = "") -> Path:
    """Write ``modules`` (path -> (A, B)) as a PEFT adapter directory and return it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for path, (a, b) in modules.items():
        tensors[f"{_PREFIX}{path}.lora_A.weight"] = a.contiguous()
        tensors[f"{_PREFIX}{path}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    targets = sorted({path.rsplit(".", 1)[-1] for path in modules})
    (out / CONFIG_FILE).write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": targets,
        "bias": "none", "base_model_name_or_path": base_model, "task_type": "CAUSAL_LM"},
        indent=2, sort_keys=True) + "\n")
    return out


def adaptable_modules(base_dir: str | Path) -> dict[str, tuple[int, int]]:
    """Every module path of the base checkpoint an adapter may target -> (in, out)."""
    from deepserve.engine.checkpoint import read_config
    from deepserve.engine.lora.layers import _linear_shape, _targets_of
    from deepserve.engine.model.args import ModelArgs
    from deepserve.engine.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(ModelArgs.from_hf_config(read_config(base_dir)))
    shapes: dict[str, tuple[int, int]] = {}
    for parent, attr, prefix, parts in _targets_of(model):
        in_features, _ = _linear_shape(getattr(parent, attr))
        for part, out in parts:
            shapes[f"{prefix}{part}"] = (in_features, out)
    return shapes


def make_tiny_adapter(out_dir: str | Path, base_dir: str | Path, seed: int,
                      rank: int = BUILTIN_DEFAULT_RANK) -> Path:
    """A deterministic adapter for the checkpoint in ``base_dir`` (same arguments, same bytes).

    A ~ N(0, 1/in), B ~ N(0, 0.25/r), alpha = r: the update is about half the size of
    the base projection's output, so greedy text changes.
    """
    gen = torch.Generator().manual_seed(seed)
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path, (in_features, out) in sorted(adaptable_modules(base_dir).items()):
        a = torch.randn(rank, in_features, generator=gen) / math.sqrt(in_features)
        b = 0.5 * torch.randn(out, rank, generator=gen) / math.sqrt(rank)
        modules[path] = (a, b)
    return write_adapter(out_dir, modules, rank, float(rank), str(base_dir))


def resolve_adapter_dir(source: str, base_dir: str | Path, rank: int = 0) -> str:
    """A local adapter directory for ``source``: a path as it is (``pvc://`` and fetched
    ``hf://``/``s3://`` sources arrive as directories), or the built-in adapter, created
    once in the cache for this base model."""
    if source.startswith("builtin://"):
        if not BUILTIN_ADAPTER_MATCH(source):
            raise AdapterError(f"adapter source {source!r}: built-in adapters are "
                               f"{BUILTIN_ADAPTER_PREFIX}<seed>")
        from deepserve.engine.sources import cache_dir

        seed = int(source[len(BUILTIN_ADAPTER_PREFIX):])
        rank = rank or BUILTIN_DEFAULT_RANK
        base_key = hashlib.sha256((Path(base_dir) / "config.json").read_bytes()).hexdigest()[:16]
        out = cache_dir() / "builtin-adapters" / base_key / f"tiny-lora-{seed}-r{rank}"
        if not (out / CONFIG_FILE).exists():
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            make_tiny_adapter(tmp, base_dir, seed, rank)
            with contextlib.suppress(OSError):  # another process may have won the race
                tmp.rename(out)
            shutil.rmtree(tmp, ignore_errors=True)
        return str(out)
    if source.startswith("file://"):
        source = source[len("file://"):]
    if "://" in source:
        raise AdapterError(f"adapter source {source!r}: the engine reads local directories; "
                           "pvc://, hf:// and s3:// sources are mounted or fetched by the operator")
    if not Path(source).is_dir():
        raise AdapterError(f"adapter source {source!r}: not a directory")
    return source


def merge_adapter(base_dir: str | Path, weights: AdapterWeights, out_dir: str | Path) -> Path:
    """Write a checkpoint of ``base_dir`` with ``weights`` merged in (``W + scale * B @ A``,
    computed in float64, stored in the base's dtype): the reference a served adapter is
    checked against, and a way to export one."""
    from deepserve.engine.checkpoint import safetensors_files

    base, out = Path(base_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for file in safetensors_files(base):
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensors[key] = handle.get_tensor(key)
    for path in weights.modules:
        key = f"{path}.weight"
        if key not in tensors:
            raise AdapterError(f"adapter {weights.name!r}: {path} is not a module of {base}")
        w = tensors[key]
        tensors[key] = (w.double() + weights.merged_delta(path)).to(w.dtype).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for item in base.iterdir():
        if item.is_file() and not item.name.endswith(".safetensors") and item.name != "model.safetensors.index.json":
            shutil.copy2(item, out / item.name)
    return out
