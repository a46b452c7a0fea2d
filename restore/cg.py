"""Preconditioned conjugate gradients for a batch of independent symmetric positive-definite systems.

Used by x-steps that have no closed form (:class:`restore.operators.Blur` with ``padding="valid"``): solve
``M(x) = b`` per batch item, ``M`` symmetric positive definite on each item, with a preconditioner ``P``
approximating ``M^-1`` (also symmetric positive definite). Update rule (Saad, Iterative Methods, alg. 9.1):

    r = b - M x,  p = P r;   repeat:  a = <r, P r> / <p, M p>,  x += a p,  r -= a M p,
                                      beta = <r_new, P r_new> / <r, P r>,  p = P r_new + beta p

with every inner product taken per batch item, so each item follows its own iteration. Stops when every item's
residual norm is below ``tol`` times its ``||b||``, tested every ``check_every`` iterations (one host
synchronisation each), or after ``max_iters``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor


class CGResult(NamedTuple):
    solution: Tensor  # [N, ...] like b
    iterations: int
    relative_residual: Tensor  # [N]: ||b - M x|| / ||b|| of the recursion at the end


def _dot(a: Tensor, b: Tensor) -> Tensor:  # per batch item, shaped to broadcast: [N, 1, ..., 1]
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor,
                       precondition: Callable[[Tensor], Tensor] | None = None, tol: float = 1e-5,
                       max_iters: int = 100, check_every: int = 4) -> CGResult:
    """Solve ``apply(x) = b`` from ``x0`` (see the module docstring); ``apply`` and ``precondition`` act on
    tensors shaped like ``b`` [N, ...] and treat the batch items independently."""
    if not tol > 0 or max_iters < 1 or check_every < 1:
        raise ValueError(f"need tol > 0, max_iters >= 1 and check_every >= 1, got {tol}, {max_iters}, {check_every}")
    P = precondition if precondition is not None else (lambda v: v)
    x = x0.clone()
    r = b - apply(x)
    z = P(r)
    p = z.clone()
    rz = _dot(r, z)
    b_norm = b.flatten(1).norm(dim=1).clamp_min(torch.finfo(b.dtype).tiny)
    k = 0
    for k in range(1, max_iters + 1):
        if (k - 1) % check_every == 0 and bool((r.flatten(1).norm(dim=1) <= tol * b_norm).all()):
            k -= 1
            break
        Mp = apply(p)
        pMp = _dot(p, Mp)
        alpha = torch.where(pMp > 0, rz / torch.where(pMp > 0, pMp, 1), 0)  # 0 for an item already solved
        x = x + alpha * p
        r = r - alpha * Mp
        z = P(r)
        rz_new = _dot(r, z)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1), 0)
        p = z + beta * p
        rz = rz_new
    return CGResult(x, k, r.flatten(1).norm(dim=1) / b_norm)
