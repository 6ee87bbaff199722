"""Fetch a model source into a local directory: the pod's init step (no torch).

``deepserve engine fetch <uri> --dest DIR`` runs in an init container before the engine
starts, so the engine only ever reads a local directory and never holds credentials:

- ``s3://<bucket>/<prefix>``: every object under ``<prefix>/`` (boto3, paginated), from AWS
  or any S3-compatible endpoint (MinIO, Ceph);
- ``hf://<org>/<name>[@<revision>]``: a Hugging Face snapshot at that revision (a branch,
  tag or commit; ``source.revision`` gives it too), ``huggingface_hub.snapshot_download``.

Credentials are files (a Secret mounted as a volume), never env vars or argv: the
directory's ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION`` and ``AWS_ENDPOINT_URL`` (S3) or ``HF_TOKEN`` (Hugging Face). Without them
boto3's default chain (IRSA, instance role) and anonymous Hub access apply.

The download lands in a sibling ``.partial`` directory and is renamed into place only when
complete and holding ``config.json``, with a marker naming the source; a directory already
carrying the same marker is reused. Errors raise :class:`FetchError` naming the source and
never carry a credential.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

log = logging.getLogger(__name__)

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                   "AWS_ENDPOINT_URL", "HF_TOKEN")
MARKER = ".deepserve-source.json"
FETCHED_SCHEMES = ("s3", "hf")


class FetchError(ValueError):
    """The source cannot be fetched; the message names it and says why."""


@dataclass(frozen=True)
class RemoteSource:
    """A remote model source: scheme, where (bucket/prefix or org/name) and a revision."""

    scheme: str
    location: str
    revision: str | None = None

    @property
    def uri(self) -> str:
        """The canonical URI (``hf://org/name@rev``)."""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.scheme}://{self.location}{rev}"

    @property
    def key(self) -> str:
        """A short stable name for the fetched directory."""
        return hashlib.sha256(self.uri.encode()).hexdigest()[:16]


def parse_remote(uri: str, revision: str | None = None) -> RemoteSource:
    """Parse an ``s3://`` or ``hf://`` URI; ``hf://org/name@rev`` or ``revision`` set the revision.

    Raises FetchError for other schemes, a missing bucket/prefix or two different revisions.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in FETCHED_SCHEMES:
        raise FetchError(f"model source {uri!r}: only s3:// and hf:// sources are fetched")
    if scheme == "hf":
        name, at, rev = rest.partition("@")
        if at and revision and rev != revision:
            raise FetchError(f"model source {uri!r}: revision {rev!r} in the URI differs from "
                             f"source.revision {revision!r}")
        if name.count("/") != 1 or not all(name.split("/")) or (at and not rev):
            raise FetchError(f"model source {uri!r}: expected hf://<org>/<name>[@<revision>]")
        return RemoteSource("hf", name, rev or revision or None)
    if revision:
        raise FetchError(f"model source {uri!r}: revision applies to hf:// sources only")
    bucket, _, prefix = rest.partition("/")
    if not bucket or not prefix.strip("/"):
        raise FetchError(f"model source {uri!r}: expected s3://<bucket>/<prefix>")
    return RemoteSource("s3", f"{bucket}/{prefix.strip('/')}")


def fetched_model_dir(cache_root: str | Path, uri: str, revision: str | None = None) -> str:
    """Where a fetched source lives under ``cache_root`` (the operator and the engine agree)."""
    return str(Path(cache_root) / "fetched" / parse_remote(uri, revision).key)


def read_credentials(directory: str | Path | None) -> dict[str, str]:
    """The known credential keys found as files in ``directory`` (a mounted Secret)."""
    if not directory:
        return {}
    root = Path(directory)
    if not root.is_dir():
        raise FetchError(f"credentials directory {str(root)!r} does not exist")
    out = {}
    for key in CREDENTIAL_KEYS:
        path = root / key
        if path.is_file():
            out[key] = path.read_text(encoding="utf-8").strip()
    return out


def _safe_relative(source: RemoteSource, rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if path.is_absolute() or any(part in ("", ".", "..") for part in path.parts):
        raise FetchError(f"model source {source.uri!r}: object {rel!r} would leave the model directory")
    return path


def _s3_client(credentials: dict[str, str]) -> Any:
    try:
        import boto3
    except ImportError as e:
        raise FetchError("s3:// sources need boto3 (pip install 'deepserve[engine]')") from e
    kwargs: dict[str, Any] = {"region_name": credentials.get("AWS_REGION") or "us-east-1"}
    if credentials.get("AWS_ENDPOINT_URL"):
        kwargs["endpoint_url"] = credentials["AWS_ENDPOINT_URL"]
    if credentials.get("AWS_ACCESS_KEY_ID"):
        kwargs["aws_access_key_id"] = credentials["AWS_ACCESS_KEY_ID"]
        kwargs["aws_secret_access_key"] = credentials.get("AWS_SECRET_ACCESS_KEY", "")
        kwargs["aws_session_token"] = credentials.get("AWS_SESSION_TOKEN") or None
    return boto3.session.Session().client("s3", **kwargs)


def _fetch_s3(source: RemoteSource, into: Path, credentials: dict[str, str]) -> int:
    """Download every object under the prefix into ``into``; return the bytes written."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = source.location.partition("/")
    prefix += "/"
    client = _s3_client(credentials)
    written = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or rel.endswith("/"):
                    continue
                target = into / _safe_relative(source, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(target))
                written += int(obj.get("Size", 0))
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "error")
        raise FetchError(f"model source {source.uri!r}: S3 refused ({code})") from None
    except BotoCoreError as e:
        raise FetchError(f"model source {source.uri!r}: {type(e).__name__}: {e}") from None
    if not written and not any(into.iterdir()):
        raise FetchError(f"model source {source.uri!r}: no objects under the prefix")
    return written


