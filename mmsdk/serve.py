"""`mmsdk serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over one loaded `Assistant`.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/audio/transcriptions. Every model call runs on the scheduler's worker thread
(`serve_scheduler`); the HTTP side only parses, waits and formats. Errors use OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`: 400 bad input, 401 wrong key, 404 unknown model,
413 oversized body, 503 queue full; an unexpected failure is a 500 without a traceback.
"""
import asyncio
import base64
import binascii
import json
import logging
import re
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict
from sse_starlette import EventSourceResponse

from .errors import ContextLengthError, MMSDKError
from .options import check_sampling
from .decoder.batch import StepBatcher
from .serve_scheduler import Job, QueueFull, Scheduler
from .speech import transcribe

log = logging.getLogger(__name__)

SPEECH_MODEL = "whisper-base"
MAX_BODY = 32 * 2**20


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type_: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or {401: "authentication_error", 404: "invalid_request_error", 413: "invalid_request_error",
                              503: "server_error", 500: "server_error"}.get(status, "invalid_request_error")


def _error_response(status: int, message: str, type_: str, param=None, code=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


# ---- request bodies (OpenAI's names; unknown fields are ignored, as OpenAI-compatible servers do) --------
class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatRequest(_Body):
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # beyond OpenAI, as llama-server and vLLM take them
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    n: int = 1
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None


class CompletionRequest(_Body):
    model: str
    prompt: str | list[str]
    max_tokens: int | None = 16  # OpenAI's default for this endpoint
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = 1
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


# ---- the app ---------------------------------------------------------------------------------------
class Server:
    """What the endpoints share: the assistant, the scheduler, the embedder and the served names."""

    def __init__(self, asst, *, api_key: str | None = None, max_concurrency: int = 4, max_queue: int = 16,
                 allow_files: str | None = None, embedder=None, prefix_cache_bytes: int = 256 * 2**20):
        from .decoder.prefix_cache import PrefixCache
        from .embedder import default_embedder

        self.asst, self.api_key = asst, api_key
        self.allow_files = Path(allow_files).resolve() if allow_files else None
        # The streams' decode steps run batched: one pass through the layers serves every active stream
        self.batcher = StepBatcher(asst.model)
        self.scheduler = Scheduler(max_concurrency, max_queue, batcher=self.batcher)
        # The embedder and the bundled speech model are models of their own: a second worker runs them,
        # so a long transcription does not stall the streams on the first
        self.side = Scheduler(1, max_queue)
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.embedder = embedder or default_embedder()
        self.model_id = re.sub(r"[^a-z0-9.]+", "-", asst.info.name.lower()).strip("-")  # "Gemma 3 270m": gemma-3-270m
        self.embedding_id = getattr(self.embedder, "name", "embedder")
        self.created = int(time.time())
        self.warming = threading.Thread(target=self._warm, name="mmsdk-serve-warm", daemon=True)
        self.warming.start()

    def _warm(self) -> None:
        """Load the embedder and the speech model beside the first requests, so the first embeddings or
        transcription request does not hold up every stream on the worker while it loads; and build
        the grammar tokenizer tools and JSON requests constrain with (~91 MB, 1.5-8 s for Gemma's 262k
        tokens, AMD Zen 3): built by the first such request, it stalled every stream taking turns with it."""
        from .constrained import closing_tokens, llg_tokenizer

        try:
            llg_tokenizer(self.asst.tokenizer)
            closing_tokens(self.asst.tokenizer)
            self.embedder(["warm"])
            if "audio" not in self.asst.info.modalities:
                from .speech import _whisper

                _whisper(1)  # as the transcriptions endpoint asks for it
        except Exception as e:  # noqa: BLE001 - a request that needs it reports the failure itself
            log.warning("could not preload the grammar tokenizer, the embedder or the speech model: %s", e)

    def check_model(self, name: str, kind: str) -> None:
        allowed = {"chat": [self.model_id], "embeddings": [self.embedding_id],
                   "transcription": [SPEECH_MODEL, self.model_id]}[kind]
        if name not in allowed:
            raise ApiError(404, f"model {name!r} is not served here for {kind}; use {' or '.join(map(repr, allowed))}",
                           "model", code="model_not_found")

    async def run(self, start, side: bool = False) -> Job:
        """Queue `start` (called on the worker, or the `side` worker) and wait for its first event, so a
        bad request fails with its status before any response is sent. Returns the job with that event
        put back."""
        job = Job(start, asyncio.get_running_loop())
        try:
            (self.side if side else self.scheduler).submit(job)
        except QueueFull as e:
            raise ApiError(503, str(e), code="queue_full") from None
        try:
            first = await job.next_event()
        except asyncio.CancelledError:
            job.cancel()
            raise
        if first[0] == "error":
            raise first[1]
        job.put_back(first)
        return job


def create_app(asst, **kw) -> FastAPI:
    server = Server(asst, **kw)
    app = FastAPI(title="mmsdk", docs_url=None, redoc_url=None)
    app.state.server = server

    app.add_middleware(RequireKey, server=server)

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return _error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error_response(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}",
                               "invalid_request_error", where)

    @app.exception_handler(MMSDKError)
    async def bad_input(_, e: MMSDKError):  # InputError, ContextLengthError, UnsupportedModalityError
        return _error_response(400, " ".join(str(e).split()), "invalid_request_error",
                               code="context_length_exceeded" if isinstance(e, ContextLengthError) else None)

    @app.exception_handler(ValueError)
    async def bad_value(_, e: ValueError):
        return _error_response(400, " ".join(str(e).split()), "invalid_request_error")

    @app.exception_handler(Exception)
    async def unexpected(_, e: Exception):
        log.exception("unexpected error")
        return _error_response(500, f"internal error ({type(e).__name__}); see the server's log", "server_error")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": server.model_id, "warming": server.warming.is_alive(),
                **server.scheduler.stats(), "batched": {"passes": server.batcher.passes, "steps": server.batcher.rows},
                "prefix_cache": server.prefix_cache.stats() if server.prefix_cache is not None else None}

    @app.get("/v1/models")
    async def models():
        ids = [server.model_id, server.embedding_id, SPEECH_MODEL]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": server.created,
                                            "owned_by": "mmsdk"} for i in ids]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        server.check_model(req.model, "chat")
        kw = _chat_kwargs(req, server)
        job = await server.run(lambda: _chat_job(server.asst, kw, server.prefix_cache, server.batcher))
        created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return EventSourceResponse(_stream_chat(job, server.model_id, cid, created, usage), ping=15)
        return _chat_response(await _collect(job), server.model_id, cid, created)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        server.check_model(req.model, "chat")
        prompt = _completion_prompt(req)
        max_tokens = req.max_tokens if req.max_tokens is not None else 16
        stop, sampling = _stops(req.stop), _sampling(req)
        check_sampling(sampling, max_tokens)
        job = await server.run(lambda: _completion_job(server.asst, prompt, max_tokens, stop, sampling, server.batcher,
                                                       server.prefix_cache))
        created, cid = int(time.time()), f"cmpl-{uuid.uuid4().hex[:24]}"
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return EventSourceResponse(_stream_completion(job, server.model_id, cid, created, usage), ping=15)
        out = await _collect(job)
        return {"id": cid, "object": "text_completion", "created": created, "model": server.model_id,
                "choices": [{"index": 0, "text": out["text"], "finish_reason": out["finish_reason"],
                             "logprobs": None}], "usage": _usage(out)}

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest):
        server.check_model(req.model, "embeddings")
        if req.dimensions is not None:
            raise ApiError(400, "dimensions is not supported: the embedder's vectors have a fixed size", "dimensions")
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be a non-empty string or list of strings (token ids are not taken)",
                           "input")
        if any(not t for t in texts):
            raise ApiError(400, "input must not hold empty strings", "input")
        job = await server.run(lambda: _embed_job(server.embedder, texts), side=True)
        vectors, tokens = (await _collect(job))["item"]
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
                 if req.encoding_format == "base64" else v.tolist()}
                for i, v in enumerate(np.asarray(vectors, dtype=np.float32))]
        return {"object": "list", "data": data, "model": server.embedding_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(file: UploadFile = File(...), model: str = Form(...), language: str | None = Form(None),
                             response_format: str = Form("json"), prompt: str | None = Form(None),
                             temperature: float | None = Form(None)):
        server.check_model(model, "transcription")
        if response_format not in ("json", "text", "verbose_json"):
            raise ApiError(400, f"response_format must be 'json', 'text' or 'verbose_json', got {response_format!r}",
                           "response_format")
        data = await file.read()
        if not data:
            raise ApiError(400, "file is empty", "file")
        if "audio" in server.asst.info.modalities:  # a Gemma 3n transcribes with the model itself, on its worker
            job = await server.run(lambda: iter([server.asst.transcribe_audio(data, language=language)]))
        else:  # one thread beside the model's: two would fight it for the cores
            job = await server.run(lambda: iter([transcribe(data, language=language, threads=1)]), side=True)
        t = (await _collect(job))["item"]
        if response_format == "text":
            return PlainTextResponse(t.text)
        if response_format == "json":
            return {"text": t.text}
        segments = [{"id": i, "start": s, "end": e, "text": text} for i, (s, e, text) in enumerate(t.segments)]
        return {"task": "transcribe", "language": language, "duration": segments[-1]["end"] if segments else 0.0,
                "text": t.text, "segments": segments}

    return app


class RequireKey:
    """401 for a /v1/ request without the server's API key (when it has one). Plain ASGI, as `LimitBody`:
    an `@app.middleware("http")` function passes every chunk of a streamed reply through a task and a
    memory stream of its own, a quarter of the event loop's time per streamed token."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        key = self.server.api_key
        if scope["type"] == "http" and key is not None and scope["path"].startswith("/v1/"):
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not secrets.compare_digest(given, f"Bearer {key}".encode()):
                response = _error_response(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                                           "authentication_error", code="invalid_api_key")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class LimitBody:
    """413 for a body over `limit` bytes, before the app reads it: by its Content-Length, or, sent
    without one (chunked), as it arrives (then held and replayed to the app)."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = dict(scope["headers"]).get(b"content-length")
        if size is not None:
            if size.isdigit() and int(size) > self.limit:
                return await self._reject(int(size), scope, receive, send)
            return await self.app(scope, receive, send)
        messages, seen = [], 0
        while True:  # no Content-Length: read up to the limit
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await self._reject(seen, scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, size, scope, receive, send):
        response = _error_response(413, f"request body is {size} bytes or more; the most this server takes is "
                                        f"{self.limit}", "invalid_request_error", code="request_too_large")
        await response(scope, receive, send)


# ---- chat ------------------------------------------------------------------------------------------------
def _sampling(req) -> dict:
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(req, name, None):
            raise ApiError(400, f"{name} is not supported; use repetition_penalty (> 1 discourages repeats)", name)
    if getattr(req, "n", 1) != 1:
        raise ApiError(400, f"n must be 1 (one choice per request), got {req.n}", "n")
    out = {"temperature": 1.0 if req.temperature is None else req.temperature}  # OpenAI's default
    for name in ("top_p", "top_k", "min_p", "repetition_penalty", "seed"):
        if getattr(req, name) is not None:
            out[name] = getattr(req, name)
    return out


def _stops(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise ApiError(400, f"stop takes at most 4 strings, got {len(stops)}", "stop")
    return stops


def _chat_kwargs(req: ChatRequest, server: Server) -> dict:
    """`Assistant._chat_run`'s arguments from an OpenAI chat request (checked here, before queueing)."""
    if not req.messages:
        raise ApiError(400, "messages must hold at least one message", "messages")
    if req.logit_bias:
        raise ApiError(400, "logit_bias is not supported", "logit_bias")
    messages = [_message(m, i, server.allow_files) for i, m in enumerate(req.messages)]
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    tools = None
    if req.tools:
        bad = [t for t in req.tools if t.get("type") != "function" or not isinstance(t.get("function"), dict)]
        if bad:
            raise ApiError(400, f"each tool must be {{'type': 'function', 'function': {{...}}}}, got {bad[0]!r}",
                           "tools")
        tools = [t["function"] for t in req.tools]
    tool_choice = req.tool_choice or "auto"
    if isinstance(tool_choice, dict):
        tool_choice = (tool_choice.get("function") or {}).get("name")
        if not tool_choice:
            raise ApiError(400, "tool_choice must be 'auto', 'none', 'required' or "
                                "{'type': 'function', 'function': {'name': ...}}", "tool_choice")
    if not tools:
        tool_choice = "auto"  # OpenAI lets "none" go with no tools
    schema = None
    fmt = req.response_format or {"type": "text"}
    if fmt.get("type") == "json_object":
        schema = {"type": "object"}
    elif fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}",
                           "response_format")
    elif fmt.get("type") != "text":
        raise ApiError(400, f"response_format type must be 'text', 'json_object' or 'json_schema', got "
                            f"{fmt.get('type')!r}", "response_format")
    top = req.top_logprobs or 0
    if top and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    if not 0 <= top <= 20:
        raise ApiError(400, f"top_logprobs must be from 0 to 20, got {top}", "top_logprobs")
    ctx = server.asst.info.context_length
    sampling, stop = _sampling(req), _stops(req.stop)
    check_sampling(sampling, ctx if max_tokens is None else max_tokens)  # before queueing: a bad value never waits
    return {"messages": messages, "tools": tools, "schema": schema, "tool_choice": tool_choice, "constrained": True,
            "processors": (), "max_tokens": ctx if max_tokens is None else max_tokens, "stop": stop,
            "pan_and_scan": True, "logprobs": req.logprobs, "top_logprobs": top, "sampling": sampling}


