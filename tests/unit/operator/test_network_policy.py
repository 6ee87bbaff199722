"""The engine pods' NetworkPolicy (issue #20.2): who may reach a model's pods, on which ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from model_cases import make_model

from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.builders import (
    BuildContext,
    ChosenPlacement,
    ModelRef,
    Settings,
    build_children,
)
from deepserve.operator.builders.context import EnginePolicy
from deepserve.operator.commands.operator import engine_policy

pytestmark = pytest.mark.unit
POLICY = EnginePolicy("deepserve-system", "monitoring", (("app.kubernetes.io/name", "prometheus"),))


def children(policy: EnginePolicy | None) -> list[dict[str, Any]]:
    spec = InferenceModelSpec.from_dict(make_model().versions(("a", 50), ("b", 50)).obj()["spec"])
    ctx = BuildContext(ModelRef("llama", "team-a", "uid-1"), spec, ChosenPlacement("l4", "nvidia-l4", 1, 1, "bf16"),
                       Settings(engine_policy=policy), {"a": 1, "b": 1})
    return build_children(ctx)


def rule_for(np: dict[str, Any], peer: dict[str, Any]) -> set[int] | None:
    """The ports a peer may reach (None: all ports), or an empty set when no rule admits it."""
    for rule in np["spec"]["ingress"]:
        if peer in rule["from"]:
            return {p["port"] for p in rule["ports"]} if "ports" in rule else None
    return set()


def test_policy_selects_every_pod_of_the_model_and_is_applied_before_any_pod_exists() -> None:
    objs = children(POLICY)
    np = objs[0]
    assert np["kind"] == "NetworkPolicy" and np["metadata"]["name"] == "llama-engine"
    assert np["metadata"]["namespace"] == "team-a"
    assert np["metadata"]["ownerReferences"][0]["name"] == "llama"  # deleted with the model
    assert np["spec"]["podSelector"] == {"matchLabels": {"deepserve.io/model": "llama"}}
    assert np["spec"]["policyTypes"] == ["Ingress"]
    pods = [o for o in objs if o["kind"] == "Deployment"]
    for dep in pods:  # both versions' pods carry the selected label
        assert dep["spec"]["template"]["metadata"]["labels"]["deepserve.io/model"] == "llama"


def test_only_gateway_operator_scrapers_and_the_models_own_pods_are_admitted() -> None:
    np = children(POLICY)[0]
    release = {"matchLabels": {"kubernetes.io/metadata.name": "deepserve-system"}}
    gateway = {"namespaceSelector": release, "podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}
    operator = {"namespaceSelector": release,
                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}}}
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
               "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    assert rule_for(np, gateway) == {8000, 8001, 9000}
    assert rule_for(np, operator) == {8000, 8001, 8002, 9000}
    assert rule_for(np, scraper) == {8002}  # metrics only: a scraper cannot send prompts
    assert rule_for(np, {"podSelector": {"matchLabels": {"deepserve.io/model": "llama"}}}) is None
    assert len(np["spec"]["ingress"]) == 4  # nothing else: every other pod is dropped
    everyone = [peer for rule in np["spec"]["ingress"] for peer in rule["from"]]
    assert {} not in everyone and not any("ipBlock" in p for p in everyone)


def test_scrapers_in_any_namespace_and_no_policy_when_off() -> None:
    np = children(EnginePolicy("ds"))[0]
    assert np["spec"]["ingress"][2]["from"] == [{"namespaceSelector": {},
                                                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    assert [o for o in children(None) if o["kind"] == "NetworkPolicy"] == []


def test_flags_give_the_policy_and_refuse_malformed_values(tmp_path: Path) -> None:
    own = tmp_path / "namespace"
    own.write_text("ops\n")
    assert engine_policy("on", "", "*/app=prom", own) == EnginePolicy("ops", None, (("app", "prom"),))
    assert engine_policy("on", "rel", "mon/team.io/scraper=yes", own) == EnginePolicy(
        "rel", "mon", (("team.io/scraper", "yes"),))
    assert engine_policy("on", "", "*/a=b", tmp_path / "absent").release_namespace == "deepserve"
    assert engine_policy("off", "", "*/a=b", own) is None
    for bad in ("prometheus", "*/not a key=x", "mon/app=not ok!", "/app=x"):
        with pytest.raises(SystemExit, match="--metrics-from"):
            engine_policy("on", "rel", bad, own)
    with pytest.raises(SystemExit, match="--release-namespace"):
        engine_policy("on", "Bad_NS", "*/a=b", own)
