"""Denormal floats flushed to zero on every CPU thread torch computes on (pydcr.denormals)."""

import pytest
import torch

from pydcr.denormals import denormals_flushed, flushes_denormals, set_flush_denormal

TINY = 2e-39  # a float32 denormal; half of it is one too, unless flushed to 0


@pytest.fixture(autouse=True)
def two_threads_unflushed():
    if not torch.set_flush_denormal(False) or flushes_denormals() is None:
        pytest.skip("pydcr sets the pool's mode on x86 only")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    set_flush_denormal(False)
    try:
        yield
    finally:
        set_flush_denormal(False)
        torch.set_num_threads(threads)


def flushed_fraction() -> float:
    """The fraction of a large product flushed to 0: torch splits it over its pool threads."""
    return ((torch.full((1 << 20,), TINY) * 0.5) == 0).double().mean().item()


def test_every_pool_thread_flushes():
    assert flushed_fraction() == 0.0
    assert set_flush_denormal(True) and flushes_denormals()
    assert flushed_fraction() == 1.0  # torch.set_flush_denormal alone flushes the calling thread's share only
    a = torch.full((256, 256), 1e-20)
    assert torch.count_nonzero(a @ a) == 0  # the matmul's threads too
    assert set_flush_denormal(False) and not flushes_denormals()
    assert flushed_fraction() == 0.0


def test_the_block_restores_the_mode_it_found():
    with denormals_flushed():
        assert flushed_fraction() == 1.0
    assert flushed_fraction() == 0.0 and not flushes_denormals()
    with pytest.raises(KeyError), denormals_flushed():
        raise KeyError
    assert flushed_fraction() == 0.0  # also on the way out of an exception
    with denormals_flushed(False):
        assert flushed_fraction() == 0.0
    set_flush_denormal(True)
    with denormals_flushed():  # nested in a flushing caller: leaves it flushing
        pass
    assert flushed_fraction() == 1.0 and flushes_denormals()
    with denormals_flushed(False):  # disabled: leaves a setting made outside alone
        assert flushed_fraction() == 1.0
