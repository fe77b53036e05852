"""Data-parallel training on torch.distributed: the process group and the collectives it needs.

``torchrun`` starts one process per rank and tells each, through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), where it stands; :func:`session` joins the group it
describes: gloo on CPU, nccl on GPU (each rank on its own GPU, its local
rank). Outside torchrun there is no group, :data:`SINGLE` stands for the one
process, and nothing here communicates.

Every cross-rank exchange of the project is in this module. The one that
carries gradients, :class:`Shards.gather`, is written on plain
``all_gather`` and ``all_reduce`` rather than on
``torch.distributed.nn.functional.all_gather``, which torch 2.13 deprecates:
its backward sums every rank's gradient for this rank's rows, so a loss on
local rows against the gathered columns back-propagates into every rank's
rows, as one process's loss over the whole batch would.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from .errors import TwoTowerError, reason

T = TypeVar("T")


GROUP_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # what every rank needs
WAITING_NOTICE_S = 10.0  # a rank still waiting for the others after this long says so


@dataclass(frozen=True)
class Launch:
    """The group the environment describes (torchrun, or a launcher that sets the same)."""

    rank: int
    world_size: int
    local_rank: int
    address: str  # MASTER_ADDR:MASTER_PORT, where the ranks meet


def launch() -> Launch | None:
    """The group this process is a rank of, or None outside one.

    A description torch would fail on deep inside (a missing or non-numeric
    variable, a rank outside the world) is refused in words: a ``RANK`` or
    ``WORLD_SIZE`` left over in a shell otherwise makes a plain ``twotower
    fit`` fail with a traceback, or wait for ranks nobody started.
    """
    given = [name for name in ("RANK", "WORLD_SIZE") if name in os.environ]
    if not given:
        return None
    described = ", ".join(f"{name}={os.environ[name]!r}" for name in given)
    missing = [name for name in GROUP_VARIABLES if not os.environ.get(name)]
    if missing:
        raise TwoTowerError(
            f"the environment describes a torch.distributed launch ({described}) but lacks "
            f"{', '.join(missing)}: start every rank with torchrun, or unset "
            f"{' and '.join(given)} to train in one process"
        )
    rank, world_size = whole("RANK"), whole("WORLD_SIZE")
    local_rank, port = whole("LOCAL_RANK", "0"), whole("MASTER_PORT")
    if not rank < world_size:
        raise TwoTowerError(f"RANK={rank} is not below WORLD_SIZE={world_size}")
    if not 1 <= port <= 65535:
        raise TwoTowerError(f"MASTER_PORT must be a port from 1 to 65535, not {port}")
    return Launch(rank, world_size, local_rank, f"{os.environ['MASTER_ADDR']}:{port}")


def whole(name: str, default: str | None = None) -> int:
    """Environment variable ``name`` as a whole number >= 0 (``default`` when unset)."""
    text = os.environ.get(name, default)
    if text is None or not (text.isascii() and text.isdigit()):
        raise TwoTowerError(f"{name} must be a whole number, not {text!r}")
    return int(text)


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and writes (known before any setup)."""
    group = launch()
    return group is None or group.rank == 0


