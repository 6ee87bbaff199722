"""Resolve a model source URI to a local checkpoint directory (the engine's side of
``spec.source.uri``; see docs/api.md).

- a plain path or ``file://`` path: used as it is (``pvc://`` sources arrive mounted,
  the operator passes ``/mnt/models/<path>``);
- ``builtin://tiny-<arch>``: a deterministic tiny random checkpoint in the real Hugging
  Face format, created once under the cache directory (tests and demos);
- ``hf://org/name``: a snapshot already in the Hugging Face cache (``HF_HOME``), or
  downloaded with ``huggingface_hub`` when it is installed and the network allows;
- ``s3://``: fetched by an init step into the cache; the engine refuses to guess.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

BUILTIN_ARCHS = {"tiny-llama": "llama", "tiny-qwen2": "qwen2", "tiny-deepseek-v3": "deepseek_v3",
                 "tiny-deepseek_v3": "deepseek_v3"}


class ModelSourceError(ValueError):
    """The model source cannot be resolved; the message says why and what to do."""


def cache_dir() -> Path:
    """Where resolved models are kept (``DEEPSERVE_CACHE_DIR``, else ~/.cache/deepserve/models)."""
    env = os.environ.get("DEEPSERVE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "deepserve" / "models"


def resolve_model_dir(source: str) -> str:
    """Return a local directory holding config.json, *.safetensors and tokenizer.json."""
    if source.startswith("builtin://"):
        name = source[len("builtin://"):]
        arch = BUILTIN_ARCHS.get(name)
        if arch is None:
            raise ModelSourceError(f"model source {source!r}: unknown built-in model; "
                                   f"known: {', '.join(sorted(BUILTIN_ARCHS))}")
        out = cache_dir() / "builtin" / name
        if not (out / "config.json").exists():
            from deepserve.engine.tiny import make_tiny_checkpoint

            log.info("creating built-in model %s in %s", name, out)
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            make_tiny_checkpoint(tmp, arch, seed=0)
            out.parent.mkdir(parents=True, exist_ok=True)
            # another process may have won the race; its copy is identical
            with contextlib.suppress(OSError):
                tmp.rename(out)
            shutil.rmtree(tmp, ignore_errors=True)
        return str(out)
    if source.startswith("hf://"):
        repo = source[len("hf://"):]
        try:
            from huggingface_hub import snapshot_download
        except ImportError as e:
            raise ModelSourceError(f"model source {source!r}: huggingface_hub is not installed") from e
        try:
            return str(snapshot_download(repo, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1"))
        except Exception as e:
            raise ModelSourceError(f"model source {source!r}: {e}") from e
    if source.startswith("s3://"):
        raise ModelSourceError(f"model source {source!r}: s3 sources must be fetched into the "
                               "model cache by the pod's init step; the engine does not read s3 itself")
    if source.startswith("file://"):
        source = source[len("file://"):]
    if not Path(source).is_dir():
        raise ModelSourceError(f"model source {source!r}: not a directory")
    return source
