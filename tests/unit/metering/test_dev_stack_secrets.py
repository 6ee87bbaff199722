"""The dev stack hands the billing server and the local runner their credentials as 0600
files: no token or key is ever on a command line (visible in ``ps``)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from deepserve.operator.dev import stack as stack_module
from deepserve.operator.metering.credentials import hmac_write_auth

pytestmark = pytest.mark.unit


def test_stack_passes_credentials_as_files_only(tmp_path: Path, monkeypatch) -> None:
    launched: dict[str, list[str]] = {}

    def spawn(name: str, args: list[str], log_dir: Path, env: Any = None) -> Any:
        launched[name] = list(args)
        return None

    monkeypatch.setattr(stack_module, "spawn", spawn)
    st = stack_module.Stack(admin_kubeconfig=str(tmp_path / "kc"), work_dir=tmp_path)
    monkeypatch.setattr(st, "wait_http", lambda *a, **k: None)
    st.start_billing()
    st.start_runner()
    argv = " ".join(a for args in launched.values() for a in args)
    assert st.billing_token not in argv and st.ingest_key not in argv
    files = {a.split("=", 1)[-1] for args in launched.values() for a in args}
    token_file = next(Path(f) for f in files if f.endswith("usage-token"))
    token = token_file.read_text()
    assert token not in argv and "dsw1" not in argv
    verify = hmac_write_auth(st.ingest_key.encode(), allow_wildcard=True)
    assert verify(token) is not None  # the runner's engines can write usage
    for name in ("billing-token", "ingest-key", "usage-token"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert "--dev-wildcard-ingest" in launched["billing"]
