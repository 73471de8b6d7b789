"""`llmscratch serve`: a run's model behind an OpenAI-compatible API (serving/)."""

from __future__ import annotations

import argparse

from llmscratch.cli.common import add_command, say
from llmscratch.cli.generate import add_device_options
from llmscratch.errors import LLMScratchError


def register(sub) -> None:
    p = add_command(sub, "serve", "Serve a run's model with an OpenAI-compatible HTTP API.",
                    "  llmscratch serve --run runs/qwen3-0.6b\n"
                    "  llmscratch serve --run runs/demo --port 8080 --api-key secret\n"
                    "  curl localhost:8000/v1/chat/completions -H 'Content-Type: "
                    "application/json' \\\n"
                    "    -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'\n")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on the API")
    p.add_argument("--model-name", help="the model's name in the API (default: the run's "
                   "folder name)")
    p.add_argument("--max-concurrency", type=int, default=64,
                   help="requests at once; more are answered 429")
    p.add_argument("--max-batch", type=int, default=32, help="sequences in one engine step")
    add_device_options(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:  # an optional dependency (the serve extra)
        import uvicorn

        from llmscratch.serving.app import serve_run
    except ImportError:
        raise LLMScratchError("llmscratch serve needs fastapi and uvicorn: "
                              "pip install 'llmscratch[serve]'") from None

    state, app = serve_run(args.run, args.device, args.dtype, args.model_name, args.api_key,
                           args.max_concurrency, args.max_batch)
    say(f"serving {state.model_name} on http://{args.host}:{args.port}/v1 "
        f"(OpenAI-compatible; Ctrl-C stops)")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        state.engine.stop()
    return 0

