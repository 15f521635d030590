"""Data-parallel trunk training: two gloo processes on the CPU take the steps of one process with the
whole batch, stay identical, resume, and only rank 0 writes; `torchrun ... -m pydcr train trunk` end to end."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist

from pydcr.cli import main
from pydcr.models import load
from pydcr.train import distributed, train_trunk
from pydcr.train import trunk as trunk_module
from test_train import TINY, toy_faces
from two_processes import free_port, run_two_processes

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

# Two epochs of four global batches of 8 (4 per process), flips on: the sampler's and the flips'
# split over the ranks both matter.
CONFIG = replace(TINY, epochs=2, batch_size=8)
STOP_AT = 5  # a step of the second epoch: only the first epoch's checkpoint survives


class Stop(Exception):
    pass


def stop_at(step):
    if step == STOP_AT:
        raise Stop


def state(run):
    return {**{f"trunk.{k}": v for k, v in run.trunk.state_dict().items()},
            **{f"head.{k}": v for k, v in run.head.state_dict().items()}}


def worker(rank, port, out_dir):
    """One of two ranks: an uninterrupted run, and a run killed mid-epoch then resumed, in shared folders."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    saved = []
    if rank != 0:  # count checkpoint writes by the other rank (there must be none)
        trunk_module.save_checkpoint = lambda path, state: saved.append(str(path))
    world = distributed.from_environment()
    with distributed.process_group(world, torch.device("cpu"), timeout_s=60):
        data, classes = toy_faces()
        whole = train_trunk(data, classes, CONFIG, f"{out_dir}/whole", progress=False)
        try:
            train_trunk(data, classes, CONFIG, f"{out_dir}/cut", progress=False, on_step=stop_at)
        except Stop:
            pass
        resumed = train_trunk(data, classes, CONFIG, f"{out_dir}/cut", progress=False)
    torch.save({"whole": state(whole), "resumed": state(resumed), "finished": resumed.finished,
                "other_rank_saves": saved}, f"{out_dir}/rank{rank}.pt")


def test_two_processes_take_the_steps_of_one_process(tmp_path):
    run_two_processes(worker, free_port(), str(tmp_path))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank1["other_rank_saves"] == []  # only rank 0 writes
    assert not (tmp_path / "whole" / "checkpoint.pt.tmp").exists()
    lines = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # one line per epoch, not per rank
    for run in ("whole", "resumed"):  # DDP keeps the ranks identical, bit for bit
        for key, value in rank0[run].items():
            assert torch.equal(value, rank1[run][key]), (run, key)
    assert rank0["finished"]
    for key, value in rank0["whole"].items():  # resuming a distributed run repeats it exactly
        assert torch.equal(value, rank0["resumed"][key]), key

    # One process with the whole batch of 8 takes the same steps, up to float rounding (the gradient
    # is averaged over two half-batch means instead of one mean over the batch).
    data, classes = toy_faces()
    torch.use_deterministic_algorithms(True)
    try:
        single = train_trunk(data, classes, CONFIG, tmp_path / "single", progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    for key, value in state(single).items():
        torch.testing.assert_close(rank0["whole"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    ddp_ckpt, single_ckpt = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)
                             for d in ("whole", "single"))
    assert ddp_ckpt["world_size"] == 2 and ddp_ckpt["epoch"] == single_ckpt["epoch"] == CONFIG.epochs
    # The centers move by the statistics of the whole batch, summed over the ranks.
    torch.testing.assert_close(ddp_ckpt["loss"]["center.centers"], single_ckpt["loss"]["center.centers"],
                               rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def small_pack(synthetic_pack):
    """16 synthetic 56 x 48 crops of 4 people (the demo preset's size)."""
    return synthetic_pack((56, 48))


def test_torchrun_command(small_pack, tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "pydcr", "train", "trunk", "--data", str(small_pack), "--out", str(out), "--preset", "demo",
               "--width", "0.125", "--batch-size", "8", "--epochs", "2", "--device", "cpu", "--quiet"]
    # cwd: outside the source folder, whose pydcr/ would shadow the installed one
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("pydcr train trunk:") == 1  # rank 0 reports
    model = load(out / "model.safetensors")
    assert model.provenance["processes"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.jsonl", "model.safetensors"]


TORCHRUN_ENV = {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


@pytest.mark.parametrize(
    "env,argv,message",
    [
        (TORCHRUN_ENV, ["trunk", "--batch-size", "8"], "does not split over 3 processes"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, ["trunk"], "LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"),
        ({**TORCHRUN_ENV, "RANK": "3"}, ["trunk"], "RANK 3 is not in [0, WORLD_SIZE 3)"),
        (TORCHRUN_ENV, ["branch", "--trunk", "RUN", "--size", "8"], "run it without torchrun"),
    ],
)
def test_torchrun_argument_errors(env, argv, message, small_pack, tmp_path, monkeypatch, capsys):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if argv[0] == "trunk":
        argv = [*argv, "--out", str(tmp_path / "run"), "--preset", "demo"]
    argv = ["train", *[str(tmp_path) if a == "RUN" else a for a in argv], "--data", str(small_pack)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_world_helpers_without_a_process_group():
    world = distributed.current_world()
    assert world == distributed.World() and world.is_main and not world.distributed
    assert world.any(True) and not world.any(False) and world.sum([1, 2.5]) == [1.0, 2.5]
    values = torch.arange(6)
    assert torch.equal(world.shard(values), values)
    two = [distributed.World(r, 2, r).shard(values).tolist() for r in (0, 1)]
    assert two == [[0, 2, 4], [1, 3, 5]]
    assert distributed.from_environment({}) is None
