"""python -m neojax.serve --checkpoint PATH [--host 127.0.0.1] [--port 8000] [--max_batch 16] [--max_len N]
    [--chunk 64] [--max_queue 256] [--dtype float32|bfloat16] [--quantize int8] [--kv_cache int8] [--model_name NAME]

An OpenAI-compatible server (/v1/completions, /v1/chat/completions, /v1/models, /health) with
continuous batching, and a chat page at /. PATH is anything `generate` takes: a Hugging Face
directory, a neojax directory or a training workdir (LoRA adapters merged).

    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "gpt-neo-125M", "prompt": "Once upon a time", "max_tokens": 32}'
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

import jax
import uvicorn

from neojax import checkpoint, cli, paths, registry
from neojax.serve.api import build_app
from neojax.serve.engine import Engine

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"  # JAX records one per traced (compiled) program


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m neojax.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=cli.nonneg_int, default=8000)
    parser.add_argument("--max_batch", type=cli.positive_int, default=16, help="sequences decoded together (slots)")
    parser.add_argument("--max_len", type=cli.positive_int, default=0, help="tokens per slot (default: the context)")
    parser.add_argument("--chunk", type=cli.positive_int, default=64, help="prompt tokens prefilled per step")
    parser.add_argument("--max_queue", type=cli.positive_int, default=256, help="waiting requests before 429")
    cli.add_model_options(parser)
    parser.add_argument("--model_name", help="the model's name in the API (default: the checkpoint's folder name)")
    args = parser.parse_args(argv)
    if args.port > 65535:
        raise cli.UsageError(f"--port {args.port}: a port is at most 65535")
    path = args.checkpoint if paths.is_remote(args.checkpoint) else os.path.expanduser(args.checkpoint)
    if not paths.exists(path):
        raise cli.UsageError(f"--checkpoint {args.checkpoint}: no such file or directory")
    with cli.about(f"--checkpoint {args.checkpoint}"):
        model = checkpoint.load(path, **cli.model_options(args))
    if model.tokenizer is None:
        raise cli.UsageError(f"--checkpoint {args.checkpoint} has no tokenizer; add tokenizer.json (or vocab.json + "
                             "merges.txt)")
    unservable = sorted({k for k in model.config.attention_layers if not registry.get("attention", k).servable})
    if unservable:
        raise cli.UsageError(f"--checkpoint {args.checkpoint}: attention {unservable} keeps a running state, not a "
                             "KV cache per slot; the server needs softmax attention variants")
    context = model.config.max_position_embeddings
    if args.max_len > context:
        raise cli.UsageError(f"--max_len {args.max_len} exceeds the model's {context}-token context")
    name = args.model_name or os.path.basename(os.path.normpath(path))
    engine = Engine(model.params, model.config, model.tokenizer, args.max_batch, args.max_len or None, args.chunk,
                    args.max_queue)
    print(f"compiling for {args.max_batch} slots x {engine.max_len} tokens, prompt chunks of {args.chunk} ...",
          flush=True)
    engine.warm_up()
    app = build_app(engine, name)
    _count_compilations(app.state.api)
    engine.start()

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                print(f"serving {name} at http://{args.host}:{args.port} (OpenAI API under /v1, chat page at /)",
                      flush=True)

        def handle_exit(self, sig, frame):
            engine.shutdown()  # running streams end with finish_reason "abort" before connections close
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):  # a clean stop exits 0 (uvicorn would re-raise the signal after it)
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                   timeout_graceful_shutdown=10))
    server.run()
    engine.shutdown()
    if not server.started:
        raise cli.UsageError(f"--port {args.port}: could not listen on {args.host}:{args.port} (in use?)")
    return 0


def _count_compilations(api) -> None:
    """/health reports how many programs were traced since warm-up (a request should cause none)."""
    def listener(event, duration, **_):
        if event == TRACE_EVENT:
            api.compilations += 1
    jax.monitoring.register_event_duration_secs_listener(listener)


if __name__ == "__main__":
    sys.exit(cli.run(main))
