"""``deepserve engine``: make tiny checkpoints, serve a model with a local Triton, generate.

Heavy imports (torch, tritonclient) happen inside the handlers so ``deepserve --help``
stays fast and the operator image does not need torch.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``engine`` command group."""
    parser = subparsers.add_parser("engine", help="run the deepserve engine locally")
    sub = parser.add_subparsers(dest="engine_command", required=True)

    tiny = sub.add_parser("make-tiny", help="write a tiny random HF checkpoint (for tests/demos)")
    tiny.add_argument("--arch", default="llama", choices=["llama", "qwen2", "deepseek_v3"])
    tiny.add_argument("--out", required=True, help="directory to write")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_make_tiny)

    serve = sub.add_parser("serve", help="serve a checkpoint with a real local Triton server")
    serve.add_argument("--model", required=True, help="HF checkpoint directory")
    serve.add_argument("--name", default="model", help="Triton model name")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (keep it loopback)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    serve.add_argument("--max-batch-size", type=int, default=8)
    serve.add_argument("--max-input-tokens", type=int, default=512)
    serve.add_argument("--max-new-tokens", type=int, default=256)
    serve.add_argument("--usage-spool-dir", default="")
    serve.set_defaults(func=cmd_serve)

    front = sub.add_parser("openai-frontend", help="serve OpenAI Completions/Chat on a Triton (the pod frontend)")
    front.add_argument("--model", required=True, help="Triton model name (also the OpenAI model id)")
    front.add_argument("--triton-grpc", default="127.0.0.1:8001", help="Triton gRPC host:port")
    front.add_argument("--triton-metrics", default="http://127.0.0.1:8002/metrics")
    front.add_argument("--host", default="127.0.0.1", help="bind address")
    front.add_argument("--port", type=int, default=9000)
    front.set_defaults(func=cmd_openai_frontend)

    gen = sub.add_parser("generate", help="generate text in-process, or from a server (--server)")
    gen.add_argument("--model", help="HF checkpoint directory (in-process)")
    gen.add_argument("--server", help="gRPC address of a running server, e.g. 127.0.0.1:8001")
    gen.add_argument("--name", default="model", help="Triton model name (with --server)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=[])
    gen.set_defaults(func=cmd_generate)

    from deepserve.operator.commands.engine_fetch import register_fetch

    register_fetch(sub)


def cmd_openai_frontend(args: argparse.Namespace) -> int:
    """Run the pod's OpenAI frontend until SIGTERM."""
    from deepserve.engine.openai_frontend.serve import run

    return run(args.triton_grpc, args.triton_metrics, args.model, args.host, args.port)


def cmd_make_tiny(args: argparse.Namespace) -> int:
    """Write a tiny checkpoint and print where it went."""
    from deepserve.engine.tiny import make_tiny_checkpoint

    out = make_tiny_checkpoint(args.out, args.arch, seed=args.seed)
    print(f"wrote tiny {args.arch} checkpoint to {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Write a model repository, start tritonserver and wait for Ctrl-C or SIGTERM."""
    from deepserve.engine.options import EngineOptions, EngineOptionsError
    from deepserve.engine.triton.local import LocalTriton, TritonNotFoundError, TritonStartError
    from deepserve.engine.triton.repository import write_model_repository

    if not _is_loopback(args.host):
        print(f"error: --host {args.host} is not a loopback address; local serving stays on "
              "loopback (production pods run the engine image instead)", file=sys.stderr)
        return 2
    try:
        options = EngineOptions(
            model_dir=str(Path(args.model).resolve()), device=args.device,
            max_batch_size=args.max_batch_size, max_input_tokens=args.max_input_tokens,
            max_new_tokens_limit=args.max_new_tokens, usage_spool_dir=args.usage_spool_dir,
            served_model=args.name)
    except EngineOptionsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="deepserve-repo-") as repo:
        write_model_repository(repo, args.name, options)
        server = LocalTriton(repo, host=args.host, http_port=args.http_port,
                             grpc_port=args.grpc_port, metrics_port=args.metrics_port)
        try:
            server.start()
            print(f"starting Triton for {args.model} ...", flush=True)
            server.wait_ready(timeout=600)
        except (TritonNotFoundError, TritonStartError) as exc:
            server.stop()
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"model '{args.name}' ready: http {server.http_url}  grpc {server.grpc_url}  "
              f"metrics {server.metrics_url}  (Ctrl-C stops)", flush=True)
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        try:
            while not done.wait(0.5):
                if server.process is None or server.process.poll() is not None:
                    print("error: tritonserver exited", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream a completion to stdout."""
    if bool(args.model) == bool(args.server):
        print("error: give exactly one of --model or --server", file=sys.stderr)
        return 2
    if args.server:
        return _generate_remote(args)
    from deepserve.engine.build import build_engine
    from deepserve.engine.options import EngineOptions
    from deepserve.engine.sampling import InvalidRequestError, SamplingParams

    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                stop=tuple(args.stop))
        engine = build_engine(EngineOptions(model_dir=args.model, max_batch_size=1,
                                            max_input_tokens=1024,
                                            max_new_tokens_limit=max(args.max_tokens, 1)))
        handle = engine.submit(args.prompt, params)
    except (InvalidRequestError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    engine.start()
    try:
        for chunk in handle:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            if chunk.finished:
                print(f"\n[{chunk.finish_reason}; {chunk.prompt_tokens} prompt tokens, "
                      f"{chunk.generated_tokens} generated]")
    finally:
        engine.stop()
    return 0 if handle.final and handle.final.finish_reason != "error" else 1


def _generate_remote(args: argparse.Namespace) -> int:
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    def tensor(name: str, value: Any, dtype: str, np_dtype: Any) -> grpcclient.InferInput:
        t = grpcclient.InferInput(name, [1], dtype)
        t.set_data_from_numpy(np.array([value], dtype=np_dtype))
        return t

    inputs = [tensor("text_input", args.prompt.encode(), "BYTES", np.object_),
              tensor("max_tokens", args.max_tokens, "INT32", np.int32),
              tensor("temperature", args.temperature, "FP32", np.float32),
              tensor("top_k", args.top_k, "INT32", np.int32),
              tensor("top_p", args.top_p, "FP32", np.float32)]
    if args.seed is not None:
        inputs.append(tensor("seed", args.seed, "INT64", np.int64))
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    client = grpcclient.InferenceServerClient(args.server)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer(args.name, inputs, enable_empty_final_response=True)
        while True:
            result, error = results.get(timeout=600)
            if error is not None:
                print(f"\nerror: {error}", file=sys.stderr)
                return 1
            response = result.get_response()  # type: ignore[attr-defined]
            if result.as_numpy("text_output") is not None:  # type: ignore[attr-defined]
                sys.stdout.write(result.as_numpy("text_output")[0].decode())  # type: ignore[attr-defined]
                sys.stdout.flush()
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                print()
                return 0
    finally:
        client.stop_stream()
        client.close()
