"""The dev stack hands the billing server and the operator their credentials as 0600
files: no token or key is ever on a command line (visible in ``ps``). No wildcard write
credential exists: each played engine reads its own model's Secret, as a pod would."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from deepserve.operator.dev import stack as stack_module

pytestmark = pytest.mark.unit


def test_stack_passes_credentials_as_files_only_and_holds_no_wildcard(tmp_path: Path, monkeypatch) -> None:
    launched: dict[str, list[str]] = {}

    def spawn(name: str, args: list[str], log_dir: Path, env: Any = None) -> Any:
        launched[name] = list(args)
        return None

    monkeypatch.setattr(stack_module, "spawn", spawn)
    monkeypatch.setattr(stack_module, "service_account_kubeconfig", lambda *a, **k: tmp_path / "sa.kc")
    st = stack_module.Stack(admin_kubeconfig=str(tmp_path / "kc"), work_dir=tmp_path)
    monkeypatch.setattr(st, "wait_http", lambda *a, **k: None)
    st.start_billing()
    st.start_operator()
    st.start_runner()
    argv = " ".join(a for args in launched.values() for a in args)
    assert st.billing_token not in argv and st.ingest_key not in argv and "dsw1" not in argv
    key_file = str(tmp_path / "ingest-key")
    for name in ("billing", "operator"):
        args = launched[name]
        assert args[args.index("--ingest-key-file") + 1] == key_file, name
    assert (tmp_path / "ingest-key").read_text() == st.ingest_key
    for name in ("billing-token", "ingest-key"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert "--dev-wildcard-ingest" not in argv
    assert "DEEPSERVE_USAGE_TOKEN" not in argv  # the runner gets no credential of its own
    assert not (tmp_path / "usage-token").exists()