def _message(m: dict, i: int, allow_files: Path | None) -> dict:
    """An OpenAI message as `Assistant.chat` takes it: media parts decoded to bytes (or an allowed path)."""
    role = m.get("role")
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant", "tool"):
        raise ApiError(400, f"messages[{i}].role must be system, developer, user, assistant or tool, got {role!r}",
                       f"messages[{i}].role")
    content = m.get("content")
    if content is None:
        content = ""
    if isinstance(content, list):
        content = [_part(p, f"messages[{i}].content[{j}]", allow_files) for j, p in enumerate(content)]
        if role in ("system", "tool", "assistant") and all(p.get("type") == "text" for p in content):
            content = "".join(p["text"] for p in content)
    elif not isinstance(content, str):
        raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", f"messages[{i}].content")
    out = {"role": role, "content": content}
    if role == "assistant" and m.get("tool_calls"):
        out["tool_calls"] = m["tool_calls"]
    if role == "user" and content == "":
        raise ApiError(400, f"messages[{i}] is an empty user message", f"messages[{i}].content")
    return out


def _part(p, where: str, allow_files: Path | None) -> dict:
    kind = p.get("type") if isinstance(p, dict) else None
    if kind == "text":
        if not isinstance(p.get("text"), str):
            raise ApiError(400, f"{where}.text must be a string", where)
        return {"type": "text", "text": p["text"]}
    if kind == "image_url":
        url = (p.get("image_url") or {}).get("url") if isinstance(p.get("image_url"), dict) else p.get("image_url")
        if not isinstance(url, str):
            raise ApiError(400, f"{where}.image_url.url must be a string", where)
        if url.startswith("data:"):
            return {"type": "image", "image": _data_url(url, where)}
        return {"type": "image", "image": _allowed_file(url, where, allow_files)}
    if kind == "input_audio":
        audio = p.get("input_audio") or {}
        if not isinstance(audio.get("data"), str):
            raise ApiError(400, f"{where}.input_audio.data must be base64 audio (wav or mp3)", where)
        return {"type": "audio", "audio": _b64(audio["data"], where)}
    raise ApiError(400, f"{where}: unknown part type {kind!r}; expected text, image_url or input_audio", where)


