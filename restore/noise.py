"""The noise level of an observation, estimated from the observation alone.

:func:`estimate_noise_std` follows Chen, Zhu and Heng, "An efficient statistical method for image noise level
estimation" (ICCV 2015). Patches of a natural image lie near a low-dimensional subspace; additive white Gaussian
noise of std sigma adds sigma^2 to every eigenvalue of the patch covariance. So the eigenvalues that belong to
the noise alone are those of a set whose mean and median agree (the Marchenko-Pastur spread around sigma^2 is
symmetric to first order): with the eigenvalues sorted ascending, lambda_1 <= ... <= lambda_d, the estimate is

    sigma^2 = mean(lambda_1..lambda_m), for the largest m at which the mean is the median of lambda_1..lambda_m
              (as many of them above the mean as below).

Patches holding a pixel at exactly 0 or 1 are left out while enough others remain: such a pixel was clipped when
the observation was saved, and lost part of its noise. With a mask (inpainting), only wholly observed patches count.

A blurred or decimated image fits that model best (the blur empties the high-frequency directions); an image
with fine texture everywhere and little noise is over-estimated. The noise is assumed white and of one level in
every channel (the operators' model); a camera's signal-dependent noise is estimated by its average.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .operators.grey import equal_channels

MIN_PATCHES_PER_DIM = 4  # at least this many patches per patch dimension (C * patch^2), else refuse


class NoiseEstimateError(ValueError):
    """The image cannot give a noise estimate (too few patches); one line saying what to do."""


def _patch_covariance(images: Tensor, mask: Tensor | None, patch: int, max_patches: int) -> Tensor:
    """Covariance [d, d] (float64) of the patches of [N, C, H, W] ``images`` that lie wholly where ``mask``
    [N, 1, H, W] is 1 (all of them without a mask), pooled over the batch."""
    n, c, h, w = images.shape
    if min(h, w) < patch:
        raise NoiseEstimateError(f"the image is {h}x{w}, smaller than the {patch}x{patch} patches of the noise "
                                 "estimate; give the noise level instead")
    positions = n * (h - patch + 1) * (w - patch + 1)
    stride = 1
    while positions / stride**2 > max_patches:
        stride += 1
    cols = F.unfold(images.double(), patch, stride=stride)  # [N, d, L]
    cols = cols.transpose(1, 2).reshape(-1, c * patch * patch)  # [N * L, d]
    d = cols.shape[1]
    if mask is not None:
        cols = cols[F.unfold(mask.double(), patch, stride=stride).amin(1).reshape(-1) > 0.5]
    unclipped = ((cols != 0) & (cols != 1)).all(1)  # a pixel clipped to 0 or 1 has lost part of its noise
    if int(unclipped.sum()) >= MIN_PATCHES_PER_DIM * d:  # else (much of the image clipped) keep them all
        cols = cols[unclipped]
    if cols.shape[0] < MIN_PATCHES_PER_DIM * d:
        of = " of observed pixels" if mask is not None else ""
        raise NoiseEstimateError(f"only {cols.shape[0]} {patch}x{patch} patches{of} to estimate the noise from (at "
                                 f"least {MIN_PATCHES_PER_DIM * d} needed); give the noise level instead")
    cols = cols - cols.mean(0)
    return cols.T @ cols / cols.shape[0]


def _noise_variance(eigenvalues: Tensor) -> Tensor:
    """sigma^2 from ascending eigenvalues: the mean of the longest prefix whose mean is its median."""
    lam = eigenvalues.clamp(min=0)
    for m in range(lam.numel(), 0, -1):
        head = lam[:m]
        tau = head.mean()
        if int((head > tau).sum()) == int((head < tau).sum()):
            return tau
    return lam[0]  # unreachable: a single eigenvalue is its own mean and median


def estimate_noise_std(y: Tensor, mask: Tensor | None = None, patch: int = 8, pooled: bool = False,
                       max_patches: int = 200_000) -> Tensor:
    """Std of additive white Gaussian noise in ``y`` [N, C, H, W] (on y's scale: [0, 1] images give [0, 1] stds).

    Args:
        mask: [N or 1, 1, H, W], 1 where a pixel is observed (inpainting): only the patches wholly
            observed count (a sparse random mask leaves none: give the noise level then).
        patch: side of the square patches (d = C * patch^2 dimensions).
        pooled: one estimate from the patches of all N images (crops of one image), instead of one per image.
        max_patches: patches per estimate at most (a larger image is sampled on a coarser grid of positions).

    Returns:
        [N] estimates, or [1] with ``pooled``. Raises :class:`NoiseEstimateError` for images with too few patches.
    """
    if y.ndim != 4:
        raise NoiseEstimateError(f"expected images [N, C, H, W], got shape {tuple(y.shape)}")
    if mask is not None:
        mask = mask.to(y.device).expand(y.shape[0], 1, *y.shape[-2:])
    groups = [(y, mask)] if pooled else [(y[i:i + 1], None if mask is None else mask[i:i + 1]) for i in range(y.shape[0])]
    stds = []
    for images, m in groups:
        if equal_channels(images):  # a grey image stored in C equal channels: its C copies of one noise would
            images = images[:, :1]  # make C - 1 of every C eigenvalues 0 (an estimate of 0)
        cov = _patch_covariance(images, m, patch, max_patches)
        stds.append(_noise_variance(torch.linalg.eigvalsh(cov)).sqrt())
    return torch.stack(stds).to(y.dtype)
