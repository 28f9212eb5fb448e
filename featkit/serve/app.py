"""The workbench's ASGI app (Starlette): routes translate HTTP to :class:`~featkit.serve.backend.Workbench` calls.

Safe by default: a request must name a local host (no DNS rebinding onto 127.0.0.1)
unless the server was started for another host, which then needs the token printed
at start (``?token=`` once, then a cookie; or ``Authorization: Bearer``). Files are
served by image id, only for rows of the collection; every failure is a JSON
``{"error": message}`` with a 4xx status, never a traceback.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from featkit.errors import FeatkitError
from featkit.serve.backend import BadImage, NotFound, Workbench

STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "featkit_token"
MAX_JSON_BYTES = 16 * 2**20  # an export of 100k ids is ~4 MB of JSON

log = logging.getLogger("featkit.serve")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Gate:
    """Host check (local servers) and token check (servers for another host), on every request."""

    def __init__(self, app: ASGIApp, *, token: str | None, local: bool) -> None:
        self.app = app
        self.token = token
        self.local = local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        try:
            host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
        except ValueError:  # a malformed Host header
            host = ""
        if self.local and host not in LOCAL_HOSTS:
            return await error(403, f"host {host!r} refused: this server only answers to 127.0.0.1 / localhost "
                                    "(start it with --host to serve other machines)")(scope, receive, send)
        if self.token is None:
            return await self.app(scope, receive, send)
        auth = request.headers.get("authorization", "")
        supplied = (request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
                    or (auth[7:] if auth.lower().startswith("bearer ") else ""))
        if not secrets.compare_digest(supplied.encode(), self.token.encode()):
            return await error(401, "this workbench needs the token printed when `featkit serve` started: open "
                                    "the URL it printed (…/?token=…)")(scope, receive, send)
        if request.query_params.get("token"):
            async def send_with_cookie(message):
                if message["type"] == "http.response.start":
                    cookie = f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                    message["headers"] = list(message.get("headers", [])) + [(b"set-cookie", cookie.encode())]
                await send(message)

            return await self.app(scope, receive, send_with_cookie)
        return await self.app(scope, receive, send)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) above ``limit`` bytes before it is read, and when its size is not declared."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise HTTPException(411, "send the body with a Content-Length header")
    if int(length) > limit:
        raise HTTPException(413, f"the body has {int(length):,} bytes; the limit is {limit:,}")
    return await request.body()


async def _json(request: Request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(415, "send JSON with Content-Type: application/json")
    try:
        body = json.loads(await _body(request, MAX_JSON_BYTES))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HTTPException(400, f"the body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise HTTPException(400, f"the body must be a JSON object, got {type(body).__name__}")
    return body


def create_app(workbench: Workbench, *, token: str | None = None, local: bool = True) -> Starlette:
    """The workbench app for ``workbench``; ``local`` answers only to local host names, ``token`` gates every request."""
    wb = workbench

    async def call(fn, *args, **kwargs) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(fn, *args, **kwargs))

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def meta(request: Request) -> Response:
        return await call(wb.meta)

    async def items(request: Request) -> Response:
        q = request.query_params
        return await call(wb.items, q.get("task"), q.get("key"))

    async def clusters(request: Request) -> Response:
        return await call(wb.clusters, request.query_params.get("key"))

    async def item(request: Request) -> Response:
        q = request.query_params
        if not q.get("id"):
            raise HTTPException(400, "pass the image id: /api/item?id=<id>")
        return await call(wb.item, q["id"], q.get("key"))

    async def similar(request: Request) -> Response:
        q = request.query_params
        options = {"k": q.get("k"), "task": q.get("task"), "label": q.get("label"), "key": q.get("key")}
        if request.method == "GET":
            if not q.get("id"):
                raise HTTPException(400, "pass an image id (?id=) or POST an image file")
            return await call(wb.similar, q["id"], **options)
        data, filename = await _upload(request, wb.settings.max_upload_bytes)
        return await call(wb.similar_upload, data, filename=filename, **options)

    async def review(request: Request) -> Response:
        q = request.query_params
        return await call(wb.review, request.path_params["queue"], task=q.get("task"), key=q.get("key"))

    async def corrections(request: Request) -> Response:
        if request.method == "GET":
            return await call(wb.corrections)
        body = await _json(request)
        unknown = set(body) - {"id", "task", "label", "queue", "user"}
        if unknown:
            raise HTTPException(400, f"unknown field(s) {', '.join(sorted(unknown))}; "
                                     "a correction has id, task, label (null = unknown), queue, user")
        missing = [k for k in ("id", "task") if k not in body] + ([] if "label" in body else ["label"])
        if missing:
            raise HTTPException(400, f"a correction needs {', '.join(missing)}")
        return await call(wb.add_correction, id=body["id"], task=body["task"], label=body["label"],
                          queue=body.get("queue") or "", user=body.get("user"))

    async def export(request: Request) -> Response:
        body = await _json(request)
        text = await run_in_threadpool(wb.export_manifest, body.get("ids"))
        return Response(text, media_type="text/csv",
                        headers={"content-disposition": 'attachment; filename="subset-manifest.csv"'})

    async def image(request: Request) -> Response:
        image_id = request.path_params["id"]
        thumb = request.query_params.get("thumb") not in (None, "", "0")
        path = await run_in_threadpool(wb.thumbnail if thumb else wb.image_path, image_id)
        return FileResponse(path, headers={"cache-control": "private, max-age=3600"})

    routes = [
        Route("/", index),
        Route("/api/meta", meta),
        Route("/api/items", items),
        Route("/api/clusters", clusters),
        Route("/api/item", item),
        Route("/api/similar", similar, methods=["GET", "POST"]),
        Route("/api/review/{queue}", review),
        Route("/api/corrections", corrections, methods=["GET", "POST"]),
        Route("/api/export", export, methods=["POST"]),
        Route("/images/{id:path}", image),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def on_http(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, exc.detail if exc.detail else "error")

    async def on_featkit(request: Request, exc: FeatkitError) -> Response:
        return error(404 if isinstance(exc, NotFound) else 422 if isinstance(exc, BadImage) else 400, str(exc))

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("workbench: %s %s failed", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    return Starlette(routes=routes,
                     middleware=[Middleware(Gate, token=token, local=local)],
                     exception_handlers={HTTPException: on_http, FeatkitError: on_featkit, Exception: on_crash})


async def _upload(request: Request, limit: int) -> tuple[bytes, str]:
    """An image sent as multipart form (field ``file``) or as the raw body (``Content-Type: image/...``)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind == "multipart/form-data":
        await _body(request, limit + 64 * 1024)  # the form's own overhead on top of the file
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "the form has no file field named 'file'")
        data = await upload.read()
        return data, upload.filename or "upload"
    if kind.startswith("image/") or kind == "application/octet-stream":
        return await _body(request, limit), "upload"
    raise HTTPException(415, "upload an image as multipart/form-data (field 'file') or as the raw body "
                             "with Content-Type: image/...")