def _data_url(url: str, where: str) -> bytes:
    head, _, data = url.partition(",")
    if not head.endswith(";base64") or not data:
        raise ApiError(400, f"{where}: a data URL must be 'data:<type>;base64,<data>'", where)
    return _b64(data, where)


def _b64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: not valid base64", where) from None


def _allowed_file(url: str, where: str, allow_files: Path | None) -> str:
    if url.startswith(("http://", "https://")):
        raise ApiError(400, f"{where}: remote URLs are not fetched; send the image as a data URL", where)
    path = url.removeprefix("file://")
    if allow_files is None:
        raise ApiError(400, f"{where}: local files are read only when the server runs with --allow-files DIR; "
                            "send the image as a data URL", where)
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(allow_files) or not resolved.is_file():
        raise ApiError(400, f"{where}: {path!r} is not a file under the allowed folder {str(allow_files)!r}", where)
    return str(resolved)


def _chat_job(asst, kw: dict, prefix_cache, batcher):
    """On the worker: one chat generation, an item per token, then the parsed end."""
    run, plan, recorder = asst._chat_run(**kw)
    run.model = batcher.view()
    # A long prompt a chunk per turn (the other streams keep flowing), from the longest prefix kept
    yield from run.prefill_ahead(prefix_cache=prefix_cache)
    streaming_text = not plan.specs  # tool calls are parsed from the whole text at the end
    given, pieces = 0, []
    for step in run.steps():
        entries = recorder.finish(run.generated)[given:] if recorder else []
        given += len(entries)
        pieces.append(step.text)
        yield {"text": step.text if streaming_text else "", "logprobs": entries}
    reason = run.finish_reason
    text, calls, _ = plan.finish("".join(pieces), reason) if plan.specs else (None, [], None)
    yield {"end": True, "finish_reason": "tool_calls" if calls else reason, "tool_calls": calls,
           "text": None if streaming_text else text, "prompt_tokens": run.prompt_tokens,
           "completion_tokens": len(run.generated)}


