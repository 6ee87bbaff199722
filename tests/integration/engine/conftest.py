"""A real Triton (HTTP inference restricted, as in a pod) plus the pod's OpenAI frontend.

One pair per session, shared by the frontend and fuzz tests: each Triton start costs ~20 s
on 2 cores. The tiny checkpoint gets a chat template (as a real model's
tokenizer_config.json has one) so chat requests are rendered the way HF renders them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deepserve.engine.options import EngineOptions
from deepserve.engine.triton.local import LocalTriton, free_port
from deepserve.engine.triton.repository import write_model_repository

FRONT_MODEL = "tiny-chat"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>\n"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


@dataclass
class Frontend:
    """The running pair and what the tests compare against."""

    url: str
    triton: LocalTriton
    reference: Any  # an in-process engine with the same weights
    spool: Path
    model_dir: Path
    process: subprocess.Popen[bytes]

    def expected(self, prompt: str, max_tokens: int) -> str:
        """Greedy text the engine produces for ``prompt``."""
        from deepserve.engine.sampling import SamplingParams

        params = SamplingParams(max_tokens=max_tokens)
        return str(self.reference.generate([prompt], params)[0].text)

    def alive(self) -> bool:
        """Both processes are running."""
        proc = self.triton.process
        return proc is not None and proc.poll() is None and self.process.poll() is None


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout}s")


@pytest.fixture(scope="session")
def frontend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frontend]:
    """Triton serving a tiny chat-capable model, with the frontend in front of it."""
    from deepserve.engine.build import build_engine
    from deepserve.engine.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("front")
    model_dir = make_tiny_checkpoint(root / "ckpt", "llama", seed=5)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    options = EngineOptions(model_dir=str(model_dir), device="cpu", max_batch_size=4,
                            max_input_tokens=128, max_new_tokens_limit=1000,
                            usage_spool_dir=str(root / "spool"), served_model=FRONT_MODEL,
                            namespace="team-a", billing_account="acme")
    write_model_repository(root / "repo", FRONT_MODEL, options)
    reference = build_engine(options.replace(usage_spool_dir=""))
    with LocalTriton(root / "repo", restrict_http_inference=True) as triton:
        assert triton.process is not None
        group = triton.process.pid  # tritonserver leads its own session and process group
        port = free_port()
        cli = Path(sys.executable).parent / "deepserve"
        log = open(root / "frontend.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [str(cli), "engine", "openai-frontend", "--model", FRONT_MODEL,
             "--triton-grpc", triton.grpc_url, "--triton-metrics", triton.metrics_url,
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_http(f"{url}/health", 120)  # slow on a loaded 2-core machine
            yield Frontend(url, triton, reference, root / "spool", model_dir, proc)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
    # nothing of the server outlives stop(): a Python-backend stub Triton gave up on at its exit
    # timeout used to stay behind (~700 MB each) after streamed requests
    deadline = time.monotonic() + 10  # killed stubs are reaped by init a moment later
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"processes of tritonserver's group {group} outlived stop()")
