"""How many pixels of face an upscaled image really holds."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from .. import ops

#: Low resolutions estimate_resolution tries along each side, smallest first.
CANDIDATES = tuple(range(4, 113))

#: A knee at k: the excess residual at k is below this share of the one at k - 1.
DROP = 0.3

#: A dip at k (what noise that is not white, JPEG's, leaves of a knee): the excess residual at k is
#: below DIP_DROP times the one at k - 1, below the one at k + 1 over RISE, below NOISE_LEVEL times
#: the image's noise share and below DIP_TOLERANCE times the tolerance over k.
DIP_DROP, RISE, NOISE_LEVEL, DIP_TOLERANCE = 0.6, 1.2, 10.0, 3.0

#: The largest noise share estimate_resolution discounts: an image with more is taken as all detail.
NOISE_CAP = 0.1

#: A dip gives way to a knee above it below this multiple of its k (noise leaves dips at k - 2..4).
SPAN = 1.5


def native_resolution(h: int, w: int) -> int:
    """The side k of the k x k face that an h x w low-resolution crop stands for."""
    return max(1, int(round((h * w) ** 0.5)))


@functools.lru_cache(maxsize=32)
def _projectors(n: int, ks: tuple[int, ...], antialias: bool, device: torch.device) -> torch.Tensor:
    """len(ks) x n*n float64: the orthogonal projectors onto the span of the bicubic upsampling
    k -> n of one side (the columns of ``resize(eye(k), (n, k))``), flattened."""
    out = []
    for k in ks:
        eye = torch.eye(k, dtype=torch.float64).view(1, 1, k, k)
        q, _ = torch.linalg.qr(ops.resize(eye, (n, k), antialias=antialias)[0, 0])
        out.append((q @ q.T).flatten())
    return torch.stack(out).to(device)


def _side(gram: torch.Tensor, energy: torch.Tensor, rounding: torch.Tensor, candidates: list[int],
          tolerance: float, antialias: bool) -> torch.Tensor:
    """Per image, the candidate k below the side n where the excess residual curve has its first
    knee (or a dip, if no knee follows within SPAN times its k), else n.

    gram: N x n x n Gram matrices of the lines along the side; energy: their traces; rounding: the
    share of the energy that rounding noise is expected to have (0 for unrounded images)."""
    n = gram.shape[-1]
    ks = [k for k in candidates if k < n]
    result = torch.full((gram.shape[0],), n, dtype=torch.int64)
    if not ks or not len(result):
        return result
    upper = range((n + 1) // 2, n)  # the upper half, where the noise is read
    tried = sorted({j for k in ks for j in (k - 1, k, k + 1) if 0 < j < n} | set(upper))
    kept = gram.flatten(1) @ _projectors(n, tuple(tried), antialias, gram.device).T  # N x len(tried)
    residual = (1 - kept / energy[:, None]).cpu()  # share of the energy off the span of each k
    r = {k: residual[:, i] for i, k in enumerate(tried)}
    # White noise of share a leaves a * (1 - k / n) off the span of k. Above the face's resolution
    # that is nearly all there is, so the lower quartile of r(k) / (1 - k / n) over the upper half
    # estimates a (detail only adds to it); rounding noise sets its least, NOISE_CAP its most.
    share = torch.stack([r[k] / (1 - k / n) for k in upper], 1).quantile(0.25, dim=1)
    noise = torch.maximum(rounding, share.clamp_max(NOISE_CAP))

    def excess(k: int, r: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Less what the noise alone leaves off the span of k: the share 1 - k / n of its energy."""
        return (r - noise * (1 - k / n)).clamp_min(0)

    def curve(noise: torch.Tensor) -> dict[int, torch.Tensor]:
        at = {k: excess(k, r[k], noise) for k in tried}
        at[0] = excess(0, torch.ones_like(noise), noise)  # k = 0 keeps nothing
        at[n] = torch.zeros_like(noise)  # k = n keeps everything
        return at

    # Knees in the upper half are read on the curve less rounding only: the noise estimate comes
    # from there, and discounting it there would make knees of a full-size face's own detail.
    at, upper_at = curve(noise), curve(rounding)
    knee = result.clone()
    dip = result.clone()
    for k in ks:
        e = at if 2 * k < n else upper_at
        # A steep fall into k that ends there (when k + 1 falls steeply again, the knee is further on).
        found = (e[k] < tolerance / k) & (e[k] < DROP * e[k - 1]) & ~(e[k + 1] < DROP * e[k])
        knee[(knee == n) & found] = k
        if 2 * k < n:  # a shallower fall into k, rising again at k + 1, to what noise could leave
            found = ((at[k] < DIP_DROP * at[k - 1]) & (at[k + 1] > RISE * at[k]) & (at[k] < NOISE_LEVEL * noise)
                     & (at[k] < DIP_TOLERANCE * tolerance / k))
            dip[(dip == n) & found] = k
    return torch.where(knee >= SPAN * dip, dip, knee)


