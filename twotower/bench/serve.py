"""Serve suite: `twotower serve` under HTTP load, beside the in-process recommend rate.

For each retriever and worker count, a `twotower serve` process (torch-free, one
user-tower thread per worker) listens on a free loopback port. This process is the
load generator: C clients on one asyncio loop, each on its own keep-alive
connection, ask ``GET /v1/users/{id}/recommendations?k=10`` for the bundle's users
in turn, each sending its next request when its last answer is in, until a fixed
number of answers came back (after a warm-up of ``WARMUP`` requests). Every answer
is then compared with ``load_bundle(...).recommend`` in this process. Beside each
server, the in-process rate: the same calls on one thread here, before and after
its HTTP runs, with the machine otherwise as idle; the ratio is HTTP requests/s
over that rate.

The client reads HTTP/1.1 itself (status line, Content-Length, body) rather than
through httpx, whose async client took about 6 ms per request here at
concurrency 1 against a server that answers in about 1 ms: it measured itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..serving import load_bundle
from .timing import environment

K = 10
WARMUP = 200  # requests per concurrency before the timed ones
TARGETS = {"concurrency": 8, "p99_ms": 10.0, "ratio": 0.5}  # issue 12's done-when
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --- a minimal HTTP/1.1 client ------------------------------------------------------------


class Connection:
    """One keep-alive connection: ``get(path) -> (status, body)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length:")
        )
        return int(lines[0].split(b" ", 2)[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def get_once(port: int, path: str) -> tuple[int, bytes]:
    connection = await Connection.open(port)
    try:
        return await connection.get(path)
    finally:
        connection.close()


async def load(port: int, paths: Sequence[str], concurrency: int, count: int) -> dict[str, Any]:
    """``count`` GETs of ``paths`` in turn from ``concurrency`` clients, after a warm-up:
    latencies (s), wall time, failures, and each answer's (path index, status, body)."""
    connections = [await Connection.open(port) for _ in range(concurrency)]
    issued = 0
    latencies: list[float] = []
    answers: list[tuple[int, int, bytes]] = []
    failures: list[str] = []

    async def client(connection: Connection, total: int, timed: bool) -> None:
        nonlocal issued
        while issued < total:
            i = issued
            issued += 1
            started = time.perf_counter()
            try:
                status, body = await connection.get(paths[i % len(paths)])
            except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as exc:
                failures.append(repr(exc))
                return
            if timed:
                latencies.append(time.perf_counter() - started)
                answers.append((i % len(paths), status, body))

    try:
        await asyncio.gather(*(client(c, WARMUP, False) for c in connections))
        issued = 0
        started = time.perf_counter()
        await asyncio.gather(*(client(c, count, True) for c in connections))
        wall = time.perf_counter() - started
    finally:
        for connection in connections:
            connection.close()
    return {"latencies": latencies, "wall": wall, "failures": failures, "answers": answers}


def on_loop(coroutine):
    """Run ``coroutine`` on uvloop when installed (the server's loop too): the load
    generator shares the cores with the server, so the less it costs the better."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


# --- the server -------------------------------------------------------------------------


@contextlib.contextmanager
def server(bundle: Path, retriever: str, workers: int) -> Iterator[int]:
    """`twotower serve` on a free loopback port, every worker ready: yields the port."""
    argv = [sys.executable, "-m", "twotower", "serve", "--bundle", str(bundle), "--port", "0"]
    argv += ["--json", "--retriever", retriever, "--workers", str(workers)]
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **ONE_THREAD}
        )
        try:
            line = process.stdout.readline()
            if not line:
                log.seek(0)
                raise RuntimeError(f"twotower serve did not start:\n{log.read()}")
            port = json.loads(line)["port"]
            deadline = time.monotonic() + 120
            while serving_workers(port) < workers:
                if time.monotonic() > deadline or process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"twotower serve is not ready:\n{log.read()}")
                time.sleep(0.1)
            yield port
        finally:
            stop(process)
            process.stdout.close()


def stop(process: subprocess.Popen, grace: float = 30) -> None:
    """End a server process: SIGTERM (uvicorn drains its requests), SIGKILL after ``grace`` s."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def serving_workers(port: int) -> int:
    """How many workers have a bundle loaded (the bundle gauges of /metrics); 0 if none."""
    try:
        status, body = on_loop(get_once(port, "/metrics"))
    except OSError:
        return 0
    lines = body.decode().splitlines() if status == 200 else []
    return sum(
        1 for line in lines if line.startswith("twotower_bundle_info{") and line[-3:] == "1.0"
    )


# --- the suite ----------------------------------------------------------------------------


def in_process_rate(core, users: Sequence[str], retriever: str, count: int) -> float:
    """``recommend`` calls per second on this thread, for ``users`` in turn."""
    for user in users[:WARMUP]:
        core.recommend(user, k=K, retriever=retriever)
    started = time.perf_counter()
    for i in range(count):
        core.recommend(users[i % len(users)], k=K, retriever=retriever)
    return count / (time.perf_counter() - started)


def answer(core, user: str, retriever: str) -> dict[str, Any]:
    """What the server must answer for ``user``: ``recommend --json``'s shape."""
    items = core.recommend(user, k=K, retriever=retriever)
    return {"user_id": user, "items": [item.to_dict() for item in items]}


def row(measured: dict[str, Any], expected: list[dict], count: int) -> dict[str, Any]:
    latencies = np.array(measured["latencies"]) * 1000.0
    errors = len(measured["failures"]) + sum(1 for _, s, _ in measured["answers"] if s != 200)
    wrong = sum(
        1
        for i, status, body in measured["answers"]
        if status == 200 and json.loads(body) != expected[i]
    )
    p50, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 95, 99))
    return {
        "requests": count,
        "answered": len(measured["answers"]),
        "errors": errors,
        "wrong": wrong,
        "rps": len(measured["answers"]) / measured["wall"],
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
    }