def _embed_job(embedder, texts: list[str]):
    vectors = embedder(texts)
    tokenizer = getattr(getattr(embedder, "_model", None), "tokenizer", None)  # sentence-transformers' own
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts) if tokenizer else sum(len(t.split()) for t in texts)
    yield vectors, tokens


def _completion_prompt(req: CompletionRequest) -> str:
    if req.echo or req.suffix or req.logprobs:
        name = "echo" if req.echo else "suffix" if req.suffix else "logprobs"
        raise ApiError(400, f"{name} is not supported on /v1/completions", name)
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(400, "prompt must be one string (a list of several is not batched here)", "prompt")
        prompt = prompt[0]
    if not prompt:
        raise ApiError(400, "prompt must not be empty", "prompt")
    return prompt


def _completion_job(asst, prompt: str, max_tokens: int, stop: list[str], sampling: dict, batcher, prefix_cache):
    run = asst._prompt_run(prompt, max_tokens, stop, sampling)
    run.model = batcher.view()
    yield from run.prefill_ahead(prefix_cache=prefix_cache)
    for step in run.steps():
        yield {"text": step.text, "logprobs": []}
    yield {"end": True, "finish_reason": run.finish_reason, "tool_calls": [], "text": None,
           "prompt_tokens": run.prompt_tokens, "completion_tokens": len(run.generated)}


