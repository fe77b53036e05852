"""`twotower serve`: recommendations over HTTP from an exported bundle (FastAPI + uvicorn).

``create_app(live)`` is the whole HTTP surface (documented in exports/README.md
and at ``/docs``). Every request reads ``live.current`` once and answers from
that bundle (serving/live.py), so a reload, ``POST /admin/reload`` or SIGHUP,
swaps bundles without dropping a request or mixing two bundles in one answer.
One recommendation costs a fraction of a millisecond, so it is computed on the
event loop (batches go to a thread) and written with orjson; the pydantic
models describe the answers for ``/docs`` and check POST bodies, but are not
used to serialise, and the hot GET skips FastAPI's routing (``FastLane``).
Nothing here imports torch.

With ``--workers N`` uvicorn runs N processes on one socket: each loads the
bundle, metrics are aggregated across them (prometheus-client's
multiprocess mode), and a reload restarts them one by one, each replacement
in service before the process it replaces stops; a replacement that cannot
load the bundle is dropped and the old process keeps serving. A crashed worker is
replaced at once, one that cannot load the bundle after a wait (``Supervisor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

from . import __version__
from .errors import TwoTowerError
from .serving.live import LiveBundle, Loaded

log = logging.getLogger("twotower.serve")

TOKEN_VARIABLE = "TWOTOWER_ADMIN_TOKEN"  # set it to require `Authorization: Bearer <token>`
SETTINGS_VARIABLE = "TWOTOWER_SERVE"  # how `--workers N` hands its settings to each worker
WORKER_READY_S = 60  # how long a worker may take to load its bundle and answer uvicorn
NOT_LOADED = 4  # a worker's exit status when it cannot load the bundle
RETRY_FIRST_S, RETRY_MOST_S = 1.0, 60.0  # the wait before a slot tries again, doubling
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Limits:
    """The most one request may ask: beyond them 422, or 413 for the body."""

    max_k: int = 1000
    max_history: int = 1000  # items of an anonymous history
    max_batch: int = 256  # users of one batch
    max_body_bytes: int = 64 * 1024


# --- shapes, for /docs and for checking POST bodies ---------------------------------------


class Item(BaseModel):
    item_id: str
    title: str
    genres: list[str]


class Recommended(BaseModel):
    rank: int
    item_id: str
    title: str
    genres: list[str]
    score: float


class UserRecommendations(BaseModel):
    user_id: str
    items: list[Recommended]


class HistoryRecommendations(BaseModel):
    items: list[Recommended]


class BatchRecommendations(BaseModel):
    results: list[UserRecommendations]


class RecommendationsRequest(BaseModel):
    """Exactly one of ``items`` (an anonymous history, oldest first) and ``users`` (a batch)."""

    model_config = ConfigDict(extra="forbid")
    items: list[StrictStr | StrictInt] | None = None
    users: list[StrictStr | StrictInt] | None = None
    k: StrictInt = 10
    exclude_seen: StrictBool = True


# the POST body is read by `parse_body`, whatever its content type; /docs shows its schema
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": RecommendationsRequest.model_json_schema()}},
    }
}


class Detail(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Detail, "description": text}
    for status, text in ((404, "unknown user or item"), (422, "bad k or request"))
}


# --- answers ---------------------------------------------------------------------------


class Problem(Exception):
    """An answer other than 200: its status and a one-line message, sent as ``{"detail"}``."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def answer(
    body: Any, loaded: Loaded | None = None, status: int = 200, headers: dict | None = None
) -> Response:
    """JSON (orjson writes the ``Recommendation`` dataclasses as they are), tagged with the
    version of the bundle that answered."""
    headers = {**(headers or {}), **({"x-bundle-version": loaded.version} if loaded else {})}
    return Response(orjson.dumps(body), status, headers, "application/json")


def integer(text: str, name: str) -> int:
    """Plain ASCII digits, as the schema's integer means: not ``int``'s ``1_0``, spaces or
    other scripts' digits."""
    digits = text[1:] if text[:1] == "-" else text
    if not (digits.isascii() and digits.isdigit()):
        raise Problem(422, f"{name}: expected an integer, not {text!r}")
    if len(digits.lstrip("0")) > 18:  # past any limit, and past what int() reads (4,300 digits)
        raise Problem(422, f"{name}: {text[:24]}... is out of range")
    return int(text)


