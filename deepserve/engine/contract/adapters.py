"""LoRA adapters: their names, sources and the ``model`` string that picks one (no torch).

One vocabulary for admission (the CRD's CEL), the engine (``EngineOptions.adapters``), the
pod's OpenAI frontend and the gateway:

- an adapter name is :data:`ADAPTER_NAME_PATTERN` (a DNS-label-like word, dots and
  underscores allowed inside), unique within its model;
- the OpenAI ``model`` field picks an adapter with ``<model>:<adapter>``, where ``<model>``
  is whatever already names the base model (``<namespace>/<name>`` at the gateway, the
  served name at the pod): :func:`split_adapter`;
- ``builtin://tiny-lora-<seed>`` is a deterministic adapter the engine constructs for the
  base model it serves (tests and demos), see :mod:`deepserve.engine.lora.adapters`.
"""

from __future__ import annotations

import re

ADAPTER_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$"
ADAPTER_NAME_MATCH = re.compile(ADAPTER_NAME_PATTERN).match
#: Most adapters one model may list.
MAX_ADAPTERS = 64
#: Largest LoRA rank the engine accepts (``spec.engine.maxAdapterRank``'s bound).
MAX_ADAPTER_RANK = 256
#: Separator between the base model's name and the adapter in the OpenAI ``model`` field.
ADAPTER_SEPARATOR = ":"
BUILTIN_ADAPTER_PREFIX = "builtin://tiny-lora-"
BUILTIN_ADAPTER_PATTERN = r"^builtin://tiny-lora-[0-9]{1,6}$"
BUILTIN_ADAPTER_MATCH = re.compile(BUILTIN_ADAPTER_PATTERN).match


def split_adapter(model: str) -> tuple[str, str | None]:
    """``"ns/name:adapter"`` -> ``("ns/name", "adapter")``; no separator -> ``(model, None)``.

    Only the last ``:`` separates (model names have none); an empty adapter part is kept
    as ``""`` so the caller can refuse it by name.
    """
    base, sep, adapter = model.rpartition(ADAPTER_SEPARATOR)
    if not sep:
        return model, None
    return base, adapter


def join_adapter(model: str, adapter: str | None) -> str:
    """The ``model`` string that picks ``adapter`` of ``model`` (``model`` itself for None)."""
    return model if not adapter else f"{model}{ADAPTER_SEPARATOR}{adapter}"
