"""OpenAI's request and response shapes over the engine: /v1/models, /v1/completions,
/v1/chat/completions (both with server-sent-event streams), /health and the chat page at /.

Every body is validated against the models in schema.py (also served as /openapi.json) before
it reaches the engine; a bad field gets HTTP 400 with OpenAI's {"error": {"message", "type",
"param", "code"}} naming the field and what it accepts, and so does a field neojax does not act on
(a misspelling, `logit_bias`, `tools`, ...): nothing is accepted and ignored. Every other error
has the same shape: 401 (a missing or wrong key when the server has one), 404, 405, 413 (a body
over the limit, answered before it is read), 429 (a full queue). A client that goes away has its
sequences cancelled: their slots free at the next step.
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import json
import os
import time
import uuid
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from neojax import __version__
from neojax.finetune.chat import STOP, render_prompt
from neojax.serve import schema
from neojax.serve.engine import Engine
from neojax.serve.metrics import Metrics
from neojax.serve.moderation import Moderator
from neojax.serve.scheduler import QueueFull, Sequence, Settings
from neojax.serve.schema import MAX_N

MAX_REQUEST_BYTES = 4 << 20  # default body limit: a long chat history fits many times over
REFUSED = {"logit_bias": "logit_bias is not supported by neojax", "suffix": "suffix (insertion) is not supported",
           "tools": "tool calls are not supported", "tool_choice": "tool calls are not supported",
           "functions": "function calls are not supported", "function_call": "function calls are not supported",
           "response_format": "response_format (JSON mode) is not supported"}
CHAT_REFUSED = {**REFUSED, **{key: "logprobs are not supported on chat completions here; use /v1/completions"
                              for key in ("logprobs", "top_logprobs")}}
PAGE = os.path.join(os.path.dirname(__file__), "chat.html")
GATE_CHARS = 32  # with outputs moderated, new text is checked (and shown) in pieces of at least this many characters
PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")  # metric labels


class BadRequest(Exception):
    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 kind: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = message, param, status, kind, code


def error_body(e: BadRequest) -> bytes:
    return json.dumps({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}}).encode()


def _unique_keys(pairs: list) -> dict:
    """A JSON object's pairs as a dict, refusing a key given twice (which value was meant is unknown)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise BadRequest(f"'{key}' is given twice in one JSON object; give each field once", key)
        out[key] = value
    return out


def _error(e: BadRequest) -> Response:
    return Response(error_body(e), status_code=e.status, media_type="application/json")


# --- request checks -------------------------------------------------------------------------------
def _validated(model: type[BaseModel], body: dict, refused: dict) -> BaseModel:
    """`body` as `model` (schema.py), or a 400 naming the first field at fault and what it accepts (a
    field OpenAI has and neojax would not act on: why it is refused)."""
    for key in body:
        if key in refused:
            raise BadRequest(f"'{key}': {refused[key]}; remove it from the request", key)
    try:
        return model.model_validate(body)
    except ValidationError as e:
        errors = e.errors(include_url=False)
    first = errors[0]
    field = str(first["loc"][0]) if first["loc"] else None
    if field is None or field not in model.model_fields:
        raise BadRequest(f"unknown field '{field}'; fields of this endpoint: {', '.join(model.model_fields)}", field)
    expected = f"{field}: {model.model_fields[field].description}"
    if first["type"] == "missing" and len(first["loc"]) == 1:
        raise BadRequest(f"'{field}' is required ({expected})", field)
    if sum(str(e["loc"][0]) == field for e in errors) > 1:  # a union: every alternative complained
        raise BadRequest(f"'{field}' is not valid ({expected})", field)
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"][1:])
    raise BadRequest(f"'{field}{where}': {first['msg'][0].lower()}{first['msg'][1:]} ({expected})", field)


def _settings(request, default_max: int) -> tuple[Settings, int]:
    """The engine's settings and n, after the checks that span fields."""
    n = request.n or 1
    if request.best_of not in (None, n):
        raise BadRequest("'best_of' is not supported by neojax (only best_of = n)", "best_of")
    if request.stream_options is not None and not request.stream:
        raise BadRequest("'stream_options' is only for streamed requests; set \"stream\": true or drop it",
                         "stream_options")
    max_tokens, also = request.max_tokens, getattr(request, "max_completion_tokens", None)
    if max_tokens is not None and also is not None and also != max_tokens:
        raise BadRequest(f"'max_tokens' ({max_tokens}) and 'max_completion_tokens' ({also}) disagree; they mean the "
                         "same here: give one", "max_completion_tokens")
    max_tokens = also if max_tokens is None else max_tokens
    stop = [request.stop] if isinstance(request.stop, str) else request.stop or []
    settings = Settings(max_tokens=default_max if max_tokens is None else max_tokens,
                        temperature=_default(request.temperature, 1.0), top_p=_default(request.top_p, 1.0),
                        top_k=request.top_k or 0, stop=tuple(s for s in stop if s), seed=request.seed)
    return settings, n


