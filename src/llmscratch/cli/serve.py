"""`llmscratch serve`: a run's model behind an OpenAI-compatible API (serving/)."""

from __future__ import annotations

import argparse
import errno
import socket

from llmscratch.cli.common import add_command, say
from llmscratch.cli.generate import add_device_options, add_speculative_options, engine_speculation
from llmscratch.errors import LLMScratchError


def register(sub) -> None:
    p = add_command(sub, "serve", "Serve a run's model with an OpenAI-compatible HTTP API.",
                    "  llmscratch serve --run runs/qwen3-0.6b\n"
                    "  llmscratch serve --run runs/demo --port 8080 --api-key secret\n"
                    "  llmscratch serve --run runs/demo --speculative prompt-lookup "
                    "--draft-tokens 4\n"
                    "  curl localhost:8000/v1/chat/completions -H 'Content-Type: "
                    "application/json' \\\n"
                    "    -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'\n")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="0: any free port")
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1/* (the chat "
                   "page, /health and /metrics stay open: docs/inference.md)")
    p.add_argument("--model-name", help="the model's name in the API (default: the run's "
                   "folder name)")
    p.add_argument("--max-concurrency", type=at_least_one, default=64,
                   help="requests at once; more are answered 429")
    p.add_argument("--max-batch", type=at_least_one, default=32,
                   help="sequences in one engine step")
    add_speculative_options(p)
    add_device_options(p)
    p.set_defaults(func=cmd_serve)


def port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535; 0: any "
                                         "free port)")
    return int(text)


def at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def cmd_serve(args: argparse.Namespace) -> int:
    try:  # an optional dependency (the serve extra)
        import uvicorn

        from llmscratch.serving.app import serve_run
    except ImportError:
        raise LLMScratchError("llmscratch serve needs fastapi and uvicorn: "
                              "pip install 'llmscratch[serve]'") from None

    draft_tokens, draft_run = engine_speculation(args)  # --speculative (0: off)
    sock = listen(args.host, args.port)  # before the model loads: a port in use fails at once
    try:
        state, app = serve_run(args.run, args.device, args.dtype, args.model_name,
                               args.api_key, args.max_concurrency, args.max_batch,
                               args.quantize, draft_tokens, draft_run)
        try:
            root = url(sock)
            say(f"serving {state.model_name} on {root}/v1 (OpenAI-compatible; Ctrl-C stops)")
            say(f"chat page: {root}/")
            if state.engine.prefix_caching_off:
                say(f"note: {state.engine.prefix_caching_off}")
            uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
        finally:
            state.engine.stop()
    finally:
        sock.close()
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port for the server to listen on, or one line saying why not."""
    where = f"cannot listen on {host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise LLMScratchError(f"{where}: {err.strerror} (--host takes an address of this "
                              "machine, such as 127.0.0.1 or 0.0.0.0)") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once, as uvicorn
        sock.bind(address)
    except OSError as err:
        sock.close()
        hint = {errno.EADDRINUSE: " (another program listens there: choose another --port)",
                errno.EACCES: " (ports below 1024 need root: choose another --port)",
                errno.EADDRNOTAVAIL: " (not an address of this machine: check --host)"}
        raise LLMScratchError(f"{where}: {err.strerror}{hint.get(err.errno, '')}") from None
    return sock


def url(sock: socket.socket) -> str:
    """http://host:port of a bound socket (the port it got, if 0 was asked for)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
