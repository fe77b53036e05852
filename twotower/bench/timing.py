"""Timing helpers: thread pinning, percentiles, interleaved runs, stage peaks, machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from ..artifacts import library_versions


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[dict[str, int]]:
    """Fix torch's and the BLAS libraries' thread counts for the block; report them."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield {"torch": threads, "blas": threads, "onnxruntime_intra_op": threads}
    finally:
        torch.set_num_threads(before)


def milliseconds(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return (time.perf_counter() - started) * 1000.0


def interleaved(
    calls: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 3,
    seed: int = 0,
    burst: int = 1,
) -> dict[str, list[float]]:
    """Time every call ``repeats`` times, visiting them in a new random order each round.

    Interleaving spreads a noisy neighbour's load over all contenders instead
    of penalising whichever one happened to run during it. With ``burst > 1``
    each visit makes one untimed call and then times ``burst`` calls in a row,
    so a contender is measured with warm caches, as a server answering a
    stream of requests runs, not right after another contender evicted them.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for _ in range(-(-repeats // burst)):
        rng.shuffle(names)
        for name in names:
            if burst > 1:
                calls[name]()
            samples[name].extend(milliseconds(calls[name]) for _ in range(burst))
    return samples


def p50_p99(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


@contextlib.contextmanager
def stage_peak(record: dict[str, float], interval: float = 0.005) -> Iterator[None]:
    """Seconds and resident memory of the block, written into ``record``.

    ``peak_mib`` is the highest resident set size seen while the block ran
    (sampled every ``interval`` seconds by a thread, so a spike shorter than
    that can be missed), ``added_mib`` how far that is above the size at its
    start: what the stage needs on top of what the process already holds.
    """
    import psutil

    process = psutil.Process()
    start = peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(interval):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        peak = max(peak, process.memory_info().rss)
        record.update(seconds=seconds, peak_mib=peak / 2**20, added_mib=(peak - start) / 2**20)


def machine() -> dict[str, object]:
    import psutil

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def environment(threads: dict[str, int]) -> dict[str, object]:
    return {"machine": machine(), "versions": library_versions(), "threads": threads}