def _fetch_hf(source: RemoteSource, into: Path, credentials: dict[str, str],
              offline: bool) -> int:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise FetchError("hf:// sources need huggingface_hub (pip install 'deepserve[engine]')") from e
    try:
        path = snapshot_download(source.location, revision=source.revision,
                                 token=credentials.get("HF_TOKEN") or False,
                                 local_files_only=offline)
    except Exception as e:  # the hub raises many error types; name the source, not the token
        raise FetchError(f"model source {source.uri!r}: {type(e).__name__}: {e}") from None
    # hard links into the same cache volume: no second copy of the weights on disk
    shutil.copytree(path, into, dirs_exist_ok=True, copy_function=_link_or_copy)
    return sum(f.stat().st_size for f in into.rglob("*") if f.is_file())


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(os.path.realpath(src), dst)
    except OSError:
        shutil.copy2(src, dst)


def fetch(uri: str, dest: str | Path, revision: str | None = None,
          credentials_dir: str | Path | None = None) -> Path:
    """Fetch ``uri`` into ``dest`` (complete or not at all) and return ``dest``.

    ``HF_HUB_OFFLINE=1`` restricts hf:// to the local Hugging Face cache.
    """
    source = parse_remote(uri, revision)
    target = Path(dest)
    marker = {"source": source.uri}
    if (target / MARKER).is_file() and json.loads((target / MARKER).read_text()) == marker:
        log.info("model source %s: already fetched in %s", source.uri, target)
        return target
    credentials = read_credentials(credentials_dir)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if source.scheme == "s3":
            size = _fetch_s3(source, partial, credentials)
        else:
            size = _fetch_hf(source, partial, credentials, os.environ.get("HF_HUB_OFFLINE") == "1")
        if not (partial / "config.json").is_file():
            raise FetchError(f"model source {source.uri!r}: no config.json at its top level")
        (partial / MARKER).write_text(json.dumps(marker))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("model source %s: fetched %.1f MiB into %s", source.uri, size / 2**20, target)
    return target


__all__ = ["CREDENTIAL_KEYS", "FetchError", "RemoteSource", "fetch", "fetched_model_dir",
           "parse_remote", "read_credentials"]
