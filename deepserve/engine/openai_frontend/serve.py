"""Run the pod frontend until SIGTERM/SIGINT (``deepserve engine openai-frontend``)."""

from __future__ import annotations

import asyncio
import logging
import signal

from deepserve.engine.openai_frontend.app import build_app, start
from deepserve.engine.openai_frontend.triton_stream import TritonGenerator

log = logging.getLogger(__name__)
OPENAI_PORT = 9000  # the same as deepserve.operator.builders.context.OPENAI_PORT


async def serve(triton_grpc: str, triton_metrics: str, model: str, host: str, port: int) -> None:
    """Serve ``model`` on ``host:port`` until a stop signal; in-flight handlers get 10 s."""
    app = build_app(TritonGenerator(triton_grpc, model), model, triton_metrics)
    runner = await start(app, host, port)
    log.info("OpenAI frontend for %s on %s:%d (Triton gRPC %s)", model, host, port, triton_grpc)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.shutdown()
        await runner.cleanup()


def run(triton_grpc: str, triton_metrics: str, model: str, host: str, port: int) -> int:
    """Blocking entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(triton_grpc, triton_metrics, model, host, port))
    return 0
