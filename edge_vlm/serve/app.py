"""The HTTP side of `edge-vlm serve`: Starlette routes over one ModelWorker.

    POST /v1/chat/completions   OpenAI's chat API (text + one image_url, multi-turn, stream=true as SSE)
    GET  /v1/models             the one model
    GET  /health                loaded, precision, provider, queue
    GET  /metrics               Prometheus text
    GET  /                      the live page; GET /live/events feeds it (server-sent events)

Every refusal is an OpenAI-shaped JSON error (errors.APIError) and leaves the server as it was. Requests are checked
completely (JSON, types, image bytes and pixels, prompt length, model name) before they take a place in the queue.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edge_vlm.serve import images
from edge_vlm.serve.errors import APIError, timeout_error
from edge_vlm.serve.metrics import CONTENT_TYPE, Metrics
from edge_vlm.serve.requests import Chat, parse_body
from edge_vlm.serve.worker import Job, ModelWorker, QueueFull

STATIC = Path(__file__).resolve().parent / "static"
# routes that answer without the API key: the page itself (it holds no data) and the liveness probe
OPEN_PATHS = ("/", "/health", "/favicon.ico")
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/live/events")
# the answer to a body that did not arrive in time: the connection is closed, not kept for the rest of that body (a
# 413 keeps it: uvicorn reads the rest, and a client still sending would otherwise lose the answer to a reset)
_CLOSE = {"Connection": "close"}
INLINE_IMAGE_CHARS = 128 * 1024  # data URLs up to this size are decoded on the event loop (~1 ms at most)


@dataclass
class Settings:
    model_id: str
    info: dict = field(default_factory=dict)  # backend, precision, provider... for /health
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    request_timeout_s: float = 120.0
    limits: images.ImageLimits = field(default_factory=images.ImageLimits)
    live_interval_s: float = 0.2

    @property
    def max_body_bytes(self) -> int:
        # one base64 image (4 characters per 3 bytes) plus room for the conversation's text
        return self.limits.max_bytes * 4 // 3 + 1024 * 1024


def create_app(worker: ModelWorker, settings: Settings, live=None) -> Starlette:
    """The ASGI app. `worker` must be started; `live` is an optional LiveView (its lifetime is the caller's)."""
    metrics = worker.metrics
    handlers = Handlers(worker, settings, live)
    routes = [
        Route("/", handlers.page),
        Route("/health", handlers.health),
        Route("/metrics", handlers.metrics),
        Route("/v1/models", handlers.models),
        Route("/v1/models/{model_id:path}", handlers.model),
        Route("/v1/chat/completions", handlers.chat, methods=["POST"]),
        Route("/live/events", handlers.live_events),
    ]
    middleware = [Middleware(Guard, api_key=settings.api_key, metrics=metrics)]
    if settings.cors_origins:
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                                        allow_methods=["GET", "POST"], allow_headers=["Authorization",
                                                                                       "Content-Type"]))
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={APIError: _api_error, HTTPException: _http_error,
                                        ClientDisconnect: _client_gone, Exception: _internal})
    # '/v1/chat/completions/' is no route: a 404 that names it, rather than a redirect built from the Host header
    app.router.redirect_slashes = False
    return app


# ---- errors -----------------------------------------------------------------------------------------------------------
def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _api_error(request: Request, exc: APIError) -> Response:
    return error_response(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return error_response(APIError(exc.status_code, message.get(exc.status_code, str(exc.detail)),
                                   code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)))


async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
    return Response(status_code=499)  # the client hung up while sending its request: nobody reads this


async def _internal(request: Request, exc: Exception) -> Response:
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return error_response(APIError(500, f"internal error: {type(exc).__name__}", code="internal_error"))