def _default(value, default):
    return default if value is None else value


def _text(text: str, param: str) -> str:
    """`text` if it can be encoded (JSON may carry a lone surrogate such as "\\ud800"), else 400."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(f"'{param}' holds {e.object[e.start:e.end]!r}, a lone surrogate (not a character); send "
                         "valid Unicode text", param) from None
    return text


class Api:
    def __init__(self, engine: Engine, model_name: str, moderator: Optional[Moderator] = None,
                 moderate: tuple = ("prompts", "outputs"), access_log: bool = True):
        self.engine, self.model_name, self.access_log = engine, model_name, access_log
        self.moderator = moderator
        self.gate_prompts = moderator is not None and "prompts" in moderate
        self.gate_outputs = moderator is not None and "outputs" in moderate
        self.moderator_name = moderator.name if moderator is not None else None
        self.tokenizer, self.max_len = engine.tokenizer, engine.max_len
        self.vocab = engine.config.vocab_size
        self.CompletionRequest, self.ChatRequest = schema.requests(self.vocab, self.max_len)
        self.compilations = 0
        self.metrics = Metrics()

    async def _body(self, request: Request, model: type[BaseModel], refused: dict,
                    model_name: Optional[str] = None) -> BaseModel:
        try:
            body = json.loads(await request.body(), object_pairs_hook=_unique_keys)
        except ClientDisconnect:  # nobody to answer: no traceback either
            raise BadRequest("the client closed the connection before the whole body arrived") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON ({e})") from None
        except RecursionError:
            raise BadRequest("the request body nests too deeply; no field of this API nests more than 3 levels") \
                from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        parsed = _validated(model, body, refused)
        served = model_name or self.model_name
        if parsed.model is not None and parsed.model != served:
            raise BadRequest(f"model {json.dumps(parsed.model)[:60]} is not served here; use {served!r}"
                             + ("" if model_name else " (GET /v1/models)"), "model")
        return parsed

    def _prompts(self, prompt) -> list[list[int]]:
        """A string, a list of token ids, or a list of strings and token-id lists -> id lists."""
        prompts = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else prompt
        out = [self.tokenizer.encode(_text(p, "prompt")) if isinstance(p, str) else list(p) for p in prompts]
        return [ids or [self.tokenizer.eos_id] for ids in out]

    def _fits(self, prompts, settings: Settings) -> None:
        for i, ids in enumerate(prompts):
            if len(ids) >= self.max_len:
                raise BadRequest(f"prompt {i} has {len(ids)} tokens; the context holds {self.max_len} (prompt plus "
                                 "max_tokens): shorten it", "prompt", code="context_length_exceeded")
            if len(ids) + settings.max_tokens > self.max_len:
                raise BadRequest(f"'max_tokens' is {settings.max_tokens}, but prompt {i} has {len(ids)} tokens and "
                                 f"the context holds {self.max_len}: use max_tokens <= {self.max_len - len(ids)}",
                                 "max_tokens", code="context_length_exceeded")

    # --- endpoints --------------------------------------------------------------------------------
    async def completions(self, request: Request):
        body = await self._body(request, self.CompletionRequest, REFUSED)
        settings, n = _settings(body, default_max=16)
        prompts = await asyncio.to_thread(self._prompts, body.prompt)  # the event loop serves others meanwhile
        self._fits(prompts, settings)
        if self.gate_prompts:
            texts = await asyncio.to_thread(lambda: [self.tokenizer.decode(ids) for ids in prompts])
            await self._gate(texts, "prompt", "prompt")
        if body.echo and body.stream:
            raise BadRequest("'echo' with 'stream' is not supported; ask for one of them", "echo")
        if body.logprobs is not None and body.stream:
            raise BadRequest("'logprobs' with 'stream' is not supported; ask for one of them", "logprobs")
        if len(prompts) * n > MAX_N:
            raise BadRequest(f"{len(prompts)} prompts x n={n} is {len(prompts) * n} choices; at most {MAX_N}", "n")
        seqs = [Sequence(ids, settings, None, choice=j, echo_logprobs=bool(body.echo) and body.logprobs is not None)
                for ids in prompts for j in range(n)]
        return await self._respond(request, seqs, body, "cmpl", "text_completion",
                                   lambda seq: self._choice_text(seq, bool(body.echo), body.logprobs))

    async def chat(self, request: Request):
        body = await self._body(request, self.ChatRequest, CHAT_REFUSED)
        settings, n = _settings(body, default_max=256)
        settings.stop = settings.stop + (STOP,)  # the chat template's next user turn
        text = _text(render_prompt([m.model_dump() for m in body.messages]), "messages")
        if self.gate_prompts:
            await self._gate([m.content for m in body.messages if m.role == "user"], "messages", "user message")
        ids = await asyncio.to_thread(self.tokenizer.encode, text)  # the event loop serves others meanwhile
        if body.max_tokens is None and body.max_completion_tokens is None:
            settings.max_tokens = min(settings.max_tokens, max(self.max_len - len(ids), 0))
        self._fits([ids], settings)
        seqs = [Sequence(ids, settings, None, choice=j) for j in range(n)]
        return await self._respond(request, seqs, body, "chatcmpl", "chat.completion",
                                   lambda seq: {"message": {"role": "assistant", "content": shown(seq).lstrip()},
                                                "logprobs": None}, chat=True)

    async def _respond(self, request, seqs, body, prefix, kind, choice_of, chat=False):
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
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(self._events(seqs, queue, head, kind, chat, include_usage, head_start),
                                     media_type="text/event-stream")
        done, events, pending = 0, self._gated(seqs, queue), None
        try:
            while done < len(seqs):
                pending = pending or asyncio.ensure_future(anext(events))  # kept across timeouts, never cancelled
                if not (await asyncio.wait({pending}, timeout=0.5))[0]:
                    if await request.is_disconnected():
                        return JSONResponse({}, status_code=499)
                    continue
                (_, event), pending = pending.result(), None
                done += "finish_reason" in event
        finally:
            if pending is not None:
                pending.cancel()
            self.engine.cancel([s for s in seqs if s.finish_reason is None])
            self._access_log(head["id"], seqs, head_start)
        choices = await asyncio.to_thread(  # detokenising (echo, logprobs) off the event loop too
            lambda: [{"index": i, **choice_of(s), "finish_reason": s.finish_reason} for i, s in enumerate(seqs)])
        return JSONResponse({**head, "object": kind, "choices": choices, "usage": _usage(seqs)})

    async def _events(self, seqs, queue, head, kind, chat, include_usage, opened):
        kind = kind + ".chunk" if chat else kind
        started, texted = set(), set()
        done = 0
        sse = lambda obj: f"data: {json.dumps(obj)}\n\n"
        events = self._gated(seqs, queue)
        try:
            while done < len(seqs):
                index, event = await anext(events)
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

    async def moderations(self, request: Request):
        """OpenAI's /v1/moderations: per input, flagged, and each unsafe label's score and verdict."""
        body = await self._body(request, schema.ModerationRequest, {}, model_name=self.moderator_name)
        texts = [body.input] if isinstance(body.input, str) else body.input
        results = await asyncio.to_thread(self.moderator.score, [_text(t, "input") for t in texts])
        return {"id": f"modr-{uuid.uuid4().hex[:24]}", "model": self.moderator_name,
                "results": [self.moderator.openai_result(r) for r in results]}

    async def _gate(self, texts: list[str], param: str, noun: str) -> None:
        """A 400 (code content_filter) if the moderation gate flags any of `texts`."""
        for i, result in enumerate(await asyncio.to_thread(self.moderator.score, texts)):
            if result["flagged"]:
                raise BadRequest(f"{noun} {i} was refused by the moderation gate (flag score "
                                 f"{result['flag_score']:.2f} > {self.moderator.threshold}); rephrase it", param,
                                 code="content_filter")

    async def _gated(self, seqs, queue):
        """The engine's (index, event)s. With outputs moderated, a choice's new text is held until the
        text so far passes the gate (checked every GATE_CHARS characters and at the end); a choice
        the gate flags is cancelled and ends with finish_reason "content_filter", its text cut
        before the flagged piece."""
        held = [""] * len(seqs)
        while True:
            index, event = await queue.get()
            seq = seqs[index]
            if not self.gate_outputs:
                yield index, event
                continue
            if seq.shown is not None and seq.finish_reason == "content_filter":
                continue  # a cut choice's last events, already in the queue
            if "text" in event:
                held[index] += event["text"]
                if len(held[index]) < GATE_CHARS:
                    continue
            if held[index]:
                passed = "".join(seq.gated) + held[index]
                if (await asyncio.to_thread(self.moderator.score, [passed]))[0]["flagged"]:
                    self.engine.cancel([seq])
                    seq.finish_reason, seq.shown = "content_filter", "".join(seq.gated)
                    yield index, {"finish_reason": "content_filter"}
                    continue
                seq.gated.append(held[index])
                yield index, {"text": held[index], "tokens": len(seq.tokens)}
                held[index] = ""
            if "finish_reason" in event:
                yield index, event

    def _access_log(self, request_id: str, seqs, started: float) -> None:
        """/metrics, and unless turned off one line per request (id, tokens in and out, seconds, each
        choice's finish reason)."""
        usage, seconds = _usage(seqs), time.perf_counter() - started
        self.metrics.finished(usage["prompt_tokens"], usage["completion_tokens"], seconds)
        if not self.access_log:
            return
        reasons = ",".join(str(s.finish_reason or "cancelled") for s in seqs)
        print(f"request {request_id}: {usage['prompt_tokens']} tokens in, {usage['completion_tokens']} out, "
              f"{seconds:.2f}s, finish {reasons}", flush=True)

    def _choice_text(self, seq: Sequence, echo: bool, logprobs: Optional[int]) -> dict:
        prompt_text = self.tokenizer.decode(seq.prompt) if echo else ""
        out: dict[str, Any] = {"text": prompt_text + shown(seq), "logprobs": None}
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
        # where each token's text starts in the returned text, in characters: the length of the text of
        # the tokens before it (a token that ends inside a character starts its successor at that character)
        # (without echo the completion's offsets start at the prompt's length, as OpenAI's do)
        before, offsets, offset = [] if echo else seq.prompt, [], None
        whole = self.tokenizer.decode(before + tokens)
        for j, text in enumerate(strings):
            if offset is None:  # at the start, or after a piece that was part of a character: count again
                offset = len(os.path.commonprefix([self.tokenizer.decode(before + tokens[:j]), whole]))
            offsets.append(offset)
            offset = offset + len(text) if "\ufffd" not in text else None
        out["logprobs"] = {"tokens": strings, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
        return out


def shown(seq: Sequence) -> str:
    """The text a client got: all of it, or up to where the moderation gate cut it."""
    return seq.stream.text if seq.shown is None else seq.shown


def _usage(seqs) -> dict:
    prompt = sum(len(s.prompt) for s in seqs if s.choice == 0)  # each prompt once, however many choices
    completion = sum(len(s.tokens) for s in seqs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Guard:
    """ASGI middleware in front of the app: a body over `max_bytes` is 413 before it is read (by its
    Content-Length, or as it arrives), and with an `api_key` every /v1 request needs
    "Authorization: Bearer <key>" (compared in constant time), else 401. Every response is counted
    for /metrics."""

    def __init__(self, app, max_bytes: int, api_key: Optional[str], metrics: Metrics, access_log: bool = True):
        self.app, self.max_bytes, self.api_key, self.metrics = app, max_bytes, api_key, metrics
        self.access_log = access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in PATHS else "other"  # labels bounded whatever clients send

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.request(path, message["status"])
                if message["status"] >= 400 and self.access_log:  # answered ones log their own line (Api)
                    print(f"request refused: {scope['method']} {path} {message['status']}", flush=True)
            await send(message)

        await self._guarded(scope, receive, counted)

    async def _guarded(self, scope, receive, send):
        headers = dict(scope["headers"])
        if self.api_key and scope["path"].startswith("/v1"):
            scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").strip().partition(" ")
            # the scheme is case-insensitive (RFC 7235); the key is compared in constant time
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
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
    body = error_body(e)
    await send({"type": "http.response.start", "status": e.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


ERRORS = {400: "a field at fault, named in `param`", 401: "no or a wrong API key (a server started with one)",
          413: "a body over --max_request_bytes", 429: "the queue is full; retry later"}


def _answers(model: type[BaseModel], *statuses: int, chunk: Optional[type[BaseModel]] = None) -> dict:
    """A route's documented responses: `model` for 200 (or, streamed, events whose data is a `chunk`
    as JSON, then "[DONE]"), and errors in OpenAI's shape."""
    ok: dict = {"model": model}
    if chunk is not None:
        data = {"type": "string", "contentMediaType": "application/json",
                "contentSchema": {"$ref": f"#/components/schemas/{chunk.__name__}"}}
        event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}},
                 "if": {"properties": {"data": {"const": "[DONE]"}}}, "else": {"properties": {"data": data}}}
        ok["content"] = {"text/event-stream": {"schema": event}}
        ok["description"] = "the answer, or with stream: true server-sent events of its pieces"
    return {200: ok, **{s: {"model": schema.ErrorResponse, "description": ERRORS[s]} for s in statuses}}


def build_app(engine: Engine, model_name: str, max_request_bytes: int = MAX_REQUEST_BYTES,
              api_key: Optional[str] = None, moderator: Optional[Moderator] = None,
              moderate: tuple = ("prompts", "outputs"), access_log: bool = True) -> FastAPI:
    """The app (`access_log`: a line per request on stdout); with a `moderator`, the gate applies to
    what `moderate` names ("prompts" refused with 400 code content_filter, "outputs" cut with
    finish_reason content_filter) and /v1/moderations scores texts. Without one, nothing of the
    gate exists."""
    app = FastAPI(title="neojax", version=__version__, docs_url=None, redoc_url=None,
                  description=f"An OpenAI-compatible API serving {model_name}.")
    api = Api(engine, model_name, moderator, moderate, access_log)
    app.state.api = api
    app.add_middleware(Guard, max_bytes=max_request_bytes, api_key=api_key, metrics=api.metrics,
                       access_log=access_log)
    keyed = (401,) if api_key else ()

    @app.exception_handler(BadRequest)
    async def bad_request(_, e: BadRequest):
        return _error(e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # 404, 405, ... in OpenAI's shape
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        text = f"{request.method} {request.url.path}: {e.detail}" + (
            "; endpoints: /v1/completions, /v1/chat/completions, /v1/models, /health, /" if e.status_code in (404, 405)
            else "")
        response = _error(BadRequest(text, status=e.status_code, kind=kind))
        response.headers.update(e.headers or {})  # 405's Allow
        return response

    @app.get("/v1/models", responses=_answers(schema.ModelList, *keyed))
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "neojax",
                                            "max_model_len": engine.max_len}]}

    @app.get("/health", responses=_answers(schema.Health))
    async def health():
        return {"status": "ok", "model": model_name, **engine.busy(), "compilations": api.compilations}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(api.metrics.render(engine.busy()), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions", responses=_answers(schema.Completion, 400, *keyed, 413, 429,
                                                                chunk=schema.CompletionChunk))
    async def completions(request: Request):
        return await api.completions(request)

    @app.post("/v1/chat/completions", responses=_answers(schema.ChatCompletion, 400, *keyed, 413, 429,
                                                                     chunk=schema.ChatCompletionChunk))
    async def chat(request: Request):
        return await api.chat(request)

    if moderator is not None:
        @app.post("/v1/moderations", responses=_answers(schema.Moderation, 400, *keyed, 413))
        async def moderations(request: Request):
            return await api.moderations(request)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        with open(PAGE, encoding="utf-8") as f:
            return HTMLResponse(f.read().replace("{{MODEL}}", model_name).replace("{{CONTEXT}}", str(engine.max_len)))

    app.openapi = functools.partial(_openapi, app, api, moderator is not None, bool(api_key))
    return app


def _openapi(app: FastAPI, api: "Api", moderated: bool, keyed: bool) -> dict:
    """FastAPI's document, with the request bodies the endpoints validate by hand (their models are
    built for this model's vocabulary and context, so the bounds are this server's)."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        bodies = {"/v1/completions": api.CompletionRequest, "/v1/chat/completions": api.ChatRequest,
                  **({"/v1/moderations": schema.ModerationRequest} if moderated else {})}
        # the chunks are named only inside the event schemas, so FastAPI does not list them
        for model in (schema.CompletionChunk, schema.ChatCompletionChunk, *bodies.values()):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(body.pop("$defs", {}))
            schemas[model.__name__] = body
        for path, model in bodies.items():
            doc["paths"][path]["post"]["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        if keyed:
            doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, operations in doc["paths"].items():
                for operation in operations.values() if path.startswith("/v1") else ():
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = doc
    return app.openapi_schema
