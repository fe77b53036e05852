"""Data-parallel training on real gloo processes (twotower/distributed.py).

Two ranks of batch B must train as one process of batch 2B: the same loss
and the same gradients after one step, for every built-in loss. Where GPUs
exist the same check runs on nccl, one rank per GPU (at most two; on one
GPU a single nccl rank still takes every collective through nccl). A fit under
torchrun, two "machines" on loopback with one rank each, must write
artifacts that load and recommend, and refuse to train when the machines
were started with other settings or read other data. (A one-machine launch differs only in
torchrun's rendezvous; each launch costs seconds of interpreter start-up.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rank_step
import torch
from helpers import TINY, write_interactions

import twotower
from twotower import distributed

TESTS = Path(__file__).resolve().parent
# in float64 the two sides differ by rounding alone (~1e-15); the genre table is a float32
# buffer, so those cases run without genres, and the float32 case with them
EXACT = {"dtype": "float64", "use_item_features": False}
CASES = {
    "inbatch-softmax": {**EXACT, "loss": "inbatch-softmax", "mask_accidental_hits": True},
    "logq-softmax": {**EXACT, "loss": "logq-softmax"},
    "full-softmax": {**EXACT, "loss": "full-softmax"},
    "mixed-negatives": {
        **EXACT,
        "loss": "mixed-negatives",
        "num_negatives": 16,
        "mask_accidental_hits": True,
    },
    "prefix logq-softmax": {**EXACT, "loss": "logq-softmax", "train_mode": "prefix"},
    "float32 logq-softmax": {"dtype": "float32", "loss": "logq-softmax"},
}
BATCH = 16  # windows (or prefix examples) of the whole batch: 8 per rank


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_all(processes: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    """Every process's stdout once all have ended; each must exit 0."""
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, err[-3000:]
        outputs.append(out)
    return outputs


def environment(**variables: object) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in variables.items()}}


GPUS = torch.cuda.device_count()
WORLDS = [  # (device, ranks): nccl takes a GPU of its own per rank
    pytest.param(("cpu", 2), id="gloo"),
    pytest.param(
        ("cuda", min(2, GPUS)), id="nccl", marks=pytest.mark.skipif(not GPUS, reason="no GPU")
    ),
]


