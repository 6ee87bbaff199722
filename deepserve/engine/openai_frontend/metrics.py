"""The pod's model-server gauges in the Gateway API Inference Extension's protocol.

The protocol (kubernetes-sigs/gateway-api-inference-extension,
docs/proposals/003-model-server-protocol) asks a model server for Prometheus gauges of
queued requests, running requests and KV-cache utilisation, and for LoRA serving a
``lora_requests_info`` gauge whose labels list the running and waiting adapters; the names
may differ if type and semantics match. We publish them under the vLLM names the endpoint
picker reads by default, so a stock picker scrapes deepserve pods unchanged:

* ``vllm:num_requests_waiting``: requests queued for a cache slot (gauge)
* ``vllm:num_requests_running``: requests being decoded (gauge)
* ``vllm:kv_cache_usage_perc`` (and the older ``vllm:gpu_cache_usage_perc``): fraction of
  the KV cache in use, 0..1 as vLLM reports it (gauge)
* ``vllm:lora_requests_info{running_lora_adapters, waiting_lora_adapters, max_lora}``:
  deepserve serves no LoRA adapters, so both lists are empty and ``max_lora`` is 0; the
  value is the time of the report, as in vLLM.

The figures come from the engine backend's own gauges on Triton's metrics page
(``deepserve_requests_queued`` etc., :mod:`deepserve.engine.triton.metrics`).
"""

from __future__ import annotations

import time

ENGINE_GAUGES = {
    "deepserve_requests_queued": ("vllm:num_requests_waiting", "Requests waiting for a cache slot"),
    "deepserve_requests_running": ("vllm:num_requests_running", "Requests being decoded"),
    "deepserve_kv_cache_usage_ratio": ("vllm:kv_cache_usage_perc",
                                       "KV-cache usage, a fraction in [0, 1]"),
}
LEGACY_KV_NAME = "vllm:gpu_cache_usage_perc"


def _label_value(labels: str, key: str) -> str | None:
    marker = f'{key}="'
    if marker not in labels:
        return None
    return labels.split(marker, 1)[1].split('"', 1)[0]


def engine_gauges(triton_metrics: str, model: str) -> dict[str, float]:
    """The engine gauges of ``model`` found on Triton's metrics page (summed over versions)."""
    found: dict[str, float] = {}
    for line in triton_metrics.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        name, rest = line.split("{", 1)
        if name not in ENGINE_GAUGES:
            continue
        labels, _, value = rest.rpartition("} ")
        if _label_value(labels, "model") != model:
            continue
        try:
            found[name] = found.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return found


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_gauges(model: str, gauges: dict[str, float], now: float | None = None) -> str:
    """Prometheus text exposition of the protocol gauges for ``model``."""
    label = f'model_name="{_escape(model)}"'
    out: list[str] = []

    def gauge(name: str, doc: str, value: float, labels: str = label) -> None:
        out.extend([f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name}{{{labels}}} {value:g}"])

    for source, (name, doc) in ENGINE_GAUGES.items():
        gauge(name, doc, gauges.get(source, 0.0))
    gauge(LEGACY_KV_NAME, "KV-cache usage (older name), a fraction in [0, 1]",
          gauges.get("deepserve_kv_cache_usage_ratio", 0.0))
    gauge("vllm:lora_requests_info", "LoRA adapters running and waiting (none are served)",
          time.time() if now is None else now,
          f'{label},max_lora="0",running_lora_adapters="",waiting_lora_adapters=""')
    return "\n".join(out) + "\n"
