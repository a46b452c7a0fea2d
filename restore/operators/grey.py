"""A grey observation restored with a colour prior: the image is grey, shown to the prior in C equal channels."""

from __future__ import annotations

import math

from torch import Tensor

from .base import Gamma, LinearOperator, OperatorError


class GreyObservation(LinearOperator):
    """y = A_g(mean_c x) + n: ``inner`` (any operator on grey images [N, 1, H, W]) applied to the channel mean of
    ``x`` [N, C, H, W]; ``y`` is grey, with the noise std ``inner.sigma``.

    Why not three copies of y: a grey image repeated in C channels repeats its noise too, and a per-channel data
    term ``sum_c ||A x_c - y||^2 / (2 sigma^2)`` counts that one noise C times over, as if C independent
    observations had averaged it down by sqrt(C). On Set12 (kernel 9, noise 7.65, shipped colour prior) that
    lost 0.55-4.59 dB to Wiener on every image; this operator has the data term of the one observation there is.

    ``prox_l2`` is over grey images, the set x_1 = ... = x_C = u where the truth lies:
    ``argmin_u ||A_g u - y||^2 / (2 sigma^2) + sum_c ||u - z_c||^2 / (2 gamma^2)``, and since
    ``sum_c ||u - z_c||^2 = C ||u - mean_c z||^2 + const``, ``u = inner.prox_l2(mean_c z, y, gamma / sqrt(C))``,
    repeated in the C channels. So every iterate the prior's encoder sees is grey, as the truth is. ``A_adjoint``
    is the adjoint of ``A`` (``inner.A_adjoint(y) / C`` in each channel).
    """

    def __init__(self, inner, channels: int = 3) -> None:
        super().__init__(inner.sigma)
        if channels < 2:
            raise OperatorError(f"GreyObservation shows a grey image in several channels; got channels={channels}")
        self.inner, self.channels = inner, int(channels)

    def _grey(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise OperatorError(f"GreyObservation expects images [N, {self.channels}, H, W], got {tuple(x.shape)}")
        return x.mean(1, keepdim=True)

    def spread(self, u: Tensor) -> Tensor:
        """A grey image [N, 1, H, W] in the C channels [N, C, H, W] (a copy)."""
        return u.expand(-1, self.channels, -1, -1).contiguous()

    def A(self, x: Tensor) -> Tensor:
        return self.inner.A(self._grey(x))

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self.spread(self.inner.A_adjoint(y)) / self.channels

    def prox_l2(self, z: Tensor, y: Tensor, gamma: Gamma) -> Tensor:
        if y.ndim != 4 or y.shape[1] != 1:
            raise OperatorError(f"GreyObservation's observation y must be grey [N, 1, H, W], got {tuple(y.shape)}")
        return self.spread(self.inner.prox_l2(self._grey(z), y, gamma / math.sqrt(self.channels)))

    def init(self, y: Tensor, *args, **kwargs) -> Tensor:
        return self.spread(self.inner.init(y, *args, **kwargs))

    def x_shape(self, y_shape: tuple) -> tuple:
        n, _, h, w = self.inner.x_shape(tuple(y_shape))
        return (n, self.channels, h, w)

    def frame(self, x: Tensor) -> Tensor:
        return self.inner.frame(x)

    @property
    def wraps(self) -> bool:  # the baselines' gradient wraps at the border as the inner operator does
        return getattr(self.inner, "wraps", not getattr(self.inner, "valid", False))


def equal_channels(x: Tensor) -> bool:
    """Whether the image(s) ``x`` [..., C, H, W] have C > 1 exactly equal channels: a grey image stored in colour."""
    return x.shape[-3] > 1 and bool((x == x[..., :1, :, :]).all())


def prior_operator(operator, channels: int, prior_channels: int):
    """The operator the solver works with on the prior's batch: a grey image (``channels`` 1) through a colour
    prior is restored as a grey image shown in the prior's channels (:class:`GreyObservation`: its one noise
    counted once, the iterates grey); anything else with ``operator`` itself."""
    if channels == 1 and prior_channels > 1:
        return GreyObservation(operator, prior_channels)
    return operator


__all__ = ["GreyObservation", "equal_channels", "prior_operator"]
