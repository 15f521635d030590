"""Ctrl-C or SIGTERM during training: the run saves a checkpoint and returns, and resumes to the
uninterrupted result; a second signal stops at once."""

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
