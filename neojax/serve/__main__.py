"""python -m neojax.serve --checkpoint PATH [--host 127.0.0.1] [--port 8000] [--max_batch 16] [--max_len N]
    [--chunk 64] [--max_queue 256] [--dtype float32|bfloat16] [--quantize int8] [--kv_cache int8] [--model_name NAME]
    [--api_key KEY] [--max_request_bytes N] [--no_access_log] [--mesh auto|tensor=T]
    [--coordinator HOST:PORT --num_processes N --process_id I] [--draft SMALLER_CHECKPOINT [--draft_tokens K]]

An OpenAI-compatible server (/v1/completions, /v1/chat/completions, /v1/models, /health) with
continuous batching, and a chat page at /. The port is taken before the model loads (--port 0: a
free one, announced); beyond loopback, require a key with --api_key or NEOJAX_API_KEY. PATH is
anything `generate` takes: a Hugging Face
directory, a neojax directory or a training workdir (LoRA adapters merged). --mesh auto splits the
heads, the KV cache and the MLP over as many devices as divide the heads (up to 8: tensor=T). A
model too big for one host runs every host's process with the multi-host flags and a mesh over all
of their devices (e.g. --mesh tensor=16): process 0 listens and schedules, the others replay its
engine's steps on their shards (neojax.serve.relay). --draft: a smaller model with the same
tokenizer proposes K tokens a step for every stream and the model checks them in one step
(speculative decoding: the same greedy output, sampled output distributed as without it).

    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "gpt-neo-125M", "prompt": "Once upon a time", "max_tokens": 32}'
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import sys

import h11
import jax
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from neojax import checkpoint, cli, registry, sharding
from neojax.infer import speculative
from neojax.serve.api import MAX_REQUEST_BYTES, BadRequest, build_app, error_body
from neojax.serve.engine import Engine, EngineSettings
from neojax.serve.moderation import Moderator, parse_scope
from neojax.serve.relay import Relay

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"  # JAX records one per traced (compiled) program


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m neojax.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=cli.nonneg_int, default=8000)
    parser.add_argument("--max_batch", type=cli.positive_int, default=16, help="sequences decoded together (slots)")
    parser.add_argument("--max_len", type=cli.positive_int, default=0, help="tokens per slot (default: the context)")
    parser.add_argument("--chunk", type=cli.positive_int, default=64, help="prompt tokens per chunk")
    parser.add_argument("--step_tokens", type=cli.positive_int, default=512,
                        help="tokens an engine step may process: a decode token per generating slot, the rest as "
                             "prompt chunks of several requests together")
    parser.add_argument("--max_queue", type=cli.positive_int, default=256, help="waiting requests before 429")
    parser.add_argument("--prefix_cache_mb", type=cli.nonneg_int, default=0,
                        help="memory for computed prompt prefixes (whole chunks, exact token match, least recently "
                             "used out): a repeated system prompt or context is not prefilled again (0: off)")
    parser.add_argument("--draft", help="a smaller model with the same tokenizer (e.g. gpt-neo-125M for 1.3B) that "
                        "proposes tokens for every stream, checked by this one in one step")
    parser.add_argument("--draft_tokens", type=cli.positive_int, default=4, help="tokens the draft proposes a step")
    cli.add_model_options(parser)
    sharding.add_mesh_options(parser, default="auto")
    parser.add_argument("--model_name", help="the model's name in the API (default: the checkpoint's folder name)")
    parser.add_argument("--api_key", default=os.environ.get("NEOJAX_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1 (default: $NEOJAX_API_KEY; none: open)")
    parser.add_argument("--max_request_bytes", type=cli.positive_int, default=MAX_REQUEST_BYTES,
                        help="larger request bodies get 413 before they are read")
    parser.add_argument("--no_access_log", action="store_true", help="no line per request on stdout (/metrics "
                        "still counts every request)")
    gate = parser.add_argument_group("moderation gate (neojax.serve.moderation)")
    gate.add_argument("--moderation", metavar="CLASSIFIER",
                      help="a classifier from neojax's classification fine-tuning (its hf/ folder): flagged prompts "
                           "get 400 (code content_filter), flagged outputs end with finish_reason content_filter; "
                           "/v1/moderations returns its scores")
    gate.add_argument("--moderation_threshold", type=cli.probability, default=None,
                      help="flag a text when 1 - p(safe label) exceeds this (default 0.5)")
    gate.add_argument("--moderation_safe_label", default=None, help="the classifier's label for acceptable text "
                      "(default: its first label)")
    gate.add_argument("--moderate", default=None, help="what the gate checks: prompts, outputs or prompts,outputs "
                      "(the default)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    moderate, path, draft_path, shapes = _checked(args)
    mesh = sharding.inference_mesh(args, shapes, replicas=False)
    leads = sharding.is_lead_process()  # process 0 listens and schedules; the others follow its engine
    sock = _listen(args.host, args.port) if leads else None  # before any loading: a port in use is one line
    if sock is not None and not args.api_key and not ipaddress.ip_address(sock.getsockname()[0]).is_loopback:
        print(f"warning: serving on {args.host} without --api_key: anyone who reaches this machine can use "
              "the model; set --api_key (or NEOJAX_API_KEY)", file=sys.stderr, flush=True)
    model, draft = _models(args, path, draft_path, mesh)
    moderator = _moderator(args) if args.moderation and leads else None  # the gate runs beside the API, on process 0
    relay = Relay() if jax.process_count() > 1 else None
    settings = EngineSettings(args.max_batch, args.max_len or None, args.chunk, args.max_queue, args.step_tokens,
                              args.prefix_cache_mb, args.draft_tokens)
    engine = Engine(model.params, model.config, model.tokenizer, settings, draft=draft, relay=relay if leads else None)
    if leads:
        drafted = f", {args.draft_tokens} drafted tokens a step" if draft else ""
        print(f"compiling for {args.max_batch} slots x {engine.max_len} tokens, prompt chunks of {args.chunk} (up "
              f"to {engine.scheduler.max_prefill} a step){drafted} ...", flush=True)
    engine.warm_up()
    if not leads:
        print(f"process {jax.process_index()}: following process 0's engine", flush=True)
        engine.follow(relay)
        return 0
    if moderator is not None:
        moderator.score(["warm up"])  # compiled before the first request
    name = args.model_name or os.path.basename(os.path.normpath(path))
    app = build_app(engine, name, args.max_request_bytes, args.api_key, moderator, moderate,
                    access_log=not args.no_access_log)
    _count_compilations(app.state.api)
    return _serve(engine, app, sock, args, name)


def _checked(args) -> tuple:
    """(the moderation scope, the checkpoint's path, the draft's or None, their stated shapes) of valid
    flags, checked before any work; else a UsageError naming the flag."""
    moderate = parse_scope(args.moderate or "prompts,outputs")
    given = [flag for flag in ("moderation_threshold", "moderation_safe_label", "moderate")
             if getattr(args, flag) is not None]
    if given and not args.moderation:
        raise cli.UsageError(f"--{given[0]} sets the moderation gate; add --moderation CLASSIFIER (or drop it)")
    if args.port > 65535:
        raise cli.UsageError(f"--port {args.port}: a port is at most 65535")
    if args.api_key is not None and not args.api_key.strip():
        raise cli.UsageError("--api_key (or NEOJAX_API_KEY) is empty: an empty key would serve the API open; give a "
                             "key, or unset it to serve without one")
    if args.max_len == 1:
        raise cli.UsageError("--max_len 1 leaves no room for a prompt token and a new one; give at least 2 (default: "
                             "the model's context)")
    if args.draft_tokens != 4 and not args.draft:
        raise cli.UsageError("--draft_tokens is how many tokens --draft proposes a step; add --draft or drop it")
    with cli.about(f"--draft_tokens {args.draft_tokens}"):
        speculative.check_draft_tokens(args.draft_tokens)
    path = cli.existing_path("--checkpoint", args.checkpoint)
    with cli.about(f"--checkpoint {args.checkpoint}"):
        shapes = [checkpoint.stated_shape(path)]
    draft_path = None
    if args.draft:
        draft_path = cli.existing_path("--draft", args.draft)
        with cli.about(f"--draft {args.draft}"):
            shapes.append(checkpoint.stated_shape(draft_path))
    return moderate, path, draft_path, shapes


def _models(args, path, draft_path, mesh) -> tuple:
    """(the model placed on `mesh`, the draft's (params, config) or None), each checked as served."""
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
    with cli.about(f"--mesh {args.mesh}"):
        model = model._replace(params=sharding.place(model.params, model.config, mesh))
    if draft_path is None:
        return model, None
    with cli.about(f"--draft {args.draft}"):
        drafter = checkpoint.load(draft_path, **cli.model_options(args))
        speculative.check_draft(model.config, drafter.config, args.draft_tokens)
    with cli.about(f"--mesh {args.mesh}"):
        return model, (sharding.place(drafter.params, drafter.config, mesh), drafter.config)


def _moderator(args) -> Moderator:
    where = cli.existing_path("--moderation", args.moderation)
    with cli.about(f"--moderation {args.moderation}"):
        return Moderator.load(where, 0.5 if args.moderation_threshold is None else args.moderation_threshold,
                              args.moderation_safe_label or "")


def _serve(engine: Engine, app, sock, args, name: str) -> int:
    """Serve `app` on `sock` until SIGINT or SIGTERM; running streams end with finish_reason "abort"."""
    engine.start()

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                host, port = sock.getsockname()[:2]
                print(f"serving {name} at http://{host}:{port} (OpenAI API under /v1, chat page at /)", flush=True)

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

    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", http=Http,
                                   timeout_graceful_shutdown=10))
    server.run(sockets=[sock])
    engine.shutdown()
    return 0


class Http(H11Protocol):
    """uvicorn's HTTP/1.1, with its answer to a request it cannot parse in OpenAI's error shape."""

    def send_400_response(self, msg: str) -> None:
        body = error_body(BadRequest(f"malformed HTTP request ({msg.rstrip('.')}); send HTTP/1.1 with JSON"))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or a UsageError naming the flag."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise cli.UsageError(f"--host {host}: not an address of this machine ({e}); use e.g. 127.0.0.1 or "
                             "0.0.0.0") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise cli.UsageError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); choose another "
                             "--port (0 picks a free one) or --host") from None
    sock.listen(2048)
    return sock


def _count_compilations(api) -> None:
    """/health reports how many programs were traced since warm-up (a request should cause none)."""
    def listener(event, duration, **_):
        if event == TRACE_EVENT:
            api.compilations += 1
    jax.monitoring.register_event_duration_secs_listener(listener)


if __name__ == "__main__":
    sys.exit(cli.run(main))