@torch.no_grad()
def estimate_resolution(
    images: torch.Tensor,
    *,
    antialias: bool = True,
    tolerance: float = 0.02,
    candidates: Sequence[int] = CANDIDATES,
) -> torch.Tensor:
    """Effective resolution k of each face in an N x C x H x W batch already brought to full size.

    A face degraded to h x w and brought back (``ops.degrade(x, (h, w), antialias=antialias)``,
    or a native h x w crop upsampled with ``ops.resize``) lies in the span of the bicubic upsampling
    from h along its height and from w along its width, whatever the downsampling did (which is
    why degrade need not be idempotent). For each side and each k, the residual r(k) is the share
    of the image's mean-removed energy off the span of the upsampling from k along that side. It is
    zero at the face's own resolution, up to clamping to 0..255 and noise, and holds detail below it.

    Noise: white noise holding a share a of the energy leaves a * (1 - k / n) off the span of k
    (n the side's length). Above the face's resolution that is nearly all the residual there is, so
    a is read from the upper half of the curve, k >= n / 2: the lower quartile of
    r(k) / (1 - k / n) there (detail only adds to it), at least what rounding leaves when every
    value is a whole number (uint8, or float rounded: variance 1 / 12 per value), at most
    ``NOISE_CAP`` (0.1; an image with more is taken as all detail). The excess
    e(k) = r(k) - a * (1 - k / n), clamped at 0, is the curve the estimate reads.

    A side's estimate is the smallest candidate k at a knee of e: e(k) below ``tolerance / k`` and
    below ``DROP`` (0.3) times e(k - 1), and the next step, to k + 1, no such fall again (for k >= n
    / 2, where a is read, the knee is sought on r less rounding only: discounting a there would make
    knees of a full-size face's own detail). Noise that is not white (JPEG's falls off with
    frequency, so the upper half underrates it at the face's resolution) leaves a shallower dip
    there instead: e(k) below 0.6 e(k - 1), below e(k + 1) / 1.2, below 10 a and below ``3 *
    tolerance / k``, for k < n / 2. The smallest dip is taken unless a knee lies above it within 1.5
    times its k (noise also leaves dips at k - 2 .. k - 4 below a face's true knee). A side with
    neither gets its length: faces with all their detail have a smoothly falling curve. Faces
    upsampled with the other bicubic convention show a shallower knee at their resolution, usually
    found. The estimate is ``native_resolution(k_height, k_width)``, so an upscaled h x w crop is
    routed as the crop itself would be; images without any variation get the smallest candidate.

    Measured (routing: nearest of 8/12/16/20, ties lower). 512 aligned LFW faces degraded to k = 8,
    12, 16, 20 with either convention, float or rounded to uint8: at least 99.8% route to their own
    branch (14 x 11 crops: 99.6% estimated at 12), and every full-size face, also after JPEG at
    quality 75/50/30 or noise of sd 2, is estimated at 50 or more (120 faces: 97.5% or more at 71 or
    more, so that of pairs for 20, 30 and 112 they go through 112, also after JPEG at quality 50).
    117 other faces shrunk with OpenCV's area filter and upscaled with its bicubic (the other
    convention; estimated with the default ``antialias=True``), uint8, at k = 8 / 12 / 16: with
    Gaussian noise of sd 2, 100 / 99 / 100% route to their own branch (sd 4: 100 / 99 / 100%); after
    JPEG at quality 50, 99 / 100 / 100%; at quality 30, 92 / 98 / 97%. Not covered: JPEG at quality
    10 (25 / 14 / 3%), and faces aligned from low-resolution photos, whose rotation and scaling
    leave no grid to find: they come out at 80 - 90, full size, and should be routed by their known
    size instead. Cost: two Gram matrices per image and one matrix product, in float64 on the
    images' device. Returns an int64 tensor of N resolutions.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images N x C x H x W, got shape {tuple(images.shape)}")
    candidates = sorted({int(k) for k in candidates})
    if not candidates or candidates[0] < 1:
        raise ValueError(f"candidates must be positive ints, got {candidates}")
    x = images.double()
    x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 1, 3).reshape(n, h, c * w)  # each image's lines along the height...
    cols = x.permute(0, 3, 1, 2).reshape(n, w, c * h)  # ...and along the width
    gram_h = rows @ rows.transpose(1, 2)
    gram_w = cols @ cols.transpose(1, 2)
    energy = gram_h.diagonal(dim1=1, dim2=2).sum(1)
    flat = (energy <= 0).cpu()
    energy = energy.clamp_min(torch.finfo(torch.float64).tiny)
    whole = (images == images.round()).flatten(1).all(1).cpu() if images.is_floating_point() else torch.ones_like(flat)
    rounding = torch.where(whole, c * h * w / 12 / energy.cpu(), 0.0)
    k_h = _side(gram_h, energy, rounding, candidates, tolerance, antialias)
    k_w = _side(gram_w, energy, rounding, candidates, tolerance, antialias)
    result = torch.tensor([native_resolution(int(a), int(b)) for a, b in zip(k_h, k_w)], dtype=torch.int64)
    result[flat] = candidates[0]
    return result
