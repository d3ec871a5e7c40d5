"""OpenAI's request and response shapes over the engine: /v1/models, /v1/completions,
/v1/chat/completions (both with server-sent-event streams), /health and the chat page at /.

Every field is checked before a request reaches the engine; a bad one gets HTTP 400 with OpenAI's
{"error": {"message", "type", "param", "code"}} naming the field and what it accepts, and so does a
field neojax does not act on (a misspelling, `logit_bias`, `tools`, ...): nothing is accepted and
ignored. Every other error has the same shape: 401 (a missing or wrong key when the server has one),
404, 405, 413 (a body over the limit, answered before it is read), 429 (a full queue). A client that
goes away has its sequences cancelled: their slots free at the next step.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import time
import uuid
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from neojax.finetune.chat import STOP, render_prompt
from neojax.serve.engine import TOP_LOGPROBS, Engine, QueueFull, Sequence, Settings
from neojax.serve.metrics import Metrics

MAX_N = 16
MAX_STOP = 16
MAX_REQUEST_BYTES = 4 << 20  # default body limit: a long chat history fits many times over
SAMPLING = {"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "n", "seed",
            "stream", "stream_options", "presence_penalty", "frequency_penalty", "best_of"}
FIELDS = {"completions": SAMPLING | {"prompt", "echo", "logprobs"}, "chat": SAMPLING | {"messages"}}
REFUSED = {"logit_bias": "logit_bias is not supported by neojax", "suffix": "suffix (insertion) is not supported",
           "tools": "tool calls are not supported", "tool_choice": "tool calls are not supported",
           "functions": "function calls are not supported", "function_call": "function calls are not supported",
           "response_format": "response_format (JSON mode) is not supported",
           "top_logprobs": "logprobs are not supported on chat completions here; use /v1/completions"}
PAGE = os.path.join(os.path.dirname(__file__), "chat.html")
PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")  # metric labels


class BadRequest(Exception):
    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind


def _error(e: BadRequest) -> JSONResponse:
    return JSONResponse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": None}},
                        status_code=e.status)


# --- request checks -------------------------------------------------------------------------------
def _number(body, key, default, low, high, low_open=False, integer=False):
    value = body.get(key, default)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or (
            not integer and not math.isfinite(value)):
        raise BadRequest(f"'{key}' must be {kind}, not {json.dumps(value)[:40]}", key)
    if value < low or (low_open and value == low) or (high is not None and value > high):
        lo = f"({low}" if low_open else f"[{low}"
        raise BadRequest(f"'{key}' is {value}; it must lie in {lo}, {high if high is not None else 'inf'}]", key)
    return value


def _stop(body) -> tuple:
    stop = body.get("stop")
    if stop is None:
        return ()
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings", "stop")
    if len(stop) > MAX_STOP:
        raise BadRequest(f"'stop' has {len(stop)} strings; at most {MAX_STOP}", "stop")
    return tuple(s for s in stop if s)


def _known_fields(body, endpoint: str) -> None:
    """A field neojax would not act on is refused, named, never silently ignored."""
    for key in body:
        if key in REFUSED:
            raise BadRequest(f"'{key}': {REFUSED[key]}; remove it from the request", key)
        if key not in FIELDS[endpoint]:
            raise BadRequest(f"unknown field '{key}'; fields of this endpoint: {', '.join(sorted(FIELDS[endpoint]))}",
                             key)
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(
                options.get("include_usage", False), bool):
            raise BadRequest("'stream_options' must be {\"include_usage\": true|false}", "stream_options")
        if body.get("stream") is not True:
            raise BadRequest("'stream_options' is only for streamed requests; set \"stream\": true or drop it",
                             "stream_options")


def _settings(body, vocab: int, default_max=16) -> tuple[Settings, int]:
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise BadRequest(f"'{key}' is not supported by neojax; leave it at 0", key)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", default_max, 0, None, integer=True)
    settings = Settings(max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, 0, None),
                        top_p=_number(body, "top_p", 1.0, 0, 1, low_open=True),
                        top_k=_number(body, "top_k", 0, 0, vocab, integer=True), stop=_stop(body),
                        seed=_number(body, "seed", None, -2 ** 63, 2 ** 64, integer=True))
    n = _number(body, "n", 1, 1, MAX_N, integer=True)
    if body.get("best_of") not in (None, n):
        raise BadRequest("'best_of' is not supported by neojax (only best_of = n)", "best_of")
    return settings, n


def _text(text: str, param: str) -> str:
    """`text` if it can be encoded (JSON may carry a lone surrogate such as "\\ud800"), else 400."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(f"'{param}' holds {e.object[e.start:e.end]!r}, a lone surrogate (not a character); send "
                         "valid Unicode text", param) from None
    return text