@dataclass(frozen=True)
class Context:
    """Where this process stands in the group; :data:`SINGLE` when there is none."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # of collectives
    group: Any = None  # the group of the loss gathers (DDP has the default group)

    @property
    def distributed(self) -> bool:
        return self.group is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def training_device(self, device: str) -> torch.device:
        """``--device``, except that ``cuda`` on a rank means that rank's own GPU."""
        if self.distributed and torch.device(device).type == "cuda":
            return self.device
        return torch.device(device)

    def shard(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` rows (sizes differ by at most one)."""
        bounds = np.linspace(0, count, self.world_size + 1).round().astype(int)
        return slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))


SINGLE = Context()


@contextlib.contextmanager
def session(device: str) -> Iterator[Context]:
    """Join the process group torchrun describes, for the block; :data:`SINGLE` outside it.

    The loss gathers run on a group of their own, so their collectives
    never interleave with the gradient all-reduces DistributedDataParallel
    launches on the default group during the same backward pass.
    """
    group = launch()
    if group is None:
        yield SINGLE
        return
    if torch.device(device).type == "cuda":
        backend, where = "nccl", own_gpu(group.local_rank)
        torch.cuda.set_device(where)
    else:
        backend, where = "gloo", torch.device("cpu")
    join(backend, group, where)
    try:
        yield Context(group.rank, group.world_size, where, dist.new_group(backend=backend))
    except RuntimeError as exc:
        if not lost_peer(exc):
            raise
        raise TwoTowerError(
            f"rank {group.rank} of {group.world_size} stopped: a collective failed "
            f"({reason(exc)[:300]}); another rank has most likely stopped or failed, and "
            "its own output says why"
        ) from exc
    finally:
        dist.destroy_process_group()


def join(backend: str, group: Launch, device: torch.device) -> None:
    """``init_process_group``, waited for from this thread while another one blocks in it.

    The rendezvous waits for every rank; blocked in it, a process takes no
    Ctrl-C or SIGTERM. Waiting here keeps both working, and a rank still
    waiting after ``WAITING_NOTICE_S`` says for what. (The waiting thread is
    a daemon: a process stopped meanwhile does not wait for it.)
    """
    failure: list[BaseException] = []

    def initialise() -> None:
        try:
            if device.type == "cuda":  # the current GPU is the thread's own
                torch.cuda.set_device(device)
            dist.init_process_group(backend)
        except BaseException as exc:  # handed to the main thread, which raises it
            failure.append(exc)

    worker = threading.Thread(target=initialise, name="twotower-rendezvous", daemon=True)
    worker.start()
    worker.join(WAITING_NOTICE_S)
    if worker.is_alive():
        print(
            f"rank {group.rank} of {group.world_size}: waiting at {group.address} for the "
            "other ranks (every rank must be started, with the same MASTER_ADDR and "
            "MASTER_PORT)",
            file=sys.stderr,
            flush=True,
        )
    while worker.is_alive():
        worker.join(0.5)
    if failure:
        raise failure[0]


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because the other side went away."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        marker in text for marker in ("gloo", "NCCL", "Connection reset", "Connection closed")
    )


def own_gpu(local_rank: int) -> torch.device:
    """The GPU of the rank with ``local_rank`` on its machine: nccl takes one per process.

    A local rank past the last GPU (more processes on a machine than it has
    GPUs) would fail inside CUDA; it is refused here, in words. Launches that
    give each process its GPU another way (``CUDA_VISIBLE_DEVICES`` per
    process) are not supported: every rank uses GPU ``LOCAL_RANK``.
    """
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise TwoTowerError(
            f"--device cuda gives every process a GPU of its own, but local rank {local_rank} "
            f"finds {count} GPU(s) on its machine: start at most as many processes per "
            "machine (--nproc-per-node) as it has GPUs, or train on CPU with gloo (--device cpu)"
        )
    return torch.device("cuda", local_rank)


def wrap(module: torch.nn.Module, context: Context) -> torch.nn.Module:
    """``module`` under DistributedDataParallel on a group, else ``module`` itself.

    Buffers are not re-synchronised at every step: the built-in towers' only
    buffer is the fixed genre table, the same on every rank. Every
    parameter must take part in every step (DDP's fast path; the built-in
    encoders' do).
    """
    if not context.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    options = inspect.signature(DistributedDataParallel).parameters
    # torch 2.13 renames broadcast_buffers, which still works but warns
    sync = "forward_sync_buffers" if "forward_sync_buffers" in options else "broadcast_buffers"
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, **{sync: False})


class _GatherRows(torch.autograd.Function):
    """Every rank's rows, concatenated in rank order; gradients go back to their rank."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, sizes: tuple[int, ...], rank: int, group: Any):
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        widest = max(sizes)
        padded = rows.new_zeros((widest, *rows.shape[1:]))  # all_gather needs equal shapes
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # rank s's loss gave a gradient for every rank's rows; this rank's rows get the sum
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None, None


def _row_counts(count: int, context: Context) -> tuple[int, ...]:
    """Every rank's ``count``, in rank order."""
    mine = torch.tensor([count], dtype=torch.int64, device=context.device)
    counts = [torch.empty_like(mine) for _ in range(context.world_size)]
    dist.all_gather(counts, mine, group=context.group)
    return tuple(int(c.item()) for c in counts)


@dataclass(frozen=True)
class Shards:
    """How one training batch is split over the ranks: rank r holds ``sizes[r]`` rows.

    Row i of this rank is row ``offset + i`` of the whole batch, the rows of
    every rank concatenated in rank order.
    """

    sizes: tuple[int, ...]
    rank: int
    group: Any

    @property
    def offset(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def share(self) -> float:
        """What a loss that is a mean over this rank's rows is weighed by.

        DistributedDataParallel averages gradients over the N ranks, so the
        mean over all M rows needs each rank's mean of its m rows times
        ``m * N / M``; on equal shards that is 1.
        """
        return self.sizes[self.rank] * len(self.sizes) / sum(self.sizes)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """[sum(sizes), ...]: every rank's ``rows[sizes[r], ...]``, with gradients."""
        return _GatherRows.apply(rows.contiguous(), self.sizes, self.rank, self.group)

    def stack(self, value: torch.Tensor) -> torch.Tensor:
        """[N, ...]: every rank's ``value`` of one shape, with gradients."""
        ones = (1,) * len(self.sizes)
        return _GatherRows.apply(value.unsqueeze(0).contiguous(), ones, self.rank, self.group)

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank: a draw the whole batch shares."""
        shared = tensor.clone()
        dist.broadcast(shared, src=dist.get_global_rank(self.group, 0), group=self.group)
        return shared


def shards(rows: int, context: Context) -> Shards | None:
    """The split of a batch of which this rank holds ``rows`` rows; None on one process."""
    if not context.distributed:
        return None
    return Shards(_row_counts(rows, context), context.rank, context.group)


def concatenate(values: np.ndarray | None, context: Context) -> np.ndarray | None:
    """Every rank's ``values`` (1-d int64), in rank order; None when any rank has None.

    None stands for a rank that could not compute its share (its scores
    were not finite): every rank then learns it and can fail alike, rather
    than wait for the missing rows.
    """
    if not context.distributed:
        return values
    counts = _row_counts(-1 if values is None else len(values), context)
    if min(counts) < 0:
        return None
    rows = torch.as_tensor(values, dtype=torch.int64).to(context.device)
    with torch.no_grad():
        gathered = _GatherRows.apply(rows, counts, context.rank, context.group)
    return gathered.cpu().numpy()


def together(work: Callable[[], T], context: Context) -> T:
    """``work()`` on every rank; when it raises ``TwoTowerError`` on any rank, every rank
    raises: a rank that failed alone would leave the others waiting in the next collective
    (for ever, across machines)."""
    if not context.distributed:
        return work()
    try:
        result, failure = work(), None
    except TwoTowerError as exc:
        result, failure = None, exc
    failed = concatenate(np.array([int(failure is not None)], dtype=np.int64), context)
    if failure is not None:
        raise failure
    if failed.any():
        ranks = ", ".join(str(rank) for rank in np.flatnonzero(failed))
        raise TwoTowerError(f"rank(s) {ranks} failed (its error says why); every rank stops")
    return result


def agree(fingerprint: Callable[[], str], context: Context, refusal: str) -> None:
    """Refuse, on every rank alike, a group whose ranks hold different ``fingerprint()``.

    ``fingerprint`` gives the sha256 hex digest of what must be the same on
    every rank (the settings, the data read), and is called only in a group;
    ``refusal`` is the message, with ``{ranks}`` for the ranks that differ
    from rank 0. Machines started with other flags, or reading their own
    copies of the files, would otherwise train one model on mismatched
    shards without a word.
    """
    if not context.distributed:
        return
    digest = fingerprint()
    every = concatenate(np.array([int(digest[:15], 16)], dtype=np.int64), context)
    differ = [str(rank) for rank, value in enumerate(every) if value != every[0]]
    if differ:
        raise TwoTowerError(refusal.format(ranks=", ".join(differ)))


def mean(value: float, context: Context) -> float:
    """The mean of ``value`` over the ranks."""
    if not context.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(total, group=context.group)
    return float(total.item()) / context.world_size


def decide(flags: Sequence[bool], context: Context) -> list[bool]:
    """Rank 0's ``flags`` on every rank: a decision taken once, for the whole group."""
    if not context.distributed:
        return list(flags)
    shared = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=context.device)
    dist.broadcast(shared, src=dist.get_global_rank(context.group, 0), group=context.group)
    return [bool(f) for f in shared.tolist()]
