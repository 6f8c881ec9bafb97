"""Pure ASGI layers around the app, outermost first: `RequestMetrics` (counts and times every
answer by route template), `ApiKey` (401 unless the key is sent; /healthz and /dashboard are
open), `BodyLimit` (413 for a body over the limit, by Content-Length before reading, or
while reading one sent without it) and `SearchRoute` (answers POST /collections/{name}/search
itself, before FastAPI's routing)."""

from __future__ import annotations

import hmac
import json
import logging
import time

from .errors import ApiError, TooLarge, fault_message

log = logging.getLogger("peakknn.server")
SEARCH_PATH = "/collections/{name}/search"

OPEN_PATHS = ("/healthz", "/dashboard")
OPEN_PREFIXES = ("/dashboard/",)  # the dashboard's static files (its API calls send the key)


async def answer(send, status: int, message: str, headers: tuple = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def route_of(scope) -> str:
    """The matched route's template ("/collections/{name}/search"), "/dashboard" for its files,
    else "other" (unknown paths: kept out of the labels)."""
    if scope.get("peakknn.route"):  # answered by SearchRoute
        return scope["peakknn.route"]
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    path = scope.get("path", "")
    return "/dashboard" if path in OPEN_PATHS[1:] or path.startswith(OPEN_PREFIXES) else "other"


class RequestMetrics:
    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.http(scope["method"], route_of(scope), status[0], time.perf_counter() - started)


class ApiKey:
    """Needs `Authorization: Bearer KEY` or `api-key: KEY` (compared in constant time)."""

    def __init__(self, app, key: str | None):
        self.app = app
        self.key = key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"api-key" and not given:
                given = value.strip()
        if not given or not hmac.compare_digest(given, self.key):
            what = "a wrong API key" if given else "no API key"
            return await answer(send, 401, f"{what}: send Authorization: Bearer KEY (or the header api-key: KEY)", ((b"www-authenticate", b"Bearer"),))
        return await self.app(scope, receive, send)


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await answer(send, 400, f"Content-Length {value.decode(errors='replace')!r} is not a number")
                if declared > limit:
                    return await answer(send, 413, f"the body has {declared} bytes; this server takes at most {limit} (--max-body-mb)", ((b"connection", b"close"),))
        seen = 0

        async def receiving():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge(f"the body has more than {limit} bytes; this server takes at most {limit} (--max-body-mb)")
            return message

        return await self.app(scope, receiving, send)


class SearchRoute:
    """POST /collections/{name}/search answered here, the same way as the app's route would
    (`Service.search`, errors as {"error": ...}), without FastAPI's routing, request object and
    dependency solving: those took about a third of a search request's Python time on the event
    loop, and every such millisecond is one the search thread waits for the interpreter lock
    (docs/SERVER.md). Every other request (other methods on that path included: 405) goes on to
    the app."""

    def __init__(self, app, service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            parts = scope["path"].split("/")  # "", "collections", name, "search"
            if len(parts) == 4 and parts[1] == "collections" and parts[3] == "search" and parts[2]:
                scope["peakknn.route"] = SEARCH_PATH
                return await self._search(parts[2], receive, send)
        return await self.app(scope, receive, send)

    async def _search(self, name: str, receive, send) -> None:
        try:
            chunks = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = await self.service.search(name, b"".join(chunks))
        except ApiError as e:
            return await answer(send, e.status, e.message)
        except Exception as e:  # noqa: BLE001 - a server fault, answered as the app's handler does
            log.error("POST /collections/%s/search failed", name, exc_info=e)
            return await answer(send, 500, fault_message(e))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
