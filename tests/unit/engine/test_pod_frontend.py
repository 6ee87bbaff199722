"""The pod frontend's pure parts: load bookkeeping, gauges, chat templates, error mapping,
and the frontend container in the engine Deployment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deepserve.engine.openai_frontend.metrics import engine_gauges, render_gauges
from deepserve.engine.openai_frontend.triton_stream import EngineRequest, build_inputs, engine_error
from deepserve.engine.sampling import InvalidRequestError
from deepserve.engine.triton.chat_template import ChatTemplate, parse_messages
from deepserve.engine.triton.load import EngineLoad
from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.builders import (
    BuildContext,
    ChosenPlacement,
    ModelRef,
    Settings,
    build_deployment,
)
from deepserve.operator.cli import build_parser

pytestmark = pytest.mark.unit
TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n"
            "{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}")


def test_load_counts_queued_running_and_kv_use() -> None:
    load = EngineLoad(capacity_tokens=100)
    load.submitted("a")
    load.submitted("b")
    assert load.snapshot() == load.snapshot().__class__(2, 0, 0.0)
    load.progressed("a", prompt_tokens=30, generated_tokens=1)
    load.progressed("a", prompt_tokens=30, generated_tokens=10)  # replaces, not adds
    snap = load.snapshot()
    assert (snap.queued, snap.running, snap.kv_cache_usage) == (1, 1, 0.4)
    load.finished("a")
    load.finished("b")
    load.finished("never-seen")
    assert load.snapshot() == load.snapshot().__class__(0, 0, 0.0)


def test_gauges_read_the_engine_page_for_this_model_only() -> None:
    page = "\n".join([
        "# TYPE deepserve_requests_queued gauge",
        'deepserve_requests_queued{model="m",version="v1",precision="bf16"} 3',
        'deepserve_requests_queued{model="other",version="v1",precision="bf16"} 50',
        'deepserve_requests_running{model="m",version="v1",precision="bf16"} 2',
        'deepserve_kv_cache_usage_ratio{model="m",version="v1",precision="bf16"} 0.25',
        'nv_inference_count{model="m",version="1"} 9',
    ])
    gauges = engine_gauges(page, "m")
    assert gauges == {"deepserve_requests_queued": 3.0, "deepserve_requests_running": 2.0,
                      "deepserve_kv_cache_usage_ratio": 0.25}
    text = render_gauges("m", gauges, now=1700000000.0)
    assert 'vllm:num_requests_waiting{model_name="m"} 3' in text
    assert 'vllm:num_requests_running{model_name="m"} 2' in text
    assert 'vllm:kv_cache_usage_perc{model_name="m"} 0.25' in text
    assert 'vllm:gpu_cache_usage_perc{model_name="m"} 0.25' in text
    assert ('vllm:lora_requests_info{model_name="m",max_lora="0",running_lora_adapters="",'
            'waiting_lora_adapters=""} 1.7e+09') in text
    assert text.count("# TYPE ") == 5 and all(
        line.split(" ")[3] == "gauge" for line in text.splitlines() if line.startswith("# TYPE"))


def test_chat_template_renders_as_transformers_does(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    from transformers import PreTrainedTokenizerFast

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    for f in tiny_dirs["llama"].iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi {{ x }}"}]
    hf = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    template = ChatTemplate.from_model_dir(model_dir)
    assert template is not None
    assert hf.bos_token + template.render(messages) == expected  # the tokenizer adds BOS itself
    assert ChatTemplate.from_model_dir(tiny_dirs["llama"]) is None  # no template: chat is refused


def test_template_errors_and_bad_messages_name_the_field() -> None:
    raising = ChatTemplate("{{ raise_exception('only user turns') }}", "", "")
    with pytest.raises(InvalidRequestError, match="chat_messages: refused by the chat template"):
        raising.render([{"role": "user", "content": "x"}])
    for raw in ("[", "{}", "[]", '[{"role": "tool", "content": "x"}]', '[{"role": "user"}]',
                '[{"role": "user", "content": 3}]', "[" * 5000 + "]" * 5000):
        with pytest.raises(InvalidRequestError) as exc:
            parse_messages(raw)
        assert exc.value.field == "chat_messages"


def test_engine_errors_are_classified_by_the_input_they_name() -> None:
    err = engine_error("[StatusCode.INVALID_ARGUMENT] max_tokens: 900 exceeds the limit 256")
    assert (err.field, err.invalid, err.message) == ("max_tokens", True, "900 exceeds the limit 256")
    assert engine_error("text_input: prompt has 900 tokens").field == "text_input"
    err = engine_error("engine error: CUDA out of memory")
    assert (err.field, err.invalid) == (None, False)


def test_engine_inputs_always_stream_and_carry_the_tenant() -> None:
    import tritonclient.grpc as grpc

    req = EngineRequest("r1", messages=[{"role": "user", "content": "hé"}], max_tokens=5, seed=7,
                        stop=["\n"], tenant="acme")
    inputs = {i.name(): i for i in build_inputs(grpc, req)}
    assert set(inputs) == {"stream", "temperature", "top_p", "chat_messages", "max_tokens", "seed",
                           "stop", "tenant"}
    assert inputs["stream"].datatype() == "BOOL" and inputs["seed"].datatype() == "INT64"
    assert "text_input" not in inputs and inputs["max_tokens"].shape() == [1]


def _deployment() -> dict[str, Any]:
    spec = InferenceModelSpec.from_dict({"source": {"uri": "builtin://tiny-llama"}})
    placement = ChosenPlacement("a100", "nvidia-a100-sxm4-80gb", 1, 1, "bf16", {}, ())
    ctx = BuildContext(ModelRef("llama", "team-a", "uid-1"), spec, placement, Settings(),
                       {v.name: 1 for v in spec.versions})
    return build_deployment(ctx, spec.versions[0].name)


def test_engine_pod_runs_the_frontend_next_to_triton() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    triton, front = pod["containers"]
    assert front["name"] == "openai-frontend" and front["image"] == triton["image"]
    assert front["ports"] == [{"name": "openai", "containerPort": 9000, "protocol": "TCP"}]
    assert front["readinessProbe"]["httpGet"] == {"path": "/health", "port": "openai"}
    assert front["securityContext"] == triton["securityContext"]
    assert front["env"] == [] and "envFrom" not in front  # no source credentials here
    args = build_parser().parse_args(front["args"])  # the real CLI accepts them
    assert args.func.__name__ == "cmd_openai_frontend"
    assert (args.model, args.triton_grpc, args.port) == ("llama", "127.0.0.1:8001", 9000)
    assert args.triton_metrics == "http://127.0.0.1:8002/metrics"
