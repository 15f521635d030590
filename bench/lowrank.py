"""The strongest pure-torch form of bicubic resampling on CPU and GPU: each axis's resize as a
matrix, read off the reference once per shape, applied as matrix products (BLAS / cuBLAS).

    resize:  M_h X M_w^T                         (M: the out x in matrix of one axis)
    degrade: U_h (D_h X D_w^T) U_w^T             (D: down to the low size, U: back up)
"""

from __future__ import annotations

import torch

from pydcr import reference


def axis_matrix(n: int, m: int, antialias: bool, dtype, device) -> torch.Tensor:
    """The m x n matrix of resizing one axis from n to m, read off the reference."""
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, n, 1)
    cols = reference.resize(eye, (m, 1), antialias=antialias)  # column j = image of basis vector j
    return cols.reshape(n, m).t().contiguous().to(dtype=dtype, device=device)


class LowRankResize:
    """resize(x, size) of N x C x H x W batches of one shape, as two matrix products."""

    def __init__(self, shape, size, antialias, dtype, device):
        h, w = shape[-2:]
        self.mh = axis_matrix(h, size[0], antialias, dtype, device)
        self.mw = axis_matrix(w, size[1], antialias, dtype, device)

    def __call__(self, x):
        return self.mh @ x.to(self.mh.dtype) @ self.mw.t()


class LowRankDegrade:
    """degrade(x, k) of N x C x H x W batches of one shape, as four matrix products."""

    def __init__(self, shape, k, antialias, dtype, device):
        h, w = shape[-2:]
        self.dh, self.dw = axis_matrix(h, k, antialias, dtype, device), axis_matrix(w, k, antialias, dtype, device)
        self.uh, self.uw = axis_matrix(k, h, antialias, dtype, device), axis_matrix(k, w, antialias, dtype, device)

    def __call__(self, x):
        x = x.to(self.dh.dtype)
        return self.uh @ ((self.dh @ x @ self.dw.t()) @ self.uw.t())