@pytest.fixture(scope="module", params=WORLDS)
def steps(request, tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """(N ranks, 1 process) loss and gradients of every case's first step."""
    device, world = request.param
    cases = [
        {"name": str(i), "dtype": settings.pop("dtype"), "settings": settings}
        for i, settings in enumerate(dict(case) for case in CASES.values())
    ]
    folders = [tmp_path_factory.mktemp(f"{device}-{side}") for side in ("ranks", "single")]
    jobs = [{"device": device, "folder": str(f), "batch": BATCH, "cases": cases} for f in folders]
    port = free_port()
    ranks = [
        subprocess.Popen(
            [sys.executable, str(TESTS / "rank_step.py"), json.dumps(jobs[0])],
            env=environment(
                RANK=rank,
                LOCAL_RANK=rank,
                WORLD_SIZE=world,
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    rank_step.main(jobs[1])  # meanwhile, the one process, here
    wait_all(ranks)

    def read(folder: Path, case: dict) -> dict:
        with np.load(folder / f"{case['name']}.npz", allow_pickle=False) as arrays:
            return dict(arrays)

    return {
        name: (read(folders[0], case), read(folders[1], case))
        for name, case in zip(CASES, cases, strict=True)
    }


@pytest.mark.parametrize("case", list(CASES))
def test_n_ranks_of_batch_b_step_like_one_process_of_batch_nb(steps, case):
    ranks, single = steps[case]
    assert set(ranks) == set(single)
    assert len([name for name in single if name.startswith("grad:")]) > 10
    # float32 sums in another order differ by its rounding: 1e-6 of the largest value
    scale = (
        1.0 if CASES[case]["dtype"] == "float64" else max(np.abs(g).max() for g in single.values())
    )
    assert float(ranks["loss"]) == pytest.approx(float(single["loss"]), abs=1e-6 * scale)
    for name, expected in single.items():
        assert np.abs(ranks[name] - expected).max() <= 1e-6 * scale, name
        if name.startswith("grad:item_tower.item_embedding"):
            assert np.abs(expected).max() > 1e-4  # in-batch negatives reach the item table


def fit_argv(data_dir: Path) -> list[str]:
    argv = ["fit", "--dataset", "synthetic", "--data-dir", str(data_dir), "--epochs", "2"]
    argv += ["--max-history-len", "8", "--no-progress", "--json"]
    for key, value in TINY.items():
        argv += ["--set", f"{key}={value}"]
    return argv


def check_artifacts(data_dir: Path, printed: str) -> None:
    """The folder is complete and verified, loads, recommends, and holds what was printed."""
    result = json.loads(printed)  # rank 0 alone printed: one JSON document
    folder = data_dir / "artifacts"
    assert Path(result["artifacts_dir"]) == folder
    assert json.loads((folder / "test_metrics.json").read_text()) == result["test"]
    assert len((folder / "train_log.jsonl").read_text().splitlines()) >= 1
    recommender = twotower.load(folder)  # every sha256 verified
    assert len(recommender.recommend(recommender.user_ids[0], k=5)) == 5
    assert not list(data_dir.glob(".artifacts.*"))  # no staging folder or lock left


def torchrun(*arguments: object) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *map(str, arguments)]


def two_nodes(argvs: list[list[str]], cwds: list[Path]) -> list[subprocess.Popen]:
    """``twotower ARGV`` under two torchrun launches, one rank each, every launch with its
    own argv and folder, meeting at one rendezvous on loopback as two machines would."""
    endpoint = f"127.0.0.1:{free_port()}"
    launch = torchrun("--nnodes", 2, "--nproc-per-node", 1, "--rdzv-backend", "c10d")
    launch += ["--rdzv-endpoint", endpoint, "--rdzv-id", "loopback", "-m", "twotower"]
    return [
        subprocess.Popen(
            [*launch, *argv],
            cwd=cwd,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv, cwd in zip(argvs, cwds, strict=True)
    ]


def test_a_two_rank_fit_on_two_loopback_nodes_writes_artifacts_that_load(tmp_path):
    """Rank 0 alone writes the artifacts, and prints."""
    argvs = [fit_argv(tmp_path), [*fit_argv(tmp_path), "--num-threads", "1"]]  # may differ
    launches = two_nodes(argvs, [tmp_path] * 2)
    printed = [out for out in wait_all(launches) if out.strip()]
    assert len(printed) == 1  # one of the two nodes holds rank 0
    check_artifacts(tmp_path, printed[0])


@pytest.mark.parametrize("differs", ["settings", "data", "missing"])
def test_machines_started_otherwise_or_reading_other_data_are_refused_in_words(tmp_path, differs):
    """Each machine reads its own copy of the file, at the same relative path; a rank whose
    settings or data differ from rank 0's fails the run on every rank, and nothing is left."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
        write_interactions(node / "ratings.csv")
    argv = ["fit", "--dataset", "files", "--interactions", "ratings.csv", "--epochs", "1"]
    argvs = [[*argv, "--no-progress"], [*argv, "--no-progress"]]
    if differs == "settings":
        argvs[1] += ["--lr", "0.002"]
    elif differs == "missing":  # node 1 fails alone; node 0 must not wait for it
        (nodes[1] / "ratings.csv").unlink()
    else:  # node 1's copy holds user 1's first two ratings in the other order
        header, first, second, *rest = (nodes[1] / "ratings.csv").read_text().splitlines()
        swapped = [first.rsplit(",", 1)[0] + "," + second.rsplit(",", 1)[1]]
        swapped.append(second.rsplit(",", 1)[0] + "," + first.rsplit(",", 1)[1])
        (nodes[1] / "ratings.csv").write_text("\n".join([header, *swapped, *rest]) + "\n")
    outcomes = []
    for launch in two_nodes(argvs, nodes):
        _, err = launch.communicate(timeout=240)
        outcomes.append((launch.returncode, err))
    assert all(code != 0 for code, _ in outcomes)
    said = {
        "settings": ["error: the settings of rank(s) 1 differ from rank 0's"],
        "data": ["error: the data rank(s) 1 read differ from rank 0's"],
        "missing": ["error: file not found: ratings.csv", "failed (its error says why)"],
    }[differs]
    for line in said:
        assert any(line in err for _, err in outcomes), (line, [e[-1500:] for _, e in outcomes])
    assert not [path for node in nodes for path in node.rglob("*artifacts*")]


def test_a_parameter_without_gradient_is_refused_by_name_under_torchrun(tmp_path):
    """DistributedDataParallel would fail the second step inside torch; the first is refused."""
    launch = torchrun("--standalone", "--nproc-per-node", 2, TESTS / "rank_fit.py")
    ranks = subprocess.run(
        [*launch, *fit_argv(tmp_path)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert ranks.returncode != 0
    assert (
        "error: under torchrun every parameter must take part in every step, but "
        "model.user_tower.spare got no gradient" in ranks.stderr
    ), ranks.stderr[-2000:]
    assert "finished reduction" not in ranks.stderr  # the error torch would give
    assert not list(tmp_path.rglob("*artifacts*"))


def test_a_rank_without_a_gpu_of_its_own_is_refused_in_words(monkeypatch):
    """nccl takes one GPU per process: a rank past the last GPU fails before any rendezvous."""
    local_rank = torch.cuda.device_count()  # one more process on this machine than GPUs
    for name, value in {
        "RANK": local_rank,
        "LOCAL_RANK": local_rank,
        "WORLD_SIZE": local_rank + 1,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": free_port(),
    }.items():
        monkeypatch.setenv(name, str(value))
    refused = pytest.raises(twotower.TwoTowerError, match=f"local rank {local_rank} finds")
    with refused, distributed.session("cuda"):
        pass


# --- a launch environment that is partial, invalid, waiting or losing a rank -------------

LAUNCH = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"RANK": None, "MASTER_ADDR": None, "MASTER_PORT": None}, "lacks RANK, MASTER_ADDR"),
        ({"WORLD_SIZE": None}, "(RANK='0') but lacks WORLD_SIZE: start every rank with torchrun"),
        ({"RANK": "x"}, "RANK must be a whole number, not 'x'"),
        ({"LOCAL_RANK": "-1"}, "LOCAL_RANK must be a whole number, not '-1'"),
        ({"RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
        ({"MASTER_PORT": "99999"}, "MASTER_PORT must be a port from 1 to 65535, not 99999"),
        ({"MASTER_ADDR": ""}, "lacks MASTER_ADDR"),
    ],
)
def test_a_partial_or_invalid_launch_environment_is_refused_in_words(monkeypatch, changes, said):
    """A RANK or WORLD_SIZE left in a shell must not make a plain fit fail inside torch."""
    for name, value in {**LAUNCH, **changes}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(twotower.TwoTowerError, match=re.escape(said)):
        distributed.launch()
    with pytest.raises(twotower.TwoTowerError, match=re.escape(said)):
        distributed.is_main_process()


def test_outside_a_launch_the_process_is_the_main_one(monkeypatch):
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    assert distributed.launch() is None and distributed.is_main_process()
    for name, value in {**LAUNCH, "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    assert distributed.launch() == distributed.Launch(1, 2, 1, "127.0.0.1:29500")
    assert not distributed.is_main_process()


WAITING_RANK = """
import sys
from twotower import cli, distributed
distributed.WAITING_NOTICE_S = 0.2
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_rank_waiting_for_the_others_says_so_and_stops_on_sigterm(tmp_path):
    """Blocked in the rendezvous a process takes no signal; the wait must not be."""
    variables = {**LAUNCH, "MASTER_PORT": free_port()}
    rank = subprocess.Popen(
        [sys.executable, "-c", WAITING_RANK, *fit_argv(tmp_path)],
        env=environment(**variables),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    notice = f"rank 0 of 2: waiting at 127.0.0.1:{variables['MASTER_PORT']} for the other ranks"
    lines = []
    for line in rank.stderr:  # the notice comes once the rank is in the rendezvous
        lines.append(line)
        if notice in line:
            break
    assert any(notice in line for line in lines), lines
    rank.send_signal(signal.SIGTERM)
    _, err = rank.communicate(timeout=30)
    assert rank.returncode == 128 + signal.SIGTERM and "terminated" in err, err[-2000:]
    assert not list(tmp_path.rglob("*artifacts*"))


LOSING_RANK = """
import os
import torch
import torch.distributed as dist
from twotower import distributed
from twotower.errors import TwoTowerError
try:
    with distributed.session("cpu") as context:
        if context.rank == 1:
            os._exit(3)  # gone without a word, as a killed rank is
        dist.all_reduce(torch.ones(4), group=context.group)
        dist.all_reduce(torch.ones(4), group=context.group)
except TwoTowerError as exc:
    print(exc)
"""


def test_a_rank_that_loses_a_peer_mid_collective_says_so_in_one_line():
    port = free_port()
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", LOSING_RANK],
            env=environment(**{**LAUNCH, "RANK": rank, "MASTER_PORT": port}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    (out, err), _ = [rank.communicate(timeout=120) for rank in ranks]
    assert ranks[1].returncode == 3
    assert ranks[0].returncode == 0, err[-2000:]
    assert out.startswith("rank 0 of 2 stopped: a collective failed ("), out
    assert "another rank has most likely stopped or failed" in out and out.count("\n") == 1
