"""#17.3: an s3:// source is fetched by the pod's init command from a real S3 server (moto in
server mode on loopback) with credentials read from files, and the engine loads the result."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from deepserve.engine.build import build_engine
from deepserve.engine.options import EngineOptions
from deepserve.engine.sampling import SamplingParams
from deepserve.engine.tiny import make_tiny_checkpoint

pytestmark = pytest.mark.integration
SECRET = "s3cr3t-Key-never-logged-0123456789"
CLI = [sys.executable, "-m", "deepserve.operator.cli", "engine", "fetch"]


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _credentials(tmp: Path, endpoint: str) -> Path:
    creds = tmp / "creds"
    creds.mkdir()
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET,
                       "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": endpoint}.items():
        (creds / key).write_text(value + "\n")
    return creds


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # never wait for an instance role here
    return subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=120)


def test_s3_checkpoint_is_fetched_then_served(s3: str, tmp_path: Path) -> None:
    original = make_tiny_checkpoint(tmp_path / "orig", "llama", seed=3)
    client = boto3.client("s3", endpoint_url=s3, region_name="eu-west-1",
                          aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key=SECRET)
    client.create_bucket(Bucket="weights", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    for f in original.iterdir():
        client.upload_file(str(f), "weights", f"team/tiny-llama/{f.name}")
    client.put_object(Bucket="weights", Key="team/tiny-llama-other/config.json", Body=b"{}")
    creds = _credentials(tmp_path, s3)
    dest = tmp_path / "cache" / "fetched" / "m"

    done = _run(["s3://weights/team/tiny-llama", "--dest", str(dest), "--credentials-dir", str(creds)])
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in original.iterdir())  # the prefix only, not its sibling
    assert not list(dest.parent.glob(".*partial*"))

    prompt = SamplingParams(max_tokens=6, ignore_eos=True)
    opts = {"device": "cpu", "precision": "fp32"}
    want = build_engine(EngineOptions(model_dir=str(original), **opts)).generate(["The cache"], prompt)
    got = build_engine(EngineOptions(model_dir=str(dest), **opts)).generate(["The cache"], prompt)
    assert got[-1].text == want[-1].text and got[-1].generated_tokens == 6

    stamp = (dest / "model.safetensors").stat().st_mtime_ns  # a restart reuses the complete copy
    assert _run(["s3://weights/team/tiny-llama", "--dest", str(dest),
                 "--credentials-dir", str(creds)]).returncode == 0
    assert (dest / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("uri", "words"), [
    ("s3://missing-bucket/x", "NoSuchBucket"),
    ("s3://weights/nothing-here", "no objects under the prefix"),
    ("s3://weights/team/no-config", None),  # objects, but no checkpoint
])
def test_unfetchable_sources_exit_2_naming_the_source(s3: str, tmp_path: Path, uri: str,
                                                      words: str | None) -> None:
    client = boto3.client("s3", endpoint_url=s3, region_name="eu-west-1",
                          aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key=SECRET)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket="weights", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    client.put_object(Bucket="weights", Key="team/no-config/tokenizer.json", Body=b"{}")
    dest = tmp_path / "dest"
    done = _run([uri, "--dest", str(dest), "--credentials-dir", str(_credentials(tmp_path, s3))])
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert uri in line and (words or "config.json") in line and SECRET not in done.stderr
    assert not dest.exists() and not list(tmp_path.glob(".dest.partial*"))  # nothing half-created
