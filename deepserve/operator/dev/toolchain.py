"""Build the local control plane's binaries from their published Go modules.

Every version is pinned here and only here. Binaries land in a versioned cache outside
the repository (``~/.cache/deepserve/tools/<key>/bin``) so fresh clones and CI reuse them;
a rebuild happens only when a pin changes. ``KUBEBUILDER_ASSETS`` (the envtest convention)
takes precedence for any binary it holds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"

K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL_BINARIES = (*K8S_BINARIES, "etcd", "kwok", "helm")


class ToolchainError(RuntimeError):
    """A binary is missing or could not be built."""


@dataclass(frozen=True)
class Toolchain:
    """Resolved paths of every binary the local cluster needs."""

    bin_dir: Path
    paths: dict[str, Path]

    def path(self, name: str) -> str:
        """Return the absolute path of binary ``name`` or raise ToolchainError."""
        p = self.paths.get(name)
        if p is None or not p.exists():
            raise ToolchainError(
                f"binary {name!r} not found (looked in {self.bin_dir}); run `make tools` "
                "or point KUBEBUILDER_ASSETS at a folder that holds it"
            )
        return str(p)


def versions_key() -> str:
    """A short, stable name for the pinned set of versions."""
    pins = f"k8s={KUBERNETES_VERSION},etcd={ETCD_VERSION},kwok={KWOK_VERSION},helm={HELM_VERSION}"
    digest = hashlib.sha256(pins.encode()).hexdigest()[:8]
    return f"k8s-{KUBERNETES_VERSION}-{digest}"


def cache_root() -> Path:
    """Root of the tools cache (``DEEPSERVE_TOOLS_DIR`` overrides it)."""
    env = os.environ.get("DEEPSERVE_TOOLS_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deepserve" / "tools"


def default_bin_dir() -> Path:
    """Where the pinned binaries live."""
    return cache_root() / versions_key() / "bin"


def resolve() -> Toolchain:
    """Find every binary: KUBEBUILDER_ASSETS first, then the versioned cache."""
    bin_dir = default_bin_dir()
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    paths: dict[str, Path] = {}
    for name in ALL_BINARIES:
        candidates = [Path(assets) / name] if assets else []
        candidates.append(bin_dir / name)
        paths[name] = next((c for c in candidates if c.exists()), candidates[-1])
    return Toolchain(bin_dir=bin_dir, paths=paths)


def missing(toolchain: Toolchain | None = None) -> list[str]:
    """Names of binaries that are not available yet."""
    tc = toolchain or resolve()
    return [n for n in ALL_BINARIES if not tc.paths[n].exists()]


def _go_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env.setdefault("GOFLAGS", "-mod=mod")
    env["GOWORK"] = "off"
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], say: Callable[[str], None]) -> None:
    say("  $ " + " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}"
        )


def _staging_modules(work: Path, env: dict[str, str], say: Callable[[str], None]) -> list[str]:
    """The k8s.io staging modules that k8s.io/kubernetes replaces with local paths."""
    _run(["go", "mod", "download", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"], work, env, say)
    out = subprocess.run(
        ["go", "env", "GOMODCACHE"], cwd=work, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    gomod = Path(out) / "cache/download/k8s.io/kubernetes/@v" / f"{KUBERNETES_VERSION}.mod"
    mods = []
    for line in gomod.read_text().splitlines():
        line = line.strip()
        if "=> ./staging/src/" in line:
            mods.append(line.split("=>")[0].strip())
    if not mods:
        raise ToolchainError(f"no staging replace directives found in {gomod}")
    return mods


def _build_kubernetes(out: Path, say: Callable[[str], None]) -> None:
    """k8s.io/kubernetes is not meant to be required as a module: its go.mod replaces
    every k8s.io staging module with a local path (kubernetes/kubernetes#79384), so a
    wrapper module pins each staging module at the matching v0.x tag."""
    work = Path(tempfile.mkdtemp(prefix="deepserve-k8s-"))
    env = _go_env(work)
    try:
        (work / "go.mod").write_text("module deepserve.local/k8stools\n\ngo 1.26.0\n")
        staging = _staging_modules(work, env, say)
        minor = KUBERNETES_VERSION.lstrip("v").split(".", 1)[1]
        replaces = "\n".join(f"\t{m} => {m} v0.{minor}" for m in staging)
        (work / "go.mod").write_text(
            "module deepserve.local/k8stools\n\ngo 1.26.0\n\n"
            f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n\nreplace (\n{replaces}\n)\n"
        )
        imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{b}"' for b in K8S_BINARIES)
        (work / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
        _run(["go", "mod", "tidy"], work, env, say)
        major, minor_n = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
        xs = []
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            xs += [
                f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
                f"-X {pkg}.gitMajor={major}",
                f"-X {pkg}.gitMinor={minor_n}",
                f"-X {pkg}.gitTreeState=clean",
            ]
        ldflags = "-s -w " + " ".join(xs)
        for b in K8S_BINARIES:
            t0 = time.monotonic()
            say(f"building {b} {KUBERNETES_VERSION} (slow on a cold cache)...")
            _run(
                ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(out / b),
                 f"k8s.io/kubernetes/cmd/{b}"],
                work, env, say,
            )
            say(f"built {b} in {time.monotonic() - t0:.0f}s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_etcd(out: Path, say: Callable[[str], None]) -> None:
    """etcd's server module carries replace directives, so `go install mod@v` refuses it;
    a wrapper module that requires it builds the same main package."""
    work = Path(tempfile.mkdtemp(prefix="deepserve-etcd-"))
    env = _go_env(work)
    try:
        (work / "go.mod").write_text(
            f"module deepserve.local/etcdtools\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"
        )
        (work / "tools.go").write_text(
            '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n'
        )
        _run(["go", "mod", "tidy"], work, env, say)
        say(f"building etcd {ETCD_VERSION}...")
        _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "etcd"),
              "go.etcd.io/etcd/server/v3"], work, env, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _helm_ldflags() -> str:
    """Helm's release builds stamp the Kubernetes version it assumes for `helm template`
    and `helm lint`; without it Helm assumes v1.20 and refuses charts that need newer."""
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s -w", f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"]
    for pkg in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
        flags += [f"-X {pkg}.k8sVersionMajor={major}", f"-X {pkg}.k8sVersionMinor={minor}"]
    return " ".join(flags)


def _go_install(pkg: str, name: str, out: Path, say: Callable[[str], None],
                ldflags: str = "-s -w") -> None:
    work = Path(tempfile.mkdtemp(prefix="deepserve-goinstall-"))
    env = _go_env(work)
    env["GOBIN"] = str(out)
    env.pop("GOFLAGS", None)
    try:
        say(f"building {name} ({pkg})...")
        _run(["go", "install", "-trimpath", "-ldflags", ldflags, pkg], work, env, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build(force: bool = False, say: Callable[[str], None] = print) -> Toolchain:
    """Build every missing pinned binary into the cache and return the toolchain.

    Raises ToolchainError when Go is missing or a build fails.
    """
    tc = resolve()
    todo = ALL_BINARIES if force else tuple(missing(tc))
    if not todo:
        say(f"tools up to date in {tc.bin_dir}")
        return tc
    if shutil.which("go") is None:
        raise ToolchainError(
            "Go is needed to build the control plane (or set KUBEBUILDER_ASSETS); missing: "
            + ", ".join(todo)
        )
    out = tc.bin_dir
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if any(b in todo for b in K8S_BINARIES):
        _build_kubernetes(out, say)
    if "etcd" in todo:
        _build_etcd(out, say)
    if "kwok" in todo:
        _go_install(f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}", "kwok", out, say)
    if "helm" in todo:
        _go_install(f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}", "helm", out, say,
                    ldflags=_helm_ldflags())
    say(f"tools ready in {out} after {time.monotonic() - t0:.0f}s")
    return resolve()
