"""#17.3: every source form reaches the engine: pvc:// as a volume, s3:// and hf:// through
the fetch init container, with credentials as files in the init container only."""

from __future__ import annotations

from typing import Any

import pytest
from model_cases import make_model

from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.builders import (
    BuildContext,
    ChosenPlacement,
    ModelRef,
    Settings,
    build_deployment,
)
from deepserve.operator.builders.repository import engine_options
from deepserve.operator.builders.sources import FETCH_CONTAINER, SOURCE_CREDENTIALS_DIR

pytestmark = pytest.mark.unit
POOL = ChosenPlacement("l4", "nvidia-l4", 1, 1, "auto", {"pool": "l4"})


def _ctx(source: dict[str, Any]) -> BuildContext:
    raw = make_model().obj()["spec"]
    raw["source"] = source
    view = InferenceModelSpec.from_dict(raw)
    return BuildContext(ModelRef("m", "ns", "uid"), view, POOL, Settings(), {"main": 1})


def _pod(ctx: BuildContext) -> dict[str, Any]:
    return build_deployment(ctx, "main")["spec"]["template"]["spec"]


@pytest.mark.parametrize("source", [
    {"uri": "s3://weights/team/llama", "credentialsSecret": "s3-creds"},
    {"uri": "hf://org/gated", "revision": "v1.2", "credentialsSecret": "hf-token"},
])
def test_remote_sources_are_fetched_by_an_init_container_into_the_engines_model_dir(
        source: dict[str, Any]) -> None:
    ctx = _ctx(source)
    pod = _pod(ctx)
    (init,) = pod["initContainers"]
    engine = pod["containers"][0]
    model_dir = engine_options(ctx, ctx.spec.versions[0]).model_dir
    assert init["name"] == FETCH_CONTAINER and init["image"] == engine["image"]
    assert init["command"][:5] == ["deepserve", "engine", "fetch", source["uri"], "--dest"]
    assert init["command"][5] == model_dir and model_dir.startswith("/var/cache/deepserve/fetched/")
    assert ("--revision" in init["command"]) == ("revision" in source)
    assert init["command"][-2:] == ["--credentials-dir", SOURCE_CREDENTIALS_DIR]
    # the Secret is a file volume of the init container only; no env var carries it
    secret_vol = next(v for v in pod["volumes"] if v.get("secret"))
    assert secret_vol["secret"]["secretName"] == source["credentialsSecret"]
    assert any(m["name"] == secret_vol["name"] for m in init["volumeMounts"])
    assert not any(m["name"] == secret_vol["name"] for m in engine["volumeMounts"])
    assert "envFrom" not in engine and "envFrom" not in init
    cache = next(m for m in engine["volumeMounts"] if m["name"] == "cache")
    assert model_dir.startswith(cache["mountPath"]) and cache in init["volumeMounts"]
    assert init["securityContext"] == engine["securityContext"]
    assert "nvidia.com/gpu" not in init["resources"]["requests"]  # the GPU is the engine's


def test_no_unread_source_env_vars_and_no_init_for_volume_sources() -> None:
    for source in ({"uri": "pvc://weights/llama/8b"}, {"uri": "builtin://tiny-llama"},
                   {"uri": "hf://org/model", "revision": "main"}):
        pod = _pod(_ctx(source))
        names = {e["name"] for c in pod["containers"] + pod.get("initContainers", []) for e in c["env"]}
        assert not names & {"DEEPSERVE_MODEL_SOURCE", "DEEPSERVE_MODEL_FORMAT", "DEEPSERVE_MODEL_REVISION"}
    assert "initContainers" not in _pod(_ctx({"uri": "pvc://weights/llama/8b"}))
    assert "initContainers" not in _pod(_ctx({"uri": "builtin://tiny-llama"}))