class Guard:
    """Pure ASGI middleware: the bearer-token check (constant-time compare) and the per-route request counter.
    (Pure ASGI rather than BaseHTTPMiddleware so that streamed responses and disconnects pass through untouched.)"""

    def __init__(self, app, api_key: str | None, metrics: Metrics | None):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ROUTES else ("/v1/models" if path.startswith("/v1/models/") else "other")
        status = {}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if self.key is not None and path not in OPEN_PATHS and scope["method"] != "OPTIONS" \
                    and not self._authorized(scope):
                error = APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                 code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await error_response(error)(scope, receive, counting_send)
            return await self.app(scope, receive, counting_send)
        finally:
            if self.metrics is not None:
                self.metrics.requests.labels(route, str(status.get("code", 499))).inc()

    def _authorized(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False


# ---- routes -----------------------------------------------------------------------------------------------------------
class Handlers:
    def __init__(self, worker: ModelWorker, settings: Settings, live):
        self.worker = worker
        self.settings = settings
        self.live = live
        self.created = int(time.time())
        self.page_html = (STATIC / "index.html").read_text(encoding="utf-8")

    async def page(self, request: Request) -> Response:
        return HTMLResponse(self.page_html, headers={"Cache-Control": "no-cache"})

    async def health(self, request: Request) -> Response:
        body = {"status": "ok", "model": self.settings.model_id, "loaded": True, **self.settings.info,
                "queue_depth": self.worker.depth, "busy": self.worker.busy,
                "image_cache": {"entries": len(self.worker.cache), "bytes": self.worker.cache.bytes,
                                "max_bytes": self.worker.cache.max_bytes},
                "stream": None if self.live is None else {"source": self.live.source.name,
                                                          "running": self.live.running}}
        return JSONResponse(body)

    async def metrics(self, request: Request) -> Response:
        return Response(self.worker.metrics.render(), media_type=CONTENT_TYPE)

    def _model_card(self) -> dict:
        return {"id": self.settings.model_id, "object": "model", "created": self.created, "owned_by": "edge-vlm"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self._check_model(request.path_params["model_id"])
        return JSONResponse(self._model_card())

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.settings.model_id:
            raise APIError(404, f"the model {name!r} does not exist here: this server runs "
                                f"{self.settings.model_id!r} (GET /v1/models)", code="model_not_found", param="model")

    # ---- chat ---------------------------------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        # the request's time starts now: a body that trickles in (or never ends) uses it up too
        deadline = time.monotonic() + self.settings.request_timeout_s
        chat = parse_body(await self._body(request, deadline))
        self._check_model(chat.model)
        blob = None
        if chat.image is not None:
            url = chat.image.url
            # a small picture is decoded right here (a hop to a thread would cost more than that); a large one or a
            # download goes to a thread, so that the event loop keeps serving the others
            small = url[:5].lower() == "data:" and len(url) <= INLINE_IMAGE_CHARS
            blob = self._image(chat) if small else await asyncio.to_thread(self._image, chat)
        prompt_tokens, max_new = self.worker.prompt_length(chat.question, chat.history, blob is not None,
                                                           chat.config.max_new_tokens)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def deliver(kind: str, payload) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, payload))
            except RuntimeError:  # the event loop is gone (server stopped): nobody is waiting
                pass

        timeout = self.settings.request_timeout_s
        job = Job(chat.question, chat.history, blob, chat.config, chat.stop, deliver,
                  deadline=deadline, timeout_s=timeout, prompt_tokens=prompt_tokens,
                  max_new_tokens=max_new, stream=chat.stream)
        try:
            self.worker.submit(job)
        except QueueFull:
            self.worker.metrics.outcome("queue_full")
            raise APIError(429, f"the server is busy: {self.worker.queue.maxsize} requests are already waiting "
                                "(--max-queue); retry shortly", code="queue_full", headers={"Retry-After": "1"}
                           ) from None
        reply = Reply(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), self.settings.model_id)
        if chat.stream:
            return StreamingResponse(self._sse(job, events, reply, chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._collect(request, job, events, reply)

    async def _body(self, request: Request, deadline: float) -> bytes:
        try:
            return await asyncio.wait_for(self._read_body(request), max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            raise APIError(408, "the request body did not arrive within the server's limit of "
                                f"{self.settings.request_timeout_s:g} s (--request-timeout)",
                           code="request_timeout", headers=_CLOSE) from None

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _body_too_large(limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _body_too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def _image(self, chat: Chat) -> images.ImageBlob:
        """Bytes -> blob, decoded unless the model already holds this picture's prefix (then the bytes were checked
        when it was first sent, and decoding again would only cost time)."""
        limits = self.settings.limits
        blob = images.blob(images.url_bytes(chat.image.url, limits, chat.image.param))
        if blob.digest not in self.worker.cache:
            blob.picture = images.decode(blob.data, limits, chat.image.param)
        return blob

    async def _collect(self, request: Request, job: Job, events: asyncio.Queue, reply: Reply) -> Response:
        """A non-streamed answer: wait for the job, or cancel it when the client goes away or time runs out."""
        answer = asyncio.ensure_future(_until_done(events))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            budget = job.deadline - time.monotonic() + 1.0  # the worker enforces the deadline; this is the backstop
            done, _ = await asyncio.wait({answer, gone}, timeout=max(budget, 0.0),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if answer not in done:
            answer.cancel()
            job.cancel()
            if gone in done:
                self.worker.metrics.outcome("client_disconnected")
                return Response(status_code=499)  # nobody reads it: the client left
            self.worker.metrics.outcome("timeout")
            raise timeout_error(job.timeout_s)
        kind, payload = answer.result()
        if kind == "error":
            raise payload
        return JSONResponse(reply.completion(payload))

    async def _sse(self, job: Job, events: asyncio.Queue, reply: Reply, chat: Chat):
        """OpenAI's streamed chat: a role chunk, content chunks, a finish chunk, [DONE]. Starlette cancels this
        generator when the client disconnects; `finally` then cancels the job so the model stops."""
        try:
            yield _event(reply.chunk({"role": "assistant", "content": ""}))
            while True:
                budget = job.deadline - time.monotonic() + 1.0
                try:
                    kind, payload = await asyncio.wait_for(events.get(), timeout=max(budget, 0.01))
                except asyncio.TimeoutError:
                    self.worker.metrics.outcome("timeout")
                    yield _event(timeout_error(job.timeout_s).body())
                    break
                if kind == "delta":
                    yield _event(reply.chunk({"content": payload}))
                elif kind == "done":
                    yield _event(reply.chunk({}, payload["finish_reason"], extension(payload)))
                    if chat.include_usage:
                        yield _event(reply.usage_chunk(payload))
                    break
                else:
                    yield _event(payload.body())
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()

    # ---- the live page ------------------------------------------------------------------------------------------------
    async def live_events(self, request: Request) -> Response:
        return StreamingResponse(self._live(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _live(self):
        """Until the server stops (an open page must not hold its shutdown up)."""
        live, sent_seq = self.live, None
        while not self.worker.closing:
            if live is None:
                yield _event({"running": False, "source": None})
                await self._sleep(2.0)
                continue
            state = live.snapshot()
            if state["frame_seq"] is not None and state["frame_seq"] != sent_seq:
                encoded = await asyncio.to_thread(live.frame_jpeg)
                if encoded is not None:
                    sent_seq = encoded[0]
                    state["frame"] = "data:image/jpeg;base64," + base64.b64encode(encoded[1]).decode()
            yield _event(state)
            await self._sleep(self.settings.live_interval_s)

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.worker.closing and time.monotonic() < end:
            await asyncio.sleep(min(0.1, seconds))


class Server(uvicorn.Server):
    """uvicorn's server, which also ends the model's jobs and the live page's streams as soon as it is told to stop:
    uvicorn waits for open connections to close before it exits, and these would not close on their own."""

    def __init__(self, config: uvicorn.Config, worker: ModelWorker):
        super().__init__(config)
        self.worker = worker

    def handle_exit(self, sig, frame) -> None:
        self.worker.begin_shutdown()
        super().handle_exit(sig, frame)


@dataclass
class Reply:
    id: str
    created: int
    model: str

    def completion(self, info: dict) -> dict:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": info["text"]},
                             "finish_reason": info["finish_reason"], "logprobs": None}],
                "usage": usage(info), "edge_vlm": extension(info)}

    def chunk(self, delta: dict, finish_reason: str | None = None, ext: dict | None = None) -> dict:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
        if ext is not None:
            body["edge_vlm"] = ext
        return body

    def usage_chunk(self, info: dict) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": usage(info)}


def usage(info: dict) -> dict:
    return {"prompt_tokens": info["prompt_tokens"], "completion_tokens": info["completion_tokens"],
            "total_tokens": info["prompt_tokens"] + info["completion_tokens"]}


def extension(info: dict) -> dict:
    """Our own fields, beside OpenAI's: where the time went (ms) and whether the image's prefix was reused."""
    return {"timings_ms": {k: round(v, 3) for k, v in info["timings_ms"].items()},
            "image_cached": info["image_cached"],
            "tokens_per_s": None if info["tokens_per_s"] is None else round(info["tokens_per_s"], 2)}


def _event(body: dict) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def _body_too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes (one image of "
                         "--max-image-bytes, base64-encoded, plus 1 MiB of text)", code="request_too_large")


async def _until_done(events: asyncio.Queue):
    while True:
        kind, payload = await events.get()
        if kind in ("done", "error"):
            return kind, payload


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read, so the next message is that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
