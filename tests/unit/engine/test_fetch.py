"""#17.3: hf:// sources honour their revision and read the token from a Secret file; URIs
that cannot be fetched are refused naming the source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deepserve.engine import fetch as fetch_mod
from deepserve.engine.fetch import FetchError, fetch, fetched_model_dir, parse_remote

pytestmark = pytest.mark.unit


def _hub_cache(home: Path, repo: str, revisions: dict[str, str]) -> None:
    """A Hugging Face cache (hub/models--org--name) holding one snapshot per revision."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    for i, (ref, marker) in enumerate(revisions.items()):
        commit = f"{i + 1:040x}"
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
        snap = root / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps({"marker": marker}))


@pytest.mark.parametrize(("uri", "revision", "marker"), [
    ("hf://org/tiny@v1", None, "first"), ("hf://org/tiny", "v1", "first"), ("hf://org/tiny", None, "main"),
])
def test_hf_revision_is_honoured(tmp_path: Path, uri: str, revision: str | None, marker: str) -> None:
    _hub_cache(tmp_path / "hf", "org/tiny", {"v1": "first", "main": "main"})
    dest = tmp_path / "dest"
    args = [uri, "--dest", str(dest)] + (["--revision", revision] if revision else [])
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "deepserve.operator.cli", "engine", "fetch", *args],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((dest / "config.json").read_text()) == {"marker": marker}


def test_hf_token_comes_from_the_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:  # the hub client is the seam
        calls.append({"repo_id": repo_id, **kwargs})
        snap = tmp_path / "snap"
        snap.mkdir(exist_ok=True)
        (snap / "config.json").write_text("{}")
        return str(snap)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "HF_TOKEN").write_text("hf_secret_token\n")
    fetch("hf://org/gated@abc123", tmp_path / "dest", credentials_dir=creds)
    assert calls == [{"repo_id": "org/gated", "revision": "abc123", "token": "hf_secret_token",
                      "local_files_only": False}]
    calls.clear()
    fetch("hf://org/public", tmp_path / "dest2")
    assert calls[0]["token"] is False  # anonymous: never a token from the environment


@pytest.mark.parametrize(("uri", "revision", "words"), [
    ("hf://org/name@v1", "v2", "differs"),
    ("hf://org", None, "hf://<org>/<name>"),
    ("s3://bucket", None, "s3://<bucket>/<prefix>"),
    ("s3://bucket/p", "v1", "hf:// sources only"),
    ("pvc://claim/p", None, "only s3:// and hf://"),
])
def test_bad_remote_sources_are_named(uri: str, revision: str | None, words: str) -> None:
    with pytest.raises(FetchError, match=words):
        parse_remote(uri, revision)


def test_fetched_dir_is_stable_and_revision_specific() -> None:
    a = fetched_model_dir("/c", "hf://org/m", "v1")
    assert a == fetched_model_dir("/c", "hf://org/m@v1") != fetched_model_dir("/c", "hf://org/m", "v2")
    assert a.startswith("/c/fetched/")


def test_objects_leaving_the_model_directory_are_refused(tmp_path: Path) -> None:
    source = parse_remote("s3://b/p")
    with pytest.raises(FetchError, match="leave the model directory"):
        fetch_mod._safe_relative(source, "../../etc/passwd")
