#!/usr/bin/env bash
# The whole-flow e2e suite on a kind cluster with real pods (CPU Triton): builds the operator
# and engine images, creates a kind cluster from hack/kind-config.yaml, loads the images,
# gives a worker fake GPU labels and nvidia.com/gpu capacity when the host has no GPUs,
# installs the chart and runs `pytest tests/e2e` against the cluster.
#
# Needs: docker (a running engine), kind, helm, kubectl, and `make setup` (.venv).
# helm and kubectl come from the pinned toolchain (`make tools`), else from PATH.
#
# Usage: hack/e2e-kind.sh [--dry-run] [--keep]
#   --dry-run   print every step without running it (checks only the local prerequisites)
#   --keep      leave the cluster running afterwards (also KEEP_CLUSTER=1)
#
# Environment (defaults in brackets):
#   KIND_CLUSTER_NAME [deepserve-e2e]  KIND_NODE_IMAGE [kindest/node:v1.34.0]
#   IMAGE_TAG [e2e]  OPERATOR_IMAGE [deepserve/operator]  ENGINE_IMAGE [deepserve/engine]
#   SKIP_BUILD [0]  (reuse images already in the local Docker engine)
#   RELEASE [deepserve]  RELEASE_NAMESPACE [deepserve-system]  HELM_ARGS [] (extra helm flags)
#   FAKE_GPU_PRODUCT [NVIDIA-L4]  FAKE_GPU_COUNT [1]  FAKE_GPU_MEMORY_MIB [23034]
#   PYTEST_ARGS []  ARTIFACTS [out/e2e-kind]  (diagnostics are written there on failure)
#   DOCKER [docker]  KIND [kind]  HELM  KUBECTL  PYTHON [.venv/bin/python]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY_RUN="${DRY_RUN:-0}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --keep) KEEP_CLUSTER=1 ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "e2e-kind: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

CLUSTER="${KIND_CLUSTER_NAME:-deepserve-e2e}"
NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.34.0}"
TAG="${IMAGE_TAG:-e2e}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-deepserve/operator}"
ENGINE_IMAGE="${ENGINE_IMAGE:-deepserve/engine}"
RELEASE="${RELEASE:-deepserve}"
RELEASE_NAMESPACE="${RELEASE_NAMESPACE:-deepserve-system}"
GPU_PRODUCT="${FAKE_GPU_PRODUCT:-NVIDIA-L4}"
GPU_COUNT="${FAKE_GPU_COUNT:-1}"
GPU_MEMORY_MIB="${FAKE_GPU_MEMORY_MIB:-23034}"
ARTIFACTS="${ARTIFACTS:-$ROOT/out/e2e-kind}"
DOCKER="${DOCKER:-docker}"
KIND="${KIND:-kind}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/deepserve-e2e-kind.XXXXXX")"
export KUBECONFIG="$WORKDIR/kubeconfig"

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { printf 'e2e-kind: %s\n' "$*" >&2; exit 1; }

# Print a command, then run it unless --dry-run.
run() {
  printf '+ %s\n' "$*" >&2
  if [[ "$DRY_RUN" == 1 ]]; then return 0; fi
  "$@"
}

# A pinned tool from the deepserve toolchain (built by `make tools`), when not on PATH.
toolchain_path() {
  "$PYTHON" -c "from deepserve.operator.dev import toolchain as t; print(t.resolve().path('$1'))" 2>/dev/null
}

resolve_tools() {
  [[ -x "$PYTHON" ]] || die "$PYTHON not found: run \`make setup\` first"
  # The pinned toolchain first: a distribution's kubectl may be too old (--subresource needs 1.24+).
  HELM="${HELM:-$(toolchain_path helm || command -v helm || true)}"
  KUBECTL="${KUBECTL:-$(toolchain_path kubectl || command -v kubectl || true)}"
  if [[ "$DRY_RUN" == 1 ]]; then HELM="${HELM:-helm}" KUBECTL="${KUBECTL:-kubectl}"; fi
  [[ -n "$HELM" ]] || die "helm not found on PATH or in the toolchain (\`make tools\`)"
  [[ -n "$KUBECTL" ]] || die "kubectl not found on PATH or in the toolchain (\`make tools\`)"
  local f
  for f in deepserve/operator/Dockerfile deepserve/engine/Dockerfile hack/kind-config.yaml charts/deepserve/Chart.yaml; do
    if [[ ! -f "$f" ]]; then
      [[ "$DRY_RUN" == 1 ]] || die "$f is missing"
      echo "e2e-kind: warning: $f is missing" >&2
    fi
  done
  if [[ "$DRY_RUN" == 1 ]]; then return 0; fi
  command -v "$DOCKER" >/dev/null || die "docker not found (kind needs a Docker engine)"
  "$DOCKER" info >/dev/null 2>&1 || die "the Docker engine is not running or not reachable"
  command -v "$KIND" >/dev/null || die "kind not found (https://kind.sigs.k8s.io/docs/user/quick-start/)"
}