async def _collect(job: Job) -> dict:
    """A job's items gathered: text joined, logprobs listed, the end's fields (or the single item)."""
    out: dict = {"text": "", "logprobs": [], "item": None}
    while True:
        kind, value = await job.next_event()
        if kind == "end":
            return out
        if kind == "error":
            raise value
        if isinstance(value, dict) and value.get("end"):
            text = value.pop("text")
            out.update(value)
            if text is not None:
                out["text"] = text
        elif isinstance(value, dict) and "text" in value:
            out["text"] += value["text"]
            out["logprobs"] += value["logprobs"]
        else:
            out["item"] = value


async def _events(job: Job):
    """A job's items until its end; a client that goes away cancels the job, which frees its sequence."""
    try:
        while True:
            kind, value = await job.next_event()
            if kind == "end":
                return
            if kind == "error":  # after the response began: the stream ends with an error event
                log.warning("stream failed: %s", value)
                yield {"error": value}
                return
            yield value
    finally:
        job.cancel()


def _stream_error(e: Exception) -> dict:
    message = " ".join(str(e).split()) if isinstance(e, (MMSDKError, ValueError)) else "internal error"
    return {"data": json.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": None}})}


def _usage(out: dict) -> dict:
    return {"prompt_tokens": out["prompt_tokens"], "completion_tokens": out["completion_tokens"],
            "total_tokens": out["prompt_tokens"] + out["completion_tokens"]}


def _tool_calls(calls) -> list[dict]:
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}} for c in calls]