def run(
    bundle: Path,
    requests: int = 3000,
    concurrency: Sequence[int] = (1, 8, 32),
    workers: Sequence[int] = (1,),
    retrievers: Sequence[str] | None = None,
    notify: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    bundle = Path(bundle)
    core = load_bundle(bundle, threads=1)
    users = list(core.user_ids)
    paths = [f"/v1/users/{user}/recommendations?k={K}" for user in users]
    rows = []
    with threadpool_limits(limits=1):
        for retriever in retrievers or [core.default_retriever]:
            expected = [answer(core, user, retriever) for user in users]
            for count_workers in workers:
                notify(f"{retriever}, {count_workers} worker(s): in-process rate")
                before = in_process_rate(core, users, retriever, requests)
                measured = {}
                with server(bundle, retriever, count_workers) as port:
                    for clients in concurrency:
                        notify(f"{retriever}, {count_workers} worker(s), concurrency {clients}")
                        measured[clients] = on_loop(load(port, paths, clients, requests))
                after = in_process_rate(core, users, retriever, requests)
                in_process = (before + after) / 2
                for clients, result in measured.items():
                    found = row(result, expected, requests)
                    rows.append(
                        {
                            "retriever": retriever,
                            "workers": count_workers,
                            "concurrency": clients,
                            **found,
                            "in_process_rps": in_process,
                            "in_process_rps_before_after": [before, after],
                            "ratio": found["rps"] / in_process,
                        }
                    )
    for found in rows:
        found["meets_targets"] = (
            found["errors"] == 0
            and found["wrong"] == 0
            and found["p99_ms"] < TARGETS["p99_ms"]
            and found["ratio"] >= TARGETS["ratio"]
        )
    threads = {"server_user_tower": 1, "blas": 1, "onnxruntime_intra_op": 1}
    return {
        **environment(threads),
        "bundle": str(bundle),
        "users": len(users),
        "items": len(core.item_ids),
        "k": K,
        "warmup": WARMUP,
        "targets": TARGETS,
        "rows": rows,
    }
