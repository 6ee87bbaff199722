"""The kind path (make e2e-kind) is checkable without Docker: script, kind config, images, CI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "hack" / "e2e-kind.sh"

# Fields kind's v1alpha4 Cluster accepts (it decodes strictly: anything else is an error).
KIND_CLUSTER_FIELDS = {"kind", "apiVersion", "name", "nodes", "networking", "featureGates", "runtimeConfig",
                       "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902", "containerdConfigPatches",
                       "containerdConfigPatchesJSON6902"}
KIND_NODE_FIELDS = {"role", "image", "labels", "extraMounts", "extraPortMappings", "kubeadmConfigPatches",
                    "kubeadmConfigPatchesJSON6902"}
KIND_NETWORKING_FIELDS = {"ipFamily", "apiServerAddress", "apiServerPort", "podSubnet", "serviceSubnet",
                          "disableDefaultCNI", "kubeProxyMode", "dnsSearch"}


def test_script_parses_and_passes_shellcheck() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK), "hack/e2e-kind.sh must be executable (make e2e-kind runs it)"
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    proc = subprocess.run(["shellcheck", "-x", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_dry_run_prints_every_step_in_order(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path), HELM="helm", KUBECTL="kubectl", IMAGE_TAG="t1")
    proc = subprocess.run([str(SCRIPT), "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    steps = [line[2:] for line in proc.stderr.splitlines() if line.startswith("+ ")]
    expected = [
        "docker build -f deepserve/operator/Dockerfile -t deepserve/operator:t1 .",
        "docker build -f deepserve/engine/Dockerfile -t deepserve/engine:t1 .",
        "kind create cluster --name deepserve-e2e --image kindest/node:",
        "kind load docker-image --name deepserve-e2e deepserve/operator:t1 deepserve/engine:t1",
        "kubectl label node deepserve-e2e-worker --overwrite nvidia.com/gpu.present=true",
        "kubectl patch node deepserve-e2e-worker --subresource=status",
        "kubectl taint node deepserve-e2e-worker --overwrite nvidia.com/gpu=present:NoSchedule",
        "helm upgrade --install deepserve charts/deepserve --namespace deepserve-system",
        "kubectl -n deepserve-system rollout status deployment/deepserve",
        "env DEEPSERVE_KUBECONFIG=",
    ]
    assert len(steps) >= len(expected), steps
    for want, got in zip(expected, steps, strict=False):
        assert got.startswith(want), (want, got)
    assert "--config hack/kind-config.yaml" in steps[2]
    assert "image.pullPolicy=Never" in steps[7]
    assert "-m pytest tests/e2e" in steps[9]
    assert list(tmp_path.iterdir()) == [], "the dry run must clean up its work directory"


def test_unknown_argument_is_refused() -> None:
    proc = subprocess.run([str(SCRIPT), "--bogus"], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "unknown argument: --bogus" in proc.stderr


def test_kind_config_is_a_valid_v1alpha4_cluster() -> None:
    cfg = yaml.safe_load((REPO / "hack" / "kind-config.yaml").read_text())
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert set(cfg) <= KIND_CLUSTER_FIELDS, set(cfg) - KIND_CLUSTER_FIELDS
    assert set(cfg["networking"]) <= KIND_NETWORKING_FIELDS
    assert cfg["networking"]["apiServerAddress"] == "127.0.0.1"
    roles = [n["role"] for n in cfg["nodes"]]
    assert roles.count("control-plane") == 1 and set(roles) <= {"control-plane", "worker"}
    for node in cfg["nodes"]:
        assert set(node) <= KIND_NODE_FIELDS, set(node) - KIND_NODE_FIELDS
        assert all(isinstance(v, str) for v in node.get("labels", {}).values())
    gpu = [n for n in cfg["nodes"] if n.get("labels", {}).get("deepserve.io/e2e-role") == "gpu"]
    assert len(gpu) == 1 and gpu[0]["role"] == "worker", "e2e-kind.sh fakes GPUs on exactly this worker"
    # The script names the fake-GPU worker after the cluster: the first worker of this config.
    assert cfg["nodes"].index(gpu[0]) == roles.index("worker")


def _stages(dockerfile: Path) -> list[str]:
    return [ln.split()[1] for ln in dockerfile.read_text().splitlines() if ln.upper().startswith("FROM ")]


@pytest.mark.parametrize("path", ["deepserve/operator/Dockerfile", "deepserve/engine/Dockerfile"])
def test_images_are_multi_stage_pinned_and_non_root(path: str) -> None:
    dockerfile = REPO / path
    if not dockerfile.exists():
        pytest.skip(f"{path} not written yet")
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), b) for b in _stages(dockerfile)]
    assert len(bases) >= 2, f"{path} must be multi-stage"
    for base in bases:
        if ":" not in base and "@" not in base:
            continue  # a previous stage by name
        tag = base.split("@")[0].rsplit(":", 1)[-1]
        assert tag != "latest" and re.search(r"\d", tag), f"{path}: base {base} is not pinned to a version"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users, f"{path} has no USER"
    final = users[-1].split(":")[0]
    final = args.get(final.strip("${}"), final)
    assert final not in {"root", "0"}, f"{path} runs as root"


def test_operator_image_entrypoint_is_the_operator() -> None:
    text = (REPO / "deepserve" / "operator" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["deepserve", "operator", "run"]' in text
    ignore = (REPO / "deepserve" / "operator" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("**") + 1:]  # everything is excluded, then what the build needs


def test_workflow_runs_make_e2e_kind() -> None:
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "e2e-kind.yaml").read_text())
    steps = wf["jobs"]["e2e-kind"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "make e2e-kind" in runs and "helm lint --strict charts/deepserve" in runs
    assert all("@" in s["uses"] for s in steps if "uses" in s), "actions are pinned to a version"