collect_diagnostics() {
  [[ "$DRY_RUN" == 1 ]] && return 0
  mkdir -p "$ARTIFACTS"
  log "collecting diagnostics into $ARTIFACTS"
  "$KUBECTL" get nodes -o wide --show-labels >"$ARTIFACTS/nodes.txt" 2>&1 || true
  "$KUBECTL" get all,inferencemodels,gpunodepools,pvc,events -A -o wide >"$ARTIFACTS/objects.txt" 2>&1 || true
  "$KUBECTL" describe pods -A >"$ARTIFACTS/pods-describe.txt" 2>&1 || true
  "$KUBECTL" -n "$RELEASE_NAMESPACE" logs -l app.kubernetes.io/instance="$RELEASE" --all-containers \
    --prefix --tail=-1 >"$ARTIFACTS/operator.log" 2>&1 || true
  "$KIND" export logs "$ARTIFACTS/kind" --name "$CLUSTER" >/dev/null 2>&1 || true
}

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then collect_diagnostics; fi
  if [[ "$KEEP_CLUSTER" == 1 ]]; then
    log "keeping cluster $CLUSTER; KUBECONFIG=$KUBECONFIG"
  else
    run "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$WORKDIR"
  fi
  exit "$rc"
}

build_images() {
  if [[ "${SKIP_BUILD:-0}" == 1 ]]; then log "SKIP_BUILD=1: using existing images"; return 0; fi
  log "building images"
  run "$DOCKER" build -f deepserve/operator/Dockerfile -t "$OPERATOR_IMAGE:$TAG" .
  run "$DOCKER" build -f deepserve/engine/Dockerfile -t "$ENGINE_IMAGE:$TAG" .
}

create_cluster() {
  log "creating kind cluster $CLUSTER ($NODE_IMAGE)"
  run "$KIND" create cluster --name "$CLUSTER" --image "$NODE_IMAGE" \
    --config hack/kind-config.yaml --kubeconfig "$KUBECONFIG" --wait 180s
  run "$KIND" load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE:$TAG" "$ENGINE_IMAGE:$TAG"
}

# Without the NVIDIA device plugin no node advertises nvidia.com/gpu; give the "gpu" worker
# the labels GPU Feature Discovery would set and an extended-resource capacity (the kubelet
# keeps capacity patched onto the node status), so placement and scheduling see a GPU pool.
fake_gpus_if_none() {
  local gpus=""
  if [[ "$DRY_RUN" != 1 ]]; then
    gpus="$("$KUBECTL" get nodes -o jsonpath='{range .items[*]}{.status.allocatable.nvidia\.com/gpu}{end}')"
  fi
  if [[ -n "$gpus" ]]; then log "nodes already advertise nvidia.com/gpu; no fake GPUs"; return 0; fi
  local node="$CLUSTER-worker"
  if [[ "$DRY_RUN" != 1 ]]; then
    node="$("$KUBECTL" get nodes -l deepserve.io/e2e-role=gpu -o jsonpath='{.items[0].metadata.name}')"
    [[ -n "$node" ]] || die "no node labelled deepserve.io/e2e-role=gpu (see hack/kind-config.yaml)"
  fi
  log "faking $GPU_COUNT x $GPU_PRODUCT on $node"
  run "$KUBECTL" label node "$node" --overwrite \
    nvidia.com/gpu.present=true "nvidia.com/gpu.product=$GPU_PRODUCT" \
    "nvidia.com/gpu.count=$GPU_COUNT" "nvidia.com/gpu.memory=$GPU_MEMORY_MIB" \
    cloud.google.com/gke-nodepool=fake-gpu
  run "$KUBECTL" patch node "$node" --subresource=status --type=json \
    -p "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$GPU_COUNT\"}]"
  run "$KUBECTL" taint node "$node" --overwrite nvidia.com/gpu=present:NoSchedule
}

install_chart() {
  log "installing the chart (release $RELEASE in $RELEASE_NAMESPACE)"
  # shellcheck disable=SC2086  # HELM_ARGS is a list of flags on purpose
  run "$HELM" upgrade --install "$RELEASE" charts/deepserve \
    --namespace "$RELEASE_NAMESPACE" --create-namespace \
    --set image.repository="$OPERATOR_IMAGE" --set image.tag="$TAG" --set image.pullPolicy=Never \
    --set engine.image.repository="$ENGINE_IMAGE" --set engine.image.tag="$TAG" \
    --wait --timeout 5m ${HELM_ARGS:-}
  run "$KUBECTL" -n "$RELEASE_NAMESPACE" rollout status "deployment/$RELEASE" --timeout 180s
}

run_suite() {
  log "running tests/e2e against $CLUSTER"
  # The suite reuses this cluster and the installed release instead of starting its own.
  # shellcheck disable=SC2086  # PYTEST_ARGS is a list of flags on purpose
  run env DEEPSERVE_KUBECONFIG="$KUBECONFIG" DEEPSERVE_E2E_RELEASE="$RELEASE" \
    DEEPSERVE_E2E_RELEASE_NAMESPACE="$RELEASE_NAMESPACE" DEEPSERVE_E2E_KIND=1 \
    "$PYTHON" -m pytest tests/e2e -m "e2e and not gpu" ${PYTEST_ARGS:-}
}

main() {
  resolve_tools
  trap cleanup EXIT
  build_images
  create_cluster
  fake_gpus_if_none
  install_chart
  run_suite
  log "e2e on kind passed"
}

main
