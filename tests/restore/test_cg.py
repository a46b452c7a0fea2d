"""restore.cg: batched preconditioned conjugate gradients against a dense solve."""

import pytest
import torch

from restore.cg import conjugate_gradient


def _spd(n: int, cond: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)) @ q.T


def test_each_item_solves_its_own_system():
    mats = torch.stack([_spd(30, 10.0, 0), _spd(30, 1e4, 1)])  # [2, 30, 30]: an easy and a hard system

    def apply(v):  # v [2, 1, 30]
        return torch.einsum("nij,ncj->nci", mats, v)

    b = torch.randn(2, 1, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = conjugate_gradient(apply, b, torch.zeros_like(b), tol=1e-12, max_iters=500)
    exact = torch.linalg.solve(mats, b[:, 0])[:, None]
    assert torch.allclose(res.solution, exact, atol=1e-8, rtol=0)
    assert bool((res.relative_residual < 1e-12).all()) and res.iterations <= 500
    # the exact inverse as preconditioner: one step
    inv = torch.linalg.inv(mats)
    pre = conjugate_gradient(apply, b, torch.zeros_like(b), lambda v: torch.einsum("nij,ncj->nci", inv, v), tol=1e-10,
                             check_every=1)
    assert pre.iterations <= 2 and torch.allclose(pre.solution, exact, atol=1e-8)


def test_a_solved_start_stays_put_and_bad_arguments():
    a = _spd(10, 5.0, 3)
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    b = x @ a  # a is symmetric

    def apply(v):
        return v @ a

    res = conjugate_gradient(apply, b, x, tol=1e-6)
    assert res.iterations == 0 and torch.equal(res.solution, x)
    mixed = x.clone()
    mixed[0] = 0  # one item to solve, two already solved: no NaN from their zero residuals
    res = conjugate_gradient(apply, b, mixed, tol=1e-12, max_iters=100, check_every=1)
    assert torch.isfinite(res.solution).all() and torch.allclose(res.solution, x, atol=1e-9)
    with pytest.raises(ValueError, match="tol"):
        conjugate_gradient(apply, b, x, tol=0.0)