def _logprobs(entries) -> dict | None:
    def one(e):
        return {"token": e.text, "logprob": e.logprob, "bytes": list(e.text.encode())}

    return {"content": [{**one(e), "top_logprobs": [one(t) for t in e.top]} for e in entries]}


def _chat_response(out: dict, model: str, cid: str, created: int) -> dict:
    calls = out["tool_calls"]
    message = {"role": "assistant", "content": out["text"] if not calls or out["text"] else None}
    if calls:
        message["tool_calls"] = _tool_calls(calls)
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": out["finish_reason"],
                         "logprobs": _logprobs(out["logprobs"]) if out["logprobs"] else None}],
            "usage": _usage(out)}


def _chunk(cid, created, model, delta=None, finish=None, logprobs=None, usage=None, choices=True) -> dict:
    c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
         "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": logprobs}]
         if choices else []}
    if usage is not None:
        c["usage"] = usage
    return {"data": json.dumps(c, ensure_ascii=False)}


async def _stream_chat(job: Job, model: str, cid: str, created: int, include_usage: bool):
    yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
    async for item in _events(job):
        if "error" in item:
            yield _stream_error(item["error"])
        elif item.get("end"):
            if item["tool_calls"]:
                calls = [{"index": i, **c} for i, c in enumerate(_tool_calls(item["tool_calls"]))]
                yield _chunk(cid, created, model, {"tool_calls": calls})
            elif item["text"]:
                yield _chunk(cid, created, model, {"content": item["text"]})
            yield _chunk(cid, created, model, finish=item["finish_reason"])
            if include_usage:
                yield _chunk(cid, created, model, usage=_usage(item), choices=False)
        elif item["text"] or item["logprobs"]:
            yield _chunk(cid, created, model, {"content": item["text"]},
                         logprobs=_logprobs(item["logprobs"]) if item["logprobs"] else None)
    yield {"data": "[DONE]"}


async def _stream_completion(job: Job, model: str, cid: str, created: int, include_usage: bool):
    def chunk(text="", finish=None, usage=None, choices=True):
        c = {"id": cid, "object": "text_completion", "created": created, "model": model,
             "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}] if choices else []}
        if usage is not None:
            c["usage"] = usage
        return {"data": json.dumps(c, ensure_ascii=False)}

    async for item in _events(job):
        if "error" in item:
            yield _stream_error(item["error"])
        elif item.get("end"):
            yield chunk(finish=item["finish_reason"])
            if include_usage:
                yield chunk(usage=_usage(item), choices=False)
        elif item["text"]:
            yield chunk(item["text"])
    yield {"data": "[DONE]"}


def serve(asst, *, host: str = "127.0.0.1", port: int = 8000, max_body: int = MAX_BODY, **kw) -> None:
    """Serve `asst` until interrupted; `kw` as `Server` takes them."""
    import uvicorn

    app = LimitBody(create_app(asst, **kw), max_body)
    log.warning("serving %s on http://%s:%d/v1", asst.info.name, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
