"""Ctrl-C or SIGTERM during training: the run saves a checkpoint and returns, and resumes to the
uninterrupted result; a second signal stops at once."""

import json
import os
import signal

import pytest
import torch

from pydcr.train import train_trunk
from test_train import TINY, toy_faces

STEPS_PER_EPOCH = 4  # toy_faces' 32 images in batches of 8


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_the_run_resumes(tmp_path, deterministic, sig):
    data, classes = toy_faces()
    before = signal.getsignal(sig)
    whole = train_trunk(data, classes, TINY, tmp_path / "whole", progress=False)

    def signal_at_step_5(step):
        if step == 5:
            os.kill(os.getpid(), sig)

    cut = train_trunk(data, classes, TINY, tmp_path / "cut", progress=False, on_step=signal_at_step_5)
    assert not cut.finished and signal.getsignal(sig) is before
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert (saved["epoch"], saved["step"]) == divmod(5 + 1, STEPS_PER_EPOCH)  # after the step it was in
    resumed = train_trunk(data, classes, TINY, tmp_path / "cut", progress=False)
    assert resumed.finished
    for (k, a), (_, b) in zip(whole.trunk.state_dict().items(), resumed.trunk.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_a_second_signal_stops_at_once(tmp_path):
    data, classes = toy_faces()
    before = signal.getsignal(signal.SIGINT)

    def impatient(step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train_trunk(data, classes, TINY, tmp_path, progress=False, on_step=impatient)
    assert signal.getsignal(signal.SIGINT) is before
    assert not (tmp_path / "checkpoint.pt").exists()  # stopped before the step's checkpoint


def _lines(folder):
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("stop_at", [2, STEPS_PER_EPOCH - 1])  # mid-epoch; the epoch's last step
def test_a_stopped_run_logs_each_epoch_once_as_the_uninterrupted_run(tmp_path, deterministic, stop_at):
    data, classes = toy_faces()
    train_trunk(data, classes, TINY, tmp_path / "whole", progress=False)

    def signal_at(step):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)

    cut = train_trunk(data, classes, TINY, tmp_path / "cut", progress=False, on_step=signal_at)
    assert not cut.finished and cut.epochs_done == (stop_at + 1) // STEPS_PER_EPOCH
    assert len(_lines(tmp_path / "cut")) == cut.epochs_done  # an epoch ended by the stop is logged
    assert train_trunk(data, classes, TINY, tmp_path / "cut", progress=False).finished
    whole, resumed = _lines(tmp_path / "whole"), _lines(tmp_path / "cut")
    assert [line["epoch"] for line in resumed] == [1, 2]
    for a, b in zip(whole, resumed):  # the figures of the whole epoch, not of its part after the resume
        assert {k: v for k, v in a.items() if k != "images_per_s"} == {k: v for k, v in b.items() if k != "images_per_s"}


def test_a_resume_drops_the_lines_of_epochs_it_trains_again(tmp_path):
    # Killed between an epoch's line and its checkpoint: the line is written again on resume, once.
    data, classes = toy_faces()

    def signal_at_the_first_epochs_end(step):
        if step == STEPS_PER_EPOCH - 1:
            os.kill(os.getpid(), signal.SIGINT)

    assert not train_trunk(data, classes, TINY, tmp_path, progress=False, on_step=signal_at_the_first_epochs_end).finished
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "loss": 9.0}) + "\n")
    train_trunk(data, classes, TINY, tmp_path, progress=False)
    assert [line["epoch"] for line in _lines(tmp_path)] == [1, 2] and _lines(tmp_path)[1]["loss"] != 9.0
