"""`twotower serve` against the real server: uvicorn on a free loopback port, in a subprocess.

Every test talks HTTP to a `twotower serve` process started from the
command line, on a copy of the tiny exported bundle (conftest.py). Answers
are compared with ``load_bundle(...)`` in this process; reloads swap the
served folder between that bundle and a retitled copy of it, so every
answer says which bundle gave it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pandas as pd
import pytest
from helpers import error_line, flip_a_byte, run
from starlette.requests import Request

from twotower import artifacts
from twotower.bench.serve import stop
from twotower.cli import main
from twotower.export.bundle import export_bundle
from twotower.server import Limits, loopback
from twotower.serving import load_bundle
from twotower.serving.live import manifest_version

LIMITS = Limits()
TOKEN = "s3cret-token"

# `twotower serve ...`, plus a thread that answers a line on stdin with the torch modules loaded
SERVE = """
import json, sys, threading

def report():
    for _ in sys.stdin:
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "torch")), flush=True)

threading.Thread(target=report, daemon=True).start()
from twotower.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Served:
    process: subprocess.Popen
    url: str
    log: Path
    client: httpx.Client

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def torch_modules(self) -> list[str]:
        self.process.stdin.write("?\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())


@contextlib.contextmanager
def serving(bundle: Path, log: Path, *flags: str, env: dict | None = None) -> Iterator[Served]:
    """`twotower serve --bundle BUNDLE --port 0 --json`, ready; stopped afterwards."""
    argv = [sys.executable, "-c", SERVE, "serve", "--bundle", str(bundle), "--port", "0", "--json"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [*argv, *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
            env=environment,
        )
    client = None
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline() if ready else ""
        assert line, log.read_text()
        where = json.loads(line)  # printed once the socket listens
        assert (where["pid"], where["version"]) == (process.pid, version_of(bundle))
        client = httpx.Client(base_url=where["url"], timeout=30)
        wait_for(lambda: ready_now(client, process, log), what="/readyz")
        yield Served(process, where["url"], log, client)
    finally:
        if client is not None:
            client.close()
        stop(process)
        process.stdin.close()
        process.stdout.close()


def ready_now(client: httpx.Client, process: subprocess.Popen, log: Path) -> bool:
    assert process.poll() is None, log.read_text()
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- bundles and the answers they give ------------------------------------------------------


def retitled(bundle: Path, target: Path) -> Path:
    """A copy of ``bundle`` whose items are all retitled, checksums fixed: a second bundle
    (another manifest, so another version) whose every answer differs from the first's."""
    shutil.copytree(bundle, target)
    items_path = target / artifacts.ITEMS
    items = json.loads(items_path.read_text())
    for item in items["items"]:
        item["title"] += " (B)"
    items_path.write_text(json.dumps(items))
    manifest_path = target / artifacts.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][artifacts.ITEMS] = hashlib.sha256(items_path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return target


def replace_folder(folder: Path, source: Path) -> None:
    """Put a copy of ``source`` in ``folder``'s place, as a re-export would (a rename)."""
    incoming = folder.with_name(folder.name + ".incoming")
    shutil.copytree(source, incoming)
    folder.rename(folder.with_name(folder.name + ".old"))
    incoming.rename(folder)
    shutil.rmtree(folder.with_name(folder.name + ".old"))


def version_of(folder: Path) -> str:
    return manifest_version(json.loads((folder / artifacts.MANIFEST).read_text()))


def as_json(recommendations) -> list[dict]:
    return [r.to_dict() for r in recommendations]


@pytest.fixture(scope="module")
def bundle(exported_bundle, tmp_path_factory) -> Path:
    return Path(shutil.copytree(exported_bundle, tmp_path_factory.mktemp("serve") / "bundle"))


@pytest.fixture(scope="module")
def bundle_b(bundle, tmp_path_factory) -> Path:
    return retitled(bundle, tmp_path_factory.mktemp("serve-b") / "bundle")


@pytest.fixture(scope="module")
def core(bundle):
    return load_bundle(bundle)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory) -> Iterator[Served]:
    with serving(bundle, tmp_path_factory.mktemp("logs") / "serve.log") as served:
        yield served


# --- every endpoint, answering as load_bundle(...) does -----------------------------------


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_user_recommendations_equal_the_core(server, core, exclude_seen):
    for user in core.user_ids:
        params = {"k": 7, "exclude_seen": str(exclude_seen).lower()}
        got = server.client.get(f"/v1/users/{user}/recommendations", params=params)
        assert got.status_code == 200
        assert got.headers["content-type"] == "application/json"
        expected = core.recommend(user, k=7, exclude_seen=exclude_seen)
        assert got.json() == {"user_id": user, "items": as_json(expected)}


def test_the_default_answer_is_recommend_json(server, core, bundle, capsys):
    """`GET ...?` with no parameters prints what `twotower recommend --bundle --json` does."""
    user = core.user_ids[3]
    code, out, _ = run(capsys, "recommend", "--bundle", bundle, "--user-id", user, "--json")
    assert code == 0
    got = server.client.get(f"/v1/users/{user}/recommendations")
    assert got.json() == json.loads(out)
    assert got.headers["x-bundle-version"] == version_of(bundle)


def test_history_and_batch_equal_the_core(server, core):
    history = core.histories[core.user_ids[1]][:4]
    for exclude_seen in (True, False):
        body = {"items": history, "k": 5, "exclude_seen": exclude_seen}
        got = server.client.post("/v1/recommendations", json=body)
        assert got.status_code == 200
        assert got.json() == {"items": as_json(core.recommend_history(history, 5, exclude_seen))}
    cold = server.client.post("/v1/recommendations", json={"items": []})
    assert cold.json() == {"items": as_json(core.recommend_history([], 10))}
    numbers = [int(item) for item in history if item.isdigit()]  # ids may be sent as numbers
    if numbers:
        got = server.client.post("/v1/recommendations", json={"items": numbers})
        assert got.json()["items"] == as_json(core.recommend_history(numbers, 10))
    users = core.user_ids[:5]
    got = server.client.post("/v1/recommendations", json={"users": users, "k": 3})
    expected = core.recommend_batch(users, 3)
    results = [{"user_id": u, "items": as_json(r)} for u, r in zip(users, expected, strict=True)]
    assert got.json() == {"results": results}
    assert server.client.post("/v1/recommendations", json={"users": []}).json() == {"results": []}


def test_items(server, core):
    for row, item_id in enumerate(core.item_ids):
        got = server.client.get(f"/v1/items/{item_id}")
        assert got.status_code == 200
        assert got.json() == core.items[row]
        assert set(got.json()) == {"item_id", "title", "genres"}


ODD_IDS = ["a/b", "/lead", "trail/", "c d", "50%", "x?y=1", "e#f", "ü/ß", "g\nh"]


@pytest.fixture(scope="module")
def odd_bundle(tmp_path_factory) -> Path:
    """A bundle fitted on ids that a URL path must escape: slashes, spaces, ``%?#``,
    non-ASCII, a line feed (Parquet holds one; a CSV's would be refused)."""
    root = tmp_path_factory.mktemp("odd")
    names = ODD_IDS + [f"n{n}" for n in range(11)]  # 20: (u * 5 + step * 7) % 20 varies
    rows = [
        (names[u], names[(u * 5 + step * 7) % len(names)], 4 + step % 2, 1_000 * u + step)
        for u in range(len(names))
        for step in range(6)
    ]
    interactions = root / "interactions.parquet"
    pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).to_parquet(interactions)
    argv = ["fit", "--dataset", "files", "--interactions", interactions, "--epochs", "1"]
    argv += ["--max-history-len", "8", "--artifacts-dir", root / "artifacts", "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    folder, _ = export_bundle(root / "artifacts", root / "bundle")
    return folder


def test_ids_a_url_path_must_escape_are_served(odd_bundle, tmp_path):
    core = load_bundle(odd_bundle)
    assert set(ODD_IDS) <= set(core.user_ids) and set(ODD_IDS) <= set(core.item_ids)
    with serving(odd_bundle, tmp_path / "serve.log") as server:
        for user in core.user_ids:
            got = server.client.get(f"/v1/users/{quote(user, safe='')}/recommendations?k=3")
            assert got.status_code == 200, (user, got.text)
            assert got.json() == {"user_id": user, "items": as_json(core.recommend(user, k=3))}
        for row, item in enumerate(core.item_ids):
            got = server.client.get(f"/v1/items/{quote(item, safe='')}")
            assert (got.status_code, got.json()) == (200, core.items[row]), item
        unknown = server.client.get(f"/v1/users/{quote('a/b/c', safe='')}/recommendations")
        assert unknown.status_code == 404 and "'a/b/c'" in unknown.json()["detail"]
        route = "/v1/users/{user_id}/recommendations"  # the template, whatever the id holds
        text = server.client.get("/metrics").text
        assert metric(text, "twotower_http_requests_total", route=route, status="200") == len(
            core.user_ids
        )
        paths = server.client.get("/openapi.json").json()["paths"]
        assert {route, "/v1/items/{item_id}"} <= set(paths)


def test_health_readiness_docs(server, bundle, core):
    assert server.client.get("/healthz").json() == {"status": "ok"}
    ready = server.client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["version"] == version_of(bundle)
    assert (ready["users"], ready["items"]) == (len(core.user_ids), len(core.item_ids))
    assert ready["bundle"] == str(bundle)
    docs = server.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = server.client.get("/openapi.json").json()["paths"]
    expected = {
        "/v1/users/{user_id}/recommendations",
        "/v1/recommendations",
        "/v1/items/{item_id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/reload",
    }
    assert expected <= set(paths)
    parameters = paths["/v1/users/{user_id}/recommendations"]["get"]["parameters"]
    assert {p["name"] for p in parameters} == {"user_id", "k", "exclude_seen"}
    schema = paths["/v1/recommendations"]["post"]["requestBody"]["content"]["application/json"]
    assert {"items", "users", "k", "exclude_seen"} <= set(schema["schema"]["properties"])


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all(f'{key}="{val}"' in head for key, val in labels.items()):
                return float(value)
    return 0.0


def test_metrics_count_requests_errors_and_latency(server, bundle, core):
    route = "/v1/users/{user_id}/recommendations"
    before = server.client.get("/metrics").text
    for user in core.user_ids[:5]:
        server.client.get(f"/v1/users/{user}/recommendations")
    server.client.get("/v1/users/nobody/recommendations")
    server.client.get("/no/such/path")
    server.client.get("/docs")
    after = server.client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    def grew(name: str, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert grew("twotower_http_requests_total", route=route, status="200") == 5
    assert grew("twotower_http_requests_total", route=route, status="404") == 1
    assert grew("twotower_http_errors_total", route=route, status="404") == 1
    assert grew("twotower_http_errors_total", route="unmatched", status="404") == 1
    assert grew("twotower_http_requests_total", route="/docs", status="200") == 1
    assert grew("twotower_http_request_duration_seconds_count", route=route) == 6
    assert grew("twotower_http_request_duration_seconds_bucket", route=route, le="+Inf") == 6
    assert metric(text, "twotower_bundle_info", version=version_of(bundle)) == 1


# --- errors are HTTP answers, and the process survives them -------------------------------

TOO_MANY = LIMITS.max_batch + 1
ERRORS = [
    ("GET", "/v1/users/nobody/recommendations", None, 404, "unknown user id(s): 'nobody'"),
    ("GET", "/v1/items/nothing", None, 404, "unknown item id(s): 'nothing'"),
    ("GET", "/v1/users/{user}/recommendations?k=0", None, 422, "k must be from 1 to 1000, not 0"),
    ("GET", "/v1/users/{user}/recommendations?k=-3", None, 422, "k must be from 1 to 1000"),
    ("GET", "/v1/users/{user}/recommendations?k=1001", None, 422, "not 1001"),
    (
        "GET",
        "/v1/users/{user}/recommendations?k=ten",
        None,
        422,
        "k: expected an integer, not 'ten'",
    ),
    (
        "GET",
        "/v1/users/{user}/recommendations?exclude_seen=perhaps",
        None,
        422,
        "exclude_seen: expected",
    ),
    ("POST", "/v1/recommendations", {"items": ["nothing"]}, 404, "unknown item id(s): 'nothing'"),
    ("POST", "/v1/recommendations", {"users": ["{user}", "nobody"]}, 404, "'nobody'"),
    ("POST", "/v1/recommendations", {"items": [], "k": 0}, 422, "k must be from 1 to 1000"),
    ("POST", "/v1/recommendations", {"items": [], "k": "3"}, 422, "k: Input should be"),
    ("POST", "/v1/recommendations", {"items": [], "users": []}, 422, 'give either "items"'),
    ("POST", "/v1/recommendations", {"k": 3}, 422, 'give either "items"'),
    ("POST", "/v1/recommendations", {"items": [], "colour": 1}, 422, "colour: Extra inputs"),
    ("POST", "/v1/recommendations", {"items": "50"}, 422, "items: Input should be a valid list"),
    ("POST", "/v1/recommendations", {"items": [None]}, 422, "items.0"),
    ("POST", "/v1/recommendations", [1, 2], 422, "body: Input should be"),
    ("POST", "/v1/recommendations", b"{not json", 422, "the body is not valid JSON"),
    ("POST", "/v1/recommendations", b"", 422, "the body is not valid JSON"),
    ("POST", "/v1/recommendations", {"users": ["{user}"] * TOO_MANY}, 422, "users: at most 256"),
    ("POST", "/v1/recommendations", {"items": ["{item}"] * 1001}, 422, "items: at most 1000"),
    ("POST", "/v1/recommendations", b" " * (64 * 1024 + 1), 413, "over 65536 bytes"),
    ("GET", "/v1/users/{user}/recommendations?k=1_0", None, 422, "not '1_0'"),
    ("GET", "/v1/users/{user}/recommendations?k=%20%202", None, 422, "not '  2'"),
    ("GET", "/v1/users/{user}/recommendations?k=%D9%A3", None, 422, "an integer, not"),
    ("GET", "/v1/users/{user}/recommendations?K=5", None, 422, "unknown query parameter 'K'"),
    ("GET", "/v1/users/{user}/recommendations?k=3&k=4", None, 422, "'k' given more than once"),
    ("GET", "/v1/users/{user}/recommendations?k=" + "9" * 5000, None, 422, "is out of range"),
    ("POST", "/v1/recommendations?k=3", {"items": ["{item}"]}, 422, "this endpoint takes none"),
    ("GET", "/v1/items/{item}?bogus=1", None, 422, "unknown query parameter 'bogus'"),
    ("GET", "/healthz?x=1", None, 422, "unknown query parameter 'x'"),
    ("GET", "/readyz?x=1", None, 422, "unknown query parameter 'x'"),
    ("GET", "/metrics?x=1", None, 422, "unknown query parameter 'x'"),
    ("GET", "/no/such/path", None, 404, "Not Found"),
    ("GET", "/healthz/", None, 404, "Not Found"),  # not a redirect built from the Host header
    ("GET", "/v1/users/{user}/recommendations/", None, 404, "Not Found"),
    ("DELETE", "/v1/items/{item}", None, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "detail"), ERRORS)
def test_errors_are_json_answers(server, core, method, path, body, status, detail):
    user, item = core.user_ids[0], core.item_ids[0]
    path = path.format(user=user, item=item)
    if isinstance(body, bytes):
        got = server.client.request(method, path, content=body)
    else:
        text = json.dumps(body).replace("{user}", user).replace("{item}", item)
        got = server.client.request(method, path, content=text if body is not None else None)
    assert got.status_code == status, got.text
    assert got.headers["content-type"] == "application/json"
    message = got.json()["detail"]
    assert detail in message and "\n" not in message
    assert "Traceback" not in got.text


def test_a_wrong_method_says_which_are_allowed_and_health_takes_head(server):
    wrong = server.client.put("/v1/recommendations")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    for path in ("/healthz", "/readyz"):
        head = server.client.head(path)
        assert head.status_code == 200 and head.content == b""
    paths = server.client.get("/openapi.json").json()["paths"]
    assert "text/plain" in next(iter(paths["/metrics"]["get"]["responses"]["200"]["content"]))
    assert "413" in paths["/v1/recommendations"]["post"]["responses"]
    assert "202" in paths["/admin/reload"]["post"]["responses"]


def test_a_body_over_the_limit_is_refused_chunked_too(server):
    def chunks():
        for _ in range(100):
            yield b" " * 1024

    before = server.client.get("/metrics").text
    got = server.client.post("/v1/recommendations", content=chunks())
    assert got.status_code == 413
    after = server.client.get("/metrics").text
    labels = {"route": "/v1/recommendations", "status": "413"}  # refused before routing
    grew = metric(after, "twotower_http_errors_total", **labels) - metric(
        before, "twotower_http_errors_total", **labels
    )
    assert grew == 1


def test_broken_requests_never_take_the_process_down(server, core):
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as conn:
            conn.sendall(raw)
            conn.settimeout(10)
            assert conn.recv(100).startswith(b"HTTP/1.1 400")
    for _ in range(3):  # clients that send half a request and vanish
        conn = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
        conn.sendall(
            b"POST /v1/recommendations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        )
        conn.close()
    assert server.process.poll() is None
    user = core.user_ids[0]
    assert server.client.get(f"/v1/users/{user}/recommendations").status_code == 200


def test_the_server_never_imports_torch(server, core):
    user = core.user_ids[0]
    for path in (f"/v1/users/{user}/recommendations", f"/v1/items/{core.item_ids[0]}", "/metrics"):
        assert server.client.get(path).status_code == 200
    assert server.client.post("/v1/recommendations", json={"users": [user]}).status_code == 200
    assert server.client.post("/admin/reload").status_code == 200  # loopback: allowed
    assert server.torch_modules() == []


# --- concurrency ------------------------------------------------------------------------


def test_concurrent_clients_get_the_sequential_answers(server, core):
    """8 clients x 200 requests, in shuffled orders, give what one client got one by one."""
    requests = []
    for j in range(200):
        user = core.user_ids[j % len(core.user_ids)]
        if j % 4 == 3:
            history = core.histories[user][: 1 + j % 6]
            requests.append(("POST", "/v1/recommendations", {"items": history, "k": 1 + j % 12}))
        else:
            requests.append(("GET", f"/v1/users/{user}/recommendations?k={1 + j % 12}", None))

    def call(client: httpx.Client, request) -> tuple[int, bytes]:
        method, path, body = request
        got = client.request(method, path, json=body)
        return got.status_code, got.content

    sequential = [call(server.client, request) for request in requests]
    assert all(status == 200 for status, _ in sequential)
    answers: dict[int, list] = {}

    def client_loop(number: int) -> None:
        order = list(range(len(requests)))
        random.Random(number).shuffle(order)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answers[number] = [(i, call(client, requests[i])) for i in order]

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(answers) == list(range(8))
    for number in range(8):
        assert len(answers[number]) == len(requests)
        for i, got in answers[number]:
            assert got == sequential[i], (number, requests[i])


# --- reload without downtime ------------------------------------------------------------


def test_reload_under_traffic_loses_no_request(bundle, bundle_b, tmp_path):
    """Traffic never stops while the folder flips between bundles A and B (POST and SIGHUP)
    and then goes bad: every request is answered, and wholly by one bundle."""
    served_folder = Path(shutil.copytree(bundle, tmp_path / "served"))
    a, b = version_of(bundle), version_of(bundle_b)
    cores = {a: load_bundle(bundle), b: load_bundle(bundle_b)}
    users = cores[a].user_ids
    expected = {
        version: {u: as_json(c.recommend(u)) for u in users} for version, c in cores.items()
    }
    headers = {"authorization": f"Bearer {TOKEN}"}
    env = {"TWOTOWER_ADMIN_TOKEN": TOKEN}
    with serving(served_folder, tmp_path / "serve.log", env=env) as server:
        stop, seen, failures = threading.Event(), [], []

        def traffic(offset: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                i = offset
                while not stop.is_set():
                    user = users[i % len(users)]
                    i += 1
                    try:
                        got = client.get(f"/v1/users/{user}/recommendations")
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    version = got.headers.get("x-bundle-version")
                    answers = expected.get(version, {})
                    if got.status_code != 200 or got.json()["items"] != answers.get(user):
                        failures.append((got.status_code, version, user))
                    seen.append(version)

        threads = [threading.Thread(target=traffic, args=(n * 7,)) for n in range(4)]
        for thread in threads:
            thread.start()

        def ready_version() -> str:
            return server.client.get("/readyz").json()["version"]

        def answered() -> int:
            count = len(seen)
            wait_for(lambda: len(seen) >= count + 20, what="traffic")
            return len(seen)

        try:
            answered()
            assert server.client.post("/admin/reload").status_code == 403  # no token
            for wrong in ("Bearer nope", f"Basic {TOKEN}", TOKEN, f"Bearer{TOKEN}"):
                answer = server.client.post("/admin/reload", headers={"authorization": wrong})
                assert answer.status_code == 403, wrong

            replace_folder(served_folder, bundle_b)
            reloaded = server.client.post("/admin/reload", headers=headers)
            assert reloaded.status_code == 200, reloaded.text
            assert reloaded.json()["previous"]["version"] == a
            assert reloaded.json()["current"]["version"] == b
            assert ready_version() == b
            answered()

            lower = {"authorization": f"bearer {TOKEN}"}  # the scheme in any case
            assert server.client.post("/admin/reload", headers=lower).status_code == 200

            replace_folder(served_folder, bundle)
            os.kill(server.process.pid, signal.SIGHUP)
            wait_for(lambda: ready_version() == a, what="the SIGHUP reload")
            answered()

            flip_a_byte(served_folder)
            refused = server.client.post("/admin/reload", headers=headers)
            assert refused.status_code == 409
            assert refused.json()["detail"].startswith(f"bundle refused, still serving version {a}")
            assert "is corrupted (sha256 does not match manifest)" in refused.json()["detail"]
            os.kill(server.process.pid, signal.SIGHUP)

            def refusals() -> float:
                text = server.client.get("/metrics").text
                return metric(text, "twotower_bundle_reloads_total", outcome="refused")

            wait_for(lambda: refusals() == 2, what="the refused SIGHUP reload")
            assert ready_version() == a
            answered()
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert failures == []
        assert {a, b} <= set(seen)
        metrics = server.client.get("/metrics").text
        assert metric(metrics, "twotower_bundle_reloads_total", outcome="ok") == 3
        assert metric(metrics, "twotower_bundle_info", version=a) == 1
        assert metric(metrics, "twotower_bundle_info", version=b) == 0
        assert server.process.poll() is None
        assert "reload refused, still serving version" in server.text()


def worker_pids(server: Served) -> set[str]:
    """The pids of the workers serving now (their bundle gauges, aggregated by pid)."""
    text = server.client.get("/metrics").text
    return {
        line.split('pid="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("twotower_bundle_info{") and line.endswith(" 1.0")
    }


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_stops_the_server_cleanly(bundle, tmp_path, workers):
    # what docker stop and systemd send: the server drains and the command ends normally
    with serving(bundle, tmp_path / "serve.log", "--workers", workers) as server:
        assert server.client.get("/healthz").status_code == 200
        stop(server.process)
        assert server.process.returncode == 0, server.text()
    assert "Traceback" not in server.text()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_ends_the_server_interrupted_with_workers_or_without(bundle, tmp_path, workers):
    with serving(bundle, tmp_path / "serve.log", "--workers", workers) as server:
        assert server.client.get("/healthz").status_code == 200
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=60) == 130, server.text()
    assert "interrupted" in server.text() and "Traceback" not in server.text()


def test_workers_serve_and_reload_one_by_one(bundle, core, tmp_path):
    served_folder = Path(shutil.copytree(bundle, tmp_path / "served"))
    with serving(served_folder, tmp_path / "serve.log", "--workers", "2") as server:
        wait_for(lambda: len(worker_pids(server)) == 2, what="two workers")
        before = worker_pids(server)
        for user in core.user_ids[:10]:
            got = server.client.get(f"/v1/users/{user}/recommendations")
            assert got.json() == {"user_id": user, "items": as_json(core.recommend(user))}
        text = server.client.get("/metrics").text  # summed over the workers
        route = "/v1/users/{user_id}/recommendations"
        assert metric(text, "twotower_http_requests_total", route=route, status="200") == 10

        reloaded = server.client.post("/admin/reload")
        assert reloaded.status_code == 202

        def replaced() -> bool:
            now = worker_pids(server)
            return len(now) == 2 and not now & before

        wait_for(replaced, what="both workers replaced")

        flip_a_byte(served_folder)
        assert server.client.post("/admin/reload").status_code == 409
        text = server.client.get("/metrics").text  # counted by the worker that checked
        assert metric(text, "twotower_bundle_reloads_total", outcome="ok") == 1
        assert metric(text, "twotower_bundle_reloads_total", outcome="refused") == 1
        restarted = worker_pids(server)
        os.kill(server.process.pid, signal.SIGHUP)  # a replacement fails; the old workers stay
        wait_for(lambda: "aborting the restart" in server.text(), what="the refused restart")
        assert worker_pids(server) == restarted
        user = core.user_ids[0]
        assert server.client.get(f"/v1/users/{user}/recommendations").status_code == 200


def test_a_crashed_worker_leaves_no_bundle_in_the_metrics(bundle, tmp_path):
    with serving(bundle, tmp_path / "serve.log", "--workers", "2") as server:
        wait_for(lambda: len(worker_pids(server)) == 2, what="two workers")
        crashed = next(iter(worker_pids(server)))
        os.kill(int(crashed), signal.SIGKILL)

        def replaced() -> bool:
            try:
                now = worker_pids(server)
            except httpx.TransportError:  # the client's connection was to the killed worker
                return False
            return len(now) == 2 and crashed not in now

        wait_for(replaced, what="the crashed worker replaced and gone from /metrics")
        assert f'pid="{crashed}"' not in server.client.get("/metrics").text


def test_a_worker_that_cannot_load_waits_longer_each_time(bundle, core, tmp_path):
    served_folder = Path(shutil.copytree(bundle, tmp_path / "served"))
    with serving(served_folder, tmp_path / "serve.log", "--workers", "2") as server:
        wait_for(lambda: len(worker_pids(server)) == 2, what="two workers")
        flip_a_byte(served_folder)  # damaged after the start: a replacement cannot load it
        crashed = next(iter(worker_pids(server)))
        os.kill(int(crashed), signal.SIGKILL)
        wait_for(lambda: "again in 2 s" in server.text(), what="the second, longer wait")
        log = server.text()
        assert log.count("not started") == 2 and "slot" in log and "again in 1 s" in log
        assert "is corrupted (sha256 does not match manifest)" in log
        user = core.user_ids[0]  # the other worker serves on
        for _ in range(4):
            assert server.client.get(f"/v1/users/{user}/recommendations").status_code == 200

        replace_folder(served_folder, bundle)  # repaired: the slot's next try loads it

        def replaced() -> bool:
            try:
                now = worker_pids(server)
            except httpx.TransportError:
                return False
            return len(now) == 2 and crashed not in now

        wait_for(replaced, what="the slot serving again")
    assert "Traceback" not in server.text()


# --- the command line -------------------------------------------------------------------


def test_serve_refuses_a_bad_bundle_before_listening(capsys, bundle, tmp_path):
    broken = Path(shutil.copytree(bundle, tmp_path / "broken"))
    flip_a_byte(broken)
    code, _, err = run(capsys, "serve", "--bundle", broken, "--port", "0")
    assert "is corrupted (sha256 does not match manifest)" in error_line(code, err)
    code, _, err = run(capsys, "serve", "--bundle", tmp_path / "absent")
    assert f"no bundle folder at {tmp_path / 'absent'}" in error_line(code, err)


def test_serve_refuses_an_empty_host(capsys, bundle):
    code, _, err = run(capsys, "serve", "--bundle", bundle, "--host", "", "--port", "0")
    assert error_line(code, err) == (
        "error: the host to listen on is empty; name one (0.0.0.0 for every interface)"
    )


def test_serve_refuses_a_busy_port(capsys, bundle):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, _, err = run(capsys, "serve", "--bundle", bundle, "--port", port)
    assert f"cannot listen on 127.0.0.1:{port}" in error_line(code, err)


def test_serve_help_lists_its_flags(capsys):
    with pytest.raises(SystemExit):
        run(capsys, "serve", "--help")
    out = capsys.readouterr().out
    for flag in ("--bundle", "--host", "--port", "--workers", "--retriever", "--threads"):
        assert flag in out


def test_only_loopback_clients_may_reload_without_a_token():
    def request(host: str) -> Request:
        return Request({"type": "http", "client": (host, 5000), "headers": []})

    assert loopback(request("127.0.0.1")) and loopback(request("::1"))
    assert not loopback(request("10.1.2.3")) and not loopback(request("testclient"))


# --- the load benchmark, in small ------------------------------------------------------


def test_the_serve_bench_checks_every_answer(bundle, tmp_path, capsys):
    code, out, _ = run(
        capsys, "bench", "serve", "--bundle", bundle, "--requests", "60", "--concurrency", "1,3",
        "--json", "--json-file", tmp_path / "serve.json", "--markdown-file", tmp_path / "serve.md",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert json.loads((tmp_path / "serve.json").read_text())["rows"] == result["rows"]
    assert [(r["retriever"], r["workers"], r["concurrency"]) for r in result["rows"]] == [
        ("exact", 1, 1),
        ("exact", 1, 3),
    ]
    for row in result["rows"]:
        assert (row["requests"], row["answered"], row["errors"], row["wrong"]) == (60, 60, 0, 0)
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["ratio"] == pytest.approx(row["rps"] / row["in_process_rps"])
        assert isinstance(row["meets_targets"], bool)
    markdown = (tmp_path / "serve.md").read_text()
    assert "| exact | 1 | 3 |" in markdown and "Targets at concurrency 8" in markdown
