"""Resolve a model source URI to a local checkpoint directory (the engine's side of
``spec.source.uri``; see docs/api.md).

- a plain path or ``file://`` path: used as it is (``pvc://`` sources arrive mounted,
  the operator passes ``/mnt/models/<path>``);
- ``builtin://tiny-<arch>``: a deterministic tiny random checkpoint in the real Hugging
  Face format, created once under the cache directory (tests and demos);
  ``builtin://tiny-chat`` is trained there instead (:mod:`deepserve.engine.tiny_chat`);
- ``hf://org/name[@revision]`` and ``s3://bucket/prefix``: fetched by
  :func:`deepserve.engine.fetch.fetch` into ``<cache>/fetched/<key>`` (in a pod the init
  container ``deepserve engine fetch`` has done it already and the operator passes that
  directory), with credentials read from the files in ``DEEPSERVE_SOURCE_CREDENTIALS``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from deepserve.engine.contract.builtin import BUILTIN_MODELS
from deepserve.engine.fetch import FetchError, fetch, fetched_model_dir

log = logging.getLogger(__name__)

BUILTIN_ARCHS = BUILTIN_MODELS  # builtin://<name> -> architecture (torch-free, for admission)
# engine-side only (a draft for EngineOptions.speculative_model, not an InferenceModel source)
DRAFT_MODELS = {"tiny-chat-draft": "llama"}


class ModelSourceError(ValueError):
    """The model source cannot be resolved; the message says why and what to do."""


def cache_dir() -> Path:
    """Where resolved models are kept (``DEEPSERVE_CACHE_DIR``, else ~/.cache/deepserve/models)."""
    env = os.environ.get("DEEPSERVE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "deepserve" / "models"


def resolve_model_dir(source: str, revision: str | None = None) -> str:
    """Return a local directory holding config.json, *.safetensors and tokenizer.json."""
    if source.startswith("builtin://"):
        name = source[len("builtin://"):]
        arch = BUILTIN_ARCHS.get(name) or DRAFT_MODELS.get(name)
        if arch is None:
            raise ModelSourceError(f"model source {source!r}: unknown built-in model; "
                                   f"known: {', '.join(sorted(BUILTIN_ARCHS))}")
        out = cache_dir() / "builtin" / name
        if not (out / "config.json").exists():
            from deepserve.engine.tiny import make_tiny_checkpoint
            from deepserve.engine.tiny_chat import make_tiny_chat_checkpoint

            log.info("creating built-in model %s in %s", name, out)
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            if name == "tiny-chat":  # trained here (~30 s of one core), not random weights
                make_tiny_chat_checkpoint(tmp)
            elif name == "tiny-chat-draft":
                from deepserve.engine.tiny_chat import DRAFT_SHAPE

                make_tiny_chat_checkpoint(tmp, shape=DRAFT_SHAPE)
            else:
                make_tiny_checkpoint(tmp, arch, seed=0)
            out.parent.mkdir(parents=True, exist_ok=True)
            # another process may have won the race; its copy is identical
            with contextlib.suppress(OSError):
                tmp.rename(out)
            shutil.rmtree(tmp, ignore_errors=True)
        return str(out)
    if source.startswith(("hf://", "s3://")):
        try:
            return str(fetch(source, fetched_model_dir(cache_dir(), source, revision), revision,
                             os.environ.get("DEEPSERVE_SOURCE_CREDENTIALS") or None))
        except FetchError as e:
            raise ModelSourceError(str(e)) from e
    if source.startswith("file://"):
        source = source[len("file://"):]
    if not Path(source).is_dir():
        raise ModelSourceError(f"model source {source!r}: not a directory")
    return source