def _flag(body, key) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be true or false, not {json.dumps(value)[:40]}", key)
    return value


class Api:
    def __init__(self, engine: Engine, model_name: str):
        self.engine, self.model_name = engine, model_name
        self.tokenizer, self.max_len = engine.tokenizer, engine.max_len
        self.vocab = engine.config.vocab_size
        self.compilations = 0
        self.metrics = Metrics()

    def _body(self, raw: bytes) -> dict:
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON ({e})") from None
        except RecursionError:
            raise BadRequest("the request body nests too deeply; no field of this API nests more than 3 levels") \
                from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise BadRequest(f"model {json.dumps(model)[:60]} is not served here; use {self.model_name!r} "
                             "(GET /v1/models)", "model")
        return body

    def _prompts(self, prompt) -> list[list[int]]:
        """A string, a list of strings, a list of token ids or a list of token-id lists -> id lists."""
        if prompt is None:
            raise BadRequest("'prompt' is required: a string, a list of strings, a list of token ids, or a list "
                             "of token-id lists", "prompt")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                          for t in prompt):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            prompts = prompt
        else:
            raise BadRequest("'prompt' must be a non-empty string, list of strings, list of token ids or list of "
                             "token-id lists", "prompt")
        out = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                ids = self.tokenizer.encode(_text(p, "prompt"))
            elif all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                bad = [t for t in p if not 0 <= t < self.vocab]
                if bad:
                    raise BadRequest(f"prompt {i}: token ids {bad[:5]} are outside the vocabulary [0, {self.vocab})",
                                     "prompt")
                ids = list(p)
            else:
                raise BadRequest(f"prompt {i} must be a string or a list of integer token ids", "prompt")
            out.append(ids or [self.tokenizer.eos_id])
        if len(out) > MAX_N:
            raise BadRequest(f"'prompt' holds {len(out)} prompts; at most {MAX_N} per request", "prompt")
        return out

    def _fits(self, prompts, settings: Settings) -> None:
        for i, ids in enumerate(prompts):
            if len(ids) >= self.max_len:
                raise BadRequest(f"prompt {i} has {len(ids)} tokens; the context holds {self.max_len} (prompt plus "
                                 "max_tokens): shorten it", "prompt")
            if len(ids) + settings.max_tokens > self.max_len:
                raise BadRequest(f"'max_tokens' is {settings.max_tokens}, but prompt {i} has {len(ids)} tokens and "
                                 f"the context holds {self.max_len}: use max_tokens <= {self.max_len - len(ids)}",
                                 "max_tokens")

    # --- endpoints --------------------------------------------------------------------------------
    async def completions(self, request: Request):
        body = self._body(await request.body())
        _known_fields(body, "completions")
        settings, n = _settings(body, self.vocab)
        prompts = await asyncio.to_thread(self._prompts, body.get("prompt"))  # the event loop serves others
        self._fits(prompts, settings)
        echo, stream = _flag(body, "echo"), _flag(body, "stream")
        logprobs = body.get("logprobs")
        if logprobs is not None:
            logprobs = _number(body, "logprobs", None, 0, TOP_LOGPROBS, integer=True)
        if echo and stream:
            raise BadRequest("'echo' with 'stream' is not supported; ask for one of them", "echo")
        if logprobs is not None and stream:
            raise BadRequest("'logprobs' with 'stream' is not supported; ask for one of them", "logprobs")
        if len(prompts) * n > MAX_N:
            raise BadRequest(f"{len(prompts)} prompts x n={n} is {len(prompts) * n} choices; at most {MAX_N}", "n")
        seqs = [Sequence(ids, settings, None, choice=j, echo_logprobs=echo and logprobs is not None)
                for ids in prompts for j in range(n)]
        return await self._respond(request, seqs, stream, "cmpl", "text_completion",
                                   lambda seq: self._choice_text(seq, echo, logprobs), body)

    async def chat(self, request: Request):
        body = self._body(await request.body())
        _known_fields(body, "chat")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' is required: a non-empty list of {role, content}", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(
                    m.get("content"), str):
                raise BadRequest(f"messages[{i}] must be {{\"role\": system|user|assistant, \"content\": string}}",
                                 "messages")
        settings, n = _settings(body, self.vocab, default_max=256)
        settings.stop = settings.stop + (STOP,)  # the chat template's next user turn
        text = _text(render_prompt(messages), "messages")
        ids = await asyncio.to_thread(self.tokenizer.encode, text)  # the event loop serves others meanwhile
        if settings.max_tokens + len(ids) > self.max_len and "max_tokens" not in body and \
                "max_completion_tokens" not in body:
            settings.max_tokens = max(self.max_len - len(ids), 0)
        self._fits([ids], settings)
        seqs = [Sequence(ids, settings, None, choice=j) for j in range(n)]
        return await self._respond(request, seqs, _flag(body, "stream"), "chatcmpl", "chat.completion",
                                   lambda seq: {"message": {"role": "assistant", "content": seq.stream.text.lstrip()},
                                                "logprobs": None}, body, chat=True)

    async def _respond(self, request, seqs, stream, prefix, kind, choice_of, body, chat=False):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        for index, seq in enumerate(seqs):
            seq.on_event = lambda event, index=index: loop.call_soon_threadsafe(queue.put_nowait, (index, event))
        try:
            self.engine.submit(seqs)
        except QueueFull as e:
            raise BadRequest(f"too many requests waiting: {e}; retry later", status=429,
                             kind="rate_limit_error") from None
        head = {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": self.model_name}
        head_start = time.perf_counter()
        if stream:
            include_usage = isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")
            return StreamingResponse(self._events(seqs, queue, head, kind, chat, include_usage, head_start),
                                     media_type="text/event-stream")
        done = 0
        try:
            while done < len(seqs):
                try:
                    _, event = await asyncio.wait_for(queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return JSONResponse({}, status_code=499)
                    continue
                done += "finish_reason" in event
        finally:
            self.engine.cancel([s for s in seqs if s.finish_reason is None])
            self._access_log(head["id"], seqs, head_start)
        choices = [{"index": i, **choice_of(s), "finish_reason": s.finish_reason} for i, s in enumerate(seqs)]
        return JSONResponse({**head, "object": kind, "choices": choices, "usage": _usage(seqs)})

    async def _events(self, seqs, queue, head, kind, chat, include_usage, opened):
        kind = kind + ".chunk" if chat else kind
        started, texted = set(), set()
        done = 0
        sse = lambda obj: f"data: {json.dumps(obj)}\n\n"
        try:
            while done < len(seqs):
                index, event = await queue.get()
                if chat and index not in started:
                    started.add(index)
                    yield sse({**head, "object": kind, "choices": [
                        {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
                if "text" in event:
                    text = event["text"]
                    if chat and index not in texted:
                        text = text.lstrip()  # the template puts a space after "Assistant:"
                        if not text:
                            continue
                        texted.add(index)
                    piece = {"delta": {"content": text}} if chat else {"text": text, "logprobs": None}
                    yield sse({**head, "object": kind, "choices": [{"index": index, **piece, "finish_reason": None}]})
                else:
                    done += 1
                    piece = {"delta": {}} if chat else {"text": "", "logprobs": None}
                    yield sse({**head, "object": kind, "choices": [
                        {"index": index, **piece, "finish_reason": event["finish_reason"]}]})
            if include_usage:
                yield sse({**head, "object": kind, "choices": [], "usage": _usage(seqs)})
            yield "data: [DONE]\n\n"
        finally:
            self.engine.cancel([s for s in seqs if s.finish_reason is None])
            self._access_log(head["id"], seqs, opened)

    def _access_log(self, request_id: str, seqs, started: float) -> None:
        """One line per request (id, tokens in and out, seconds, each choice's finish reason), and /metrics."""
        usage, seconds = _usage(seqs), time.perf_counter() - started
        self.metrics.finished(usage["prompt_tokens"], usage["completion_tokens"], seconds)
        reasons = ",".join(str(s.finish_reason or "cancelled") for s in seqs)
        print(f"request {request_id}: {usage['prompt_tokens']} tokens in, {usage['completion_tokens']} out, "
              f"{seconds:.2f}s, finish {reasons}", flush=True)

    def _choice_text(self, seq: Sequence, echo: bool, logprobs: Optional[int]) -> dict:
        prompt_text = self.tokenizer.decode(seq.prompt) if echo else ""
        out: dict[str, Any] = {"text": prompt_text + seq.stream.text, "logprobs": None}
        if logprobs is None:
            return out
        piece = lambda t: self.tokenizer.decode([t])
        def top(pairs):  # token -> logprob; two ids with one text keep the higher (the harness takes the max)
            out = {}
            for t, lp in sorted(pairs, key=lambda p: -p[1])[:logprobs]:
                out.setdefault(piece(t), lp)
            return out
        tokens, lps, tops = [], [], []
        if echo:
            tokens += seq.prompt
            lps += [None] + seq.prompt_logprobs
            tops += [None] + [top(p) for p in seq.prompt_top]
        tokens += seq.tokens
        lps += seq.logprobs
        tops += [top(p) for p in seq.top]
        strings = [piece(t) for t in tokens]
        offset = 0 if echo else len(self.tokenizer.decode(seq.prompt))
        offsets = []
        for s in strings:
            offsets.append(offset)
            offset += len(s)
        out["logprobs"] = {"tokens": strings, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
        return out


def _usage(seqs) -> dict:
    prompt = sum(len(s.prompt) for s in seqs if s.choice == 0)  # each prompt once, however many choices
    completion = sum(len(s.tokens) for s in seqs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Guard:
    """ASGI middleware in front of the app: a body over `max_bytes` is 413 before it is read (by its
    Content-Length, or as it arrives), and with an `api_key` every /v1 request needs
    "Authorization: Bearer <key>" (compared in constant time), else 401. Every response is counted
    for /metrics."""

    def __init__(self, app, max_bytes: int, api_key: Optional[str], metrics: Metrics):
        self.app, self.max_bytes, self.api_key, self.metrics = app, max_bytes, api_key, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in PATHS else "other"  # labels bounded whatever clients send

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.request(path, message["status"])
            await send(message)

        await self._guarded(scope, receive, counted)

    async def _guarded(self, scope, receive, send):
        headers = dict(scope["headers"])
        if self.api_key and scope["path"].startswith("/v1"):
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return await _send(send, BadRequest("a valid API key is required: send 'Authorization: Bearer "
                                                    "<key>'", status=401, kind="invalid_request_error"))
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_bytes:
            return await _send(send, _too_large(self.max_bytes))
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:
            await _send(send, _too_large(self.max_bytes))


class BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> BadRequest:
    return BadRequest(f"the request body exceeds {limit} bytes (the server's --max_request_bytes)", status=413)


async def _send(send, e: BadRequest) -> None:
    body = json.dumps({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": None}}).encode()
    await send({"type": "http.response.start", "status": e.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def build_app(engine: Engine, model_name: str, max_request_bytes: int = MAX_REQUEST_BYTES,
              api_key: Optional[str] = None) -> FastAPI:
    app = FastAPI(title="neojax", docs_url=None, redoc_url=None)
    api = Api(engine, model_name)
    app.state.api = api
    app.add_middleware(Guard, max_bytes=max_request_bytes, api_key=api_key, metrics=api.metrics)

    @app.exception_handler(BadRequest)
    async def bad_request(_, e: BadRequest):
        return _error(e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # 404, 405, ... in OpenAI's shape
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        text = f"{request.method} {request.url.path}: {e.detail}" + (
            "; endpoints: /v1/completions, /v1/chat/completions, /v1/models, /health, /" if e.status_code in (404, 405)
            else "")
        return _error(BadRequest(text, status=e.status_code, kind=kind))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "neojax",
                                            "max_model_len": engine.max_len}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **engine.busy(), "compilations": api.compilations}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(api.metrics.render(engine.busy()), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await api.completions(request)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await api.chat(request)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        with open(PAGE, encoding="utf-8") as f:
            return HTMLResponse(f.read().replace("{{MODEL}}", model_name))

    return app
