"""Linear degradation operators y = A x + n, n ~ N(0, sigma^2 I), for PnP-HVAE restoration.

Images are NCHW float tensors in [0, 1]. Each operator is a stateless ``nn.Module`` (deepinv naming):
``A(x)``, ``A_adjoint(y)`` and ``prox_l2(z, y, gamma)``, the exact minimiser of
``||A x - y||^2 / (2 sigma^2) + ||x - z||^2 / (2 gamma^2)``. Below, ``rho = sigma^2 / gamma^2``.
"""
from .base import Denoising, Gamma, LinearOperator, OperatorError, sigma_from_255
from .fourier import Blur, SuperResolution, bicubic_upsample
from .grey import GreyObservation, equal_channels, prior_operator
from .inpainting import (BAYER_PATTERNS, Inpainting, bayer_mask, box_mask, load_mask, masks_per_channel, random_box_mask,
                         random_mask)
from .kernels import SR_KERNELS, gaussian_kernel, load_kernel, motion_kernel, sr_kernel, validate_kernel
from .matrix_free import MatrixFree, from_deepinv

__all__ = ["BAYER_PATTERNS", "Blur", "Denoising", "Gamma", "GreyObservation", "Inpainting", "LinearOperator", "MatrixFree", "OPERATORS",
           "OperatorError", "SR_KERNELS", "SuperResolution", "bayer_mask", "bicubic_upsample", "box_mask", "equal_channels", "from_deepinv", "gaussian_kernel", "load_kernel",
           "load_mask", "masks_per_channel", "motion_kernel", "prior_operator", "random_box_mask", "random_mask", "sigma_from_255", "sr_kernel",
           "validate_kernel"]

OPERATORS: dict[str, type[LinearOperator]] = {
    "denoise": Denoising,
    "blur": Blur,
    "sr": SuperResolution,
    "inpaint": Inpainting,
    "demosaic": Inpainting,  # with bayer_mask
}
