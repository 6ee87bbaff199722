"""The chart's RBAC is what the operator really gets: remove one needed rule from a copy
of the chart and the flow fails with Forbidden instead of silently working."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from dstest.cluster import ClusterHandle

from deepserve.operator.dev.stack import CHART_DIR, REPO_ROOT, Stack, helm_install, run_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RULE = '''  - apiGroups: ["apps"]
    resources: ["deployments"]
'''


def test_missing_deployments_rule_fails_with_forbidden(cluster: ClusterHandle, namespace: str,
                                                       tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART_DIR, chart)
    rbac = chart / "templates" / "rbac.yaml"
    text = rbac.read_text()
    start = text.index(RULE)
    end = text.index("\n", start + len(RULE)) + 1  # the rule's verbs line
    rbac.write_text(text[:start] + text[end:])
    release, sys_ns = "norbac", "deepserve-norbac"
    helm_install(cluster.kubeconfig, {"replicaCount": 1, "persistence": {"enabled": False},
                                      "operator": {"peering": {"enabled": False}}},
                 chart=chart, namespace=sys_ns, release=release)
    sa = json.loads(run_tool("kubectl", "get", "sa", "-n", sys_ns, "-l",
                             f"app.kubernetes.io/instance={release}", "-o", "json",
                             kubeconfig=cluster.kubeconfig).stdout)["items"][0]["metadata"]["name"]
    can = run_tool("kubectl", "auth", "can-i", "create", "deployments.apps", "-n", namespace,
                   f"--as=system:serviceaccount:{sys_ns}:{sa}", kubeconfig=cluster.kubeconfig, check=False)
    assert can.stdout.strip() == "no"
    st = Stack(admin_kubeconfig=cluster.kubeconfig, work_dir=tmp_path / "stack", namespace=sys_ns,
               service_account=sa)
    st.work_dir.mkdir()
    try:
        st.start_billing()
        st.start_operator()
        cluster.run_kubectl("apply", "-n", namespace, "-f", str(REPO_ROOT / "examples" / "01-tiny-model.yaml"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if st.operator and "Forbidden" in st.operator.log.read_text(errors="replace"):
                break
            time.sleep(1)
        log = st.operator.log.read_text(errors="replace") if st.operator else ""
        assert "Forbidden" in log and "deployments" in log, log[-3000:]
        deps = cluster.run_kubectl("get", "deployments", "-n", namespace, "-o", "name").stdout
        assert deps.strip() == ""
        ready = cluster.run_kubectl("get", "inferencemodel", "tiny-llama", "-n", namespace, "-o",
                                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}").stdout
        assert ready != "True"
    finally:
        st.stop()
        run_tool("helm", "uninstall", release, "-n", sys_ns, kubeconfig=cluster.kubeconfig, check=False)