def boolean(text: str, name: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in value:
        raise Problem(422, f"{name}: expected true or false, not {text!r}")
    return value[text.lower()]


def query_values(pairs: Sequence[tuple[str, str]], names: Sequence[str]) -> dict[str, str]:
    """The query's values by name: a name the endpoint does not take (``?K=5``), or one
    given twice, would otherwise be ignored or overruled in silence."""
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in names:
            takes = ", ".join(names) or "none"
            raise Problem(422, f"unknown query parameter {name!r}: this endpoint takes {takes}")
        if name in values:
            raise Problem(422, f"query parameter {name!r} given more than once")
        values[name] = value
    return values


def takes_no_query(request: Request) -> None:
    """Refuse any query parameter, for the endpoints that take none."""
    query_values(request.query_params.multi_items(), ())


def user_parameters(limits: Limits) -> dict[str, Any]:
    """The OpenAPI parameters of ``GET /v1/users/{user_id}/recommendations``."""
    k = {"type": "integer", "default": 10, "minimum": 1, "maximum": limits.max_k}
    parameters = [
        ("user_id", "path", {"type": "string"}, "a known user's raw id"),
        ("k", "query", k, "how many items"),
        ("exclude_seen", "query", {"type": "boolean", "default": True}, "leave out their items"),
    ]
    return {
        "parameters": [
            {"name": name, "in": where, "required": where == "path", "schema": schema,
             "description": text}
            for name, where, schema, text in parameters
        ]
    }  # fmt: skip


def one_line(errors: list[dict[str, Any]]) -> str:
    """pydantic's validation errors as one message: ``k: Input should be a valid integer``."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error["loc"] if p not in ("query", "body"))
        parts.append(f"{where or 'body'}: {error['msg']}")
    return "; ".join(parts)


def parse_body(body: bytes) -> RecommendationsRequest:
    """The JSON body, whatever its content type claims (422 when it is not valid)."""
    try:
        return RecommendationsRequest.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise Problem(422, f"the body is not valid JSON ({exc})") from None
    except ValidationError as exc:
        raise Problem(422, one_line(exc.errors())) from None


# --- metrics and the request guard --------------------------------------------------------


class Metrics:
    """Prometheus metrics of one app: requests, latency, errors, the bundle and its reloads."""

    def __init__(self, multiprocess_mode: bool):
        self.multiprocess_mode = multiprocess_mode
        self.children: dict[tuple[str, str, int], tuple] = {}
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "twotower_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=registry,
        )
        self.errors = Counter(
            "twotower_http_errors",
            "HTTP answers with status 400 or more",
            ["route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "twotower_http_request_duration_seconds",
            "time from a request's arrival to the end of its answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.bundle = Gauge(
            "twotower_bundle_info",
            "the bundle being served (value 1): version = sha256 of its manifest (sorted-key JSON)",
            ["version", "format", "created"],
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.reloads = Counter(
            "twotower_bundle_reloads", "reloads, by outcome", ["outcome"], registry=registry
        )

    def serving(self, loaded: Loaded) -> None:
        described = loaded.describe()
        if not self.multiprocess_mode:  # a worker of several never swaps: it is replaced
            self.bundle.clear()
        self.bundle.labels(loaded.version, described["format"], described["created"]).set(1)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        children = self.children.get((method, route, status))
        if children is None:  # labels() looks up under a lock: once per label set, not per call
            counted = (self.requests.labels(method, route, str(status)), self.latency.labels(route))
            errors = (self.errors.labels(route, str(status)),) if status >= 400 else ()
            children = self.children[method, route, status] = (*counted, *errors)
        children[0].inc()
        children[1].observe(seconds)
        if len(children) > 2:
            children[2].inc()

    def exposition(self) -> bytes:
        if not self.multiprocess_mode:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # every worker's files, summed (or per pid, the gauge)
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


class Guard:
    """ASGI middleware: refuses bodies over the limit (413), times and counts every answer.

    The route label is the path template of the route asked for
    (``/v1/items/{item_id}``), also when the answer came before routing (a
    413), or ``unmatched``, so labels stay few whatever clients ask for.
    """

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, routes: Sequence[BaseRoute]):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes
        self.routes = routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_noting_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await read_body(receive, self.max_body_bytes)
                if body is None:
                    detail = f"the request body is over {self.max_body_bytes} bytes"
                    response = answer({"detail": detail}, status=413)
                    return await response(scope, receive, send_noting_status)
                receive = replay(body, receive)
            await self.app(scope, receive, send_noting_status)
        finally:
            route = getattr(scope.get("route"), "path_format", None) or route_path(
                self.routes, scope
            )
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - started)


def route_path(routes: Sequence[BaseRoute], scope) -> str:
    """The path template of the route ``scope`` asks for (path and method), or ``unmatched``.

    The template as OpenAPI writes it: ``{user_id}``, not ``{user_id:id}``.
    """
    for route in routes:
        if route.matches(scope)[0] is Match.FULL:
            return getattr(route, "path_format", "unmatched")
    return "unmatched"


async def read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive):
    """A ``receive`` that gives the app the body read already, then the client's messages."""
    sent = False

    async def again():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


class IdConvertor(PathConvertor):
    """An id in a path: any text, slashes and line feeds too. Starlette's ``path`` is
    ``.*``, which stops at a line feed, and Parquet data may hold one (a CSV's is
    refused). ``{item_id:id}`` in a route; OpenAPI writes it ``{item_id}``."""

    regex = r"[\s\S]*"


register_url_convertor("id", IdConvertor())


class FastLane:
    """ASGI middleware: answers ``GET /v1/users/{user_id}/recommendations`` itself.

    Measured in-process on the ML-100K bundle, the app added 0.31 ms to a 0.83 ms
    ``recommend`` through FastAPI's routing and parameter solving, 0.19 ms through this
    lane. ``respond(user_id, query pairs)`` is the very function the FastAPI route calls (it
    stays for /docs, and for the methods this lane leaves alone).
    """

    PATH = re.compile(rf"/v1/users/({IdConvertor.regex})/recommendations")  # the route's

    def __init__(self, app, route, respond):
        self.app, self.route, self.respond = app, route, respond

    async def __call__(self, scope, receive, send) -> None:
        found = self.PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if found is None or scope["method"] != "GET":
            return await self.app(scope, receive, send)
        scope["route"] = self.route  # what the metrics label it with
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        try:
            response = self.respond(found.group(1), query)
        except Problem as problem:
            response = answer({"detail": problem.detail}, status=problem.status)
        await response(scope, receive, send)


def loopback(request: Request) -> bool:
    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


# --- the app ---------------------------------------------------------------------------


def create_app(
    live: LiveBundle | str | Path,
    admin_token: str | None = None,
    limits: Limits = Limits(),
    workers: int = 1,
) -> FastAPI:
    """The HTTP app over ``live`` (a ``LiveBundle``, or a bundle folder to load).

    ``admin_token``: when given, ``POST /admin/reload`` needs it as a bearer
    token; without it, only loopback clients may reload. ``workers > 1``
    means one of several uvicorn worker processes: a reload then restarts
    them all (SIGHUP to the supervisor) and metrics are aggregated.
    """
    if not isinstance(live, LiveBundle):
        live = LiveBundle(live)
    metrics = Metrics(multiprocess_mode=workers > 1)
    metrics.serving(live.current)
    tasks: set[asyncio.Task] = set()  # reloads started by SIGHUP, kept until they finish

    async def reload() -> tuple[Loaded, Loaded]:
        try:
            old, new = await asyncio.to_thread(live.reload)
        except TwoTowerError as exc:
            metrics.reloads.labels("refused").inc()
            version = live.current.version
            log.error("reload refused, still serving version %s: %s", version, exc)
            raise Problem(409, f"bundle refused, still serving version {version}: {exc}") from None
        metrics.reloads.labels("ok").inc()
        metrics.serving(new)
        log.info("reloaded %s: version %s -> %s", new.path, old.version, new.version)
        return old, new

    def on_sighup() -> None:
        task = asyncio.ensure_future(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # logged in reload

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        hangup = getattr(signal, "SIGHUP", None)
        if hangup is not None:  # a worker of several leaves SIGHUP to the supervisor
            loop.add_signal_handler(hangup, on_sighup if workers == 1 else lambda: None)
        try:
            yield
        finally:
            if hangup is not None:
                loop.remove_signal_handler(hangup)
            if metrics.multiprocess_mode:
                multiprocess.mark_process_dead(os.getpid())  # its bundle gauge goes with it

    app = FastAPI(
        title="twotower",
        version=__version__,
        description="Top-K recommendations from an exported twotower bundle.",
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would be built from the client's Host header
    )

    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> Response:
        return answer({"detail": exc.detail}, status=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return answer({"detail": one_line(exc.errors())}, status=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        # its headers say what the client needs next (a 405's Allow)
        return answer({"detail": str(exc.detail)}, status=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        # logged with its traceback by uvicorn; the process goes on serving
        return answer({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status=500)

    def checked_k(k: int) -> int:
        if not 1 <= k <= limits.max_k:
            raise Problem(422, f"k must be from 1 to {limits.max_k}, not {k}")
        return k

    def at_most(values: list, limit: int, what: str) -> list[str]:
        if len(values) > limit:
            raise Problem(422, f"{what}: at most {limit} per request, not {len(values)}")
        return [str(value) for value in values]

    def known_users(loaded: Loaded, user_ids: list[str]) -> None:
        unknown = [u for u in user_ids if u not in loaded.recommender.user_index]
        if unknown:
            raise Problem(404, f"unknown user id(s): {', '.join(map(repr, unknown[:5]))}")

    def known_items(loaded: Loaded, item_ids: list[str]) -> None:
        unknown = [i for i in item_ids if i not in loaded.recommender.item_index]
        if unknown:
            raise Problem(404, f"unknown item id(s): {', '.join(map(repr, unknown[:5]))}")

    def user_answer(user_id: str, pairs: Sequence[tuple[str, str]]) -> Response:
        loaded = live.current  # this request's bundle, whatever a reload does meanwhile
        query = query_values(pairs, ("k", "exclude_seen"))
        k = checked_k(integer(query.get("k", "10"), "k"))
        exclude_seen = boolean(query.get("exclude_seen", "true"), "exclude_seen")
        known_users(loaded, [user_id])
        items = loaded.recommender.recommend(user_id, k, exclude_seen)
        return answer({"user_id": user_id, "items": items}, loaded)

    @app.get(
        "/v1/users/{user_id:id}/recommendations",
        response_model=UserRecommendations,
        responses=ERRORS,
        summary="top-k items for a known user",
        openapi_extra=user_parameters(limits),  # read by `user_answer`, not by FastAPI
    )
    async def user_recommendations(request: Request) -> Response:
        return user_answer(request.path_params["user_id"], request.query_params.multi_items())

    @app.post(
        "/v1/recommendations",
        response_model=HistoryRecommendations | BatchRecommendations,
        responses={**ERRORS, 413: {"model": Detail, "description": "body over the size limit"}},
        summary="top-k items for an anonymous history, or for a batch of known users",
        openapi_extra=REQUEST_BODY,
    )
    async def recommendations(http: Request) -> Response:
        takes_no_query(http)  # k and the rest go in the body
        request = parse_body(await http.body())
        loaded = live.current
        k = checked_k(request.k)
        if (request.items is None) == (request.users is None):
            raise Problem(422, 'give either "items" (a history) or "users" (a batch), not both')
        if request.users is not None:
            users = at_most(request.users, limits.max_batch, "users")
            known_users(loaded, users)
            lists = await run_in_threadpool(
                loaded.recommender.recommend_batch, users, k, request.exclude_seen
            )
            results = [
                {"user_id": u, "items": items} for u, items in zip(users, lists, strict=True)
            ]
            return answer({"results": results}, loaded)
        history = at_most(request.items, limits.max_history, "items")
        known_items(loaded, history)
        items = loaded.recommender.recommend_history(history, k, request.exclude_seen)
        return answer({"items": items}, loaded)

    @app.get(
        "/v1/items/{item_id:id}",
        response_model=Item,
        responses={404: ERRORS[404]},
        summary="one item",
    )
    async def item(request: Request) -> Response:
        takes_no_query(request)
        item_id = request.path_params["item_id"]
        loaded = live.current
        known_items(loaded, [item_id])
        row = loaded.recommender.item_index[item_id] - 1
        return answer(loaded.recommender.items[row], loaded)

    @app.api_route("/healthz", methods=["GET", "HEAD"], summary="the process is up")
    async def healthz(request: Request) -> Response:
        takes_no_query(request)
        return answer({"status": "ok"})

    @app.api_route(
        "/readyz", methods=["GET", "HEAD"], summary="a checked bundle is loaded: which one"
    )
    async def readyz(request: Request) -> Response:
        takes_no_query(request)
        loaded = live.current
        return answer({"status": "ready", "pid": os.getpid(), **loaded.describe()}, loaded)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "the metrics"}},
        response_class=Response,
    )
    async def prometheus_metrics(request: Request) -> Response:
        takes_no_query(request)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/admin/reload",
        summary="load the bundle folder again, check it, swap it in",
        responses={
            202: {"description": "checked; the workers restart on it (--workers N)"},
            403: {"model": Detail},
            409: {"model": Detail, "description": "refused"},
        },
    )
    async def admin_reload(request: Request) -> Response:
        takes_no_query(request)
        if admin_token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            bearer = scheme.lower() == "bearer"  # schemes are case-insensitive (RFC 9110)
            if not (hmac.compare_digest(given.strip().encode(), admin_token.encode()) and bearer):
                raise Problem(403, "reloading needs the admin token: Authorization: Bearer TOKEN")
        elif not loopback(request):
            raise Problem(403, "reloading is allowed from loopback only (or with a token)")
        if workers == 1:
            old, new = await reload()
            body = {"status": "reloaded", "previous": old.describe(), "current": new.describe()}
            return answer(body, new)
        try:  # check it here, then let the supervisor replace every worker
            new = await asyncio.to_thread(live.check)
        except TwoTowerError as exc:
            metrics.reloads.labels("refused").inc()
            version = live.current.version
            raise Problem(409, f"bundle refused, still serving version {version}: {exc}") from None
        metrics.reloads.labels("ok").inc()  # counted here: the worker that counts it restarts
        os.kill(os.getppid(), signal.SIGHUP)
        return answer({"status": "restarting workers", "current": new.describe()}, status=202)

    hot = next(r for r in app.routes if getattr(r, "endpoint", None) is user_recommendations)
    app.add_middleware(FastLane, route=hot, respond=user_answer)
    app.add_middleware(  # outside
        Guard, metrics=metrics, max_body_bytes=limits.max_body_bytes, routes=app.routes
    )
    return app


# --- running it ------------------------------------------------------------------------


def app_from_environment() -> FastAPI:
    """The app of one ``--workers`` process: settings from the supervisor's environment."""
    settings = json.loads(os.environ[SETTINGS_VARIABLE])
    if not logging.getLogger("twotower").handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    try:
        live = LiveBundle(Path(settings["bundle"]), settings["retriever"], settings["threads"])
    except TwoTowerError as exc:  # the supervisor keeps the workers it has
        log.error("worker %d not started: %s", os.getpid(), exc)
        raise SystemExit(NOT_LOADED) from None
    return create_app(live, os.environ.get(TOKEN_VARIABLE) or None, workers=settings["workers"])


class Waiting:
    """A worker slot whose last worker could not load the bundle, until it tries again.

    It stands in the supervisor's list as a live process, so uvicorn neither restarts
    it at once nor counts it dead: a worker loading a damaged bundle over and over
    would take a core from the workers still serving.
    """

    pid = None
    exitcode = None

    def __init__(self, seconds: float):
        self.until = time.monotonic() + seconds

    def is_alive(self, timeout: float = 0) -> bool:
        return True

    def terminate(self) -> None:  # a reload replaces the slot with a new worker
        pass

    def join(self) -> None:
        pass


class Supervisor(Multiprocess):
    """uvicorn's supervisor of ``--workers``, with three changes.

    A worker that cannot load the bundle (the folder was damaged after the start) is
    tried again after a wait that doubles up to a minute, and at once after a crash.
    The metrics of a worker it replaced are dropped: a worker marks its own dead only
    when it shuts down cleanly, and ``/metrics`` would go on showing the bundle of one
    that is gone. A Ctrl-C is noted, so that the command ends interrupted, as one
    process does.
    """

    interrupted = False

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]):
        super().__init__(config, sockets)
        self.waits: dict[int, float] = {}  # slot -> its next wait, while its workers fail

    def handle_int(self) -> None:
        self.interrupted = True
        super().handle_int()

    def keep_subprocess_alive(self) -> None:
        if not self.should_exit.is_set():
            for slot, process in enumerate(self.processes):
                self.processes[slot] = self.waited(slot, process)
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {process.pid for process in self.processes}:
            if pid is not None:
                multiprocess.mark_process_dead(pid)

    def waited(self, slot: int, process):
        """The slot's process: a wait after a worker that could not load, a new worker
        once the wait is over, else the same one (uvicorn restarts a crashed one)."""
        if isinstance(process, Waiting):
            if time.monotonic() < process.until:
                return process
            replacement = Process(self.config, self.sockets)
            replacement.start()
            return replacement
        if process.process.is_alive():
            if slot in self.waits and process.is_ready(timeout=0.1):
                del self.waits[slot]  # it loaded: the next failure waits the first wait again
            return process
        if process.exitcode != NOT_LOADED:
            return process
        process.join()
        multiprocess.mark_process_dead(process.pid)
        wait = self.waits.get(slot, RETRY_FIRST_S)
        self.waits[slot] = min(2 * wait, RETRY_MOST_S)
        log.error("worker slot %d tries to load the bundle again in %g s", slot + 1, wait)
        return Waiting(wait)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any worker starts (``TwoTowerError`` if it cannot)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # "::" is every address, IPv4 ones too (as uvicorn's own --host :: listens)
    both = host == "::" and socket.has_dualstack_ipv6()
    try:
        return socket.create_server((host, port), family=family, backlog=2048, dualstack_ipv6=both)
    except OSError as exc:
        raise TwoTowerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(
    bundle: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    retriever: str | None = None,
    threads: int = 1,
    print_json: bool = False,
) -> None:
    """Serve ``bundle`` until SIGINT or SIGTERM; a bad bundle or a busy port fails first.

    The socket listens before the server starts: connections made from then on wait in its
    queue, so ``print_json`` prints where it listens (one JSON line on stdout) right then.
    """
    if not host.strip():  # the socket layer reads "" as every interface
        raise TwoTowerError(
            "the host to listen on is empty; name one (0.0.0.0 for every interface)"
        )
    live = LiveBundle(bundle, retriever, threads)  # checked before anything listens
    listener = listen(host, port)
    port = listener.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    version = live.current.version
    log.info("serving %s (version %s) on %s with %d worker(s)", bundle, version, url, workers)
    if print_json:
        where = {"url": url, "port": port, "pid": os.getpid(), "workers": workers}
        print(json.dumps({**where, "bundle": str(bundle), "version": version}), flush=True)
    # a replacement worker loads a whole bundle (a TorchScript one imports torch: seconds)
    # before it is ready; uvicorn's default 5 s would abort a reload after its 202
    options = dict(
        access_log=False,
        timeout_graceful_shutdown=30,
        log_level="info",
        timeout_worker_healthcheck=WORKER_READY_S,
    )
    token = os.environ.get(TOKEN_VARIABLE) or None
    if workers == 1:
        config = uvicorn.Config(create_app(live, token), **options)
        uvicorn.Server(config).run(sockets=[listener])
        return
    del live  # each worker loads its own
    # absolute, links kept: a reload follows a link switched to another bundle, as one worker does
    settings = {"bundle": os.path.abspath(bundle), "retriever": retriever}
    settings.update(threads=threads, workers=workers)
    with tempfile.TemporaryDirectory(prefix="twotower-metrics-") as metrics_dir:
        os.environ[SETTINGS_VARIABLE] = json.dumps(settings)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        config = uvicorn.Config(
            "twotower.server:app_from_environment", factory=True, workers=workers, **options
        )
        supervisor = Supervisor(config, sockets=[listener])
        supervisor.run()
    if supervisor.interrupted:  # the workers have stopped and the metrics folder is gone
        raise KeyboardInterrupt
