"""Unit-test session setup.

On machines without an NVIDIA driver, Triton is put in interpreter mode before anything
imports it (it reads ``TRITON_INTERPRET`` at import), so kernel tests can run the Triton
kernels on CPU. Nothing else uses the kernels on CPU: tests opt in per test.
"""

from __future__ import annotations

import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
