"""MatrixFree (any linear A from two functions) and the deepinv bridge: the conjugate-gradient x-step against the
built-in closed forms, JPMAP's exact MAP on a dense compressed-sensing operator, the adjoint check, the starts,
the baselines, and deepinv's physics (closed-form and iterative)."""
from __future__ import annotations

import pytest
import torch

from restore.baselines import AdamConfig, adam_joint, tikhonov, total_variation
from restore.jpmap import JPMAPConfig, jpmap
from restore.operators import (Blur, Denoising, Inpainting, MatrixFree, OperatorError, SuperResolution, bayer_mask,
                               from_deepinv, gaussian_kernel, random_mask)
from restore.predict import restore_tiled

from .test_jpmap import LinearGaussianPrior

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _builtin(name: str):
    kernel = torch.rand(5, 4, generator=_gen(1), dtype=DT)  # not symmetric: A is not self-adjoint
    return {"denoise": Denoising(0.05), "blur": Blur(kernel, 0.03), "sr2": SuperResolution(kernel, 2, 0.03),
            "inpaint": Inpainting(random_mask(12, 16, 0.4, _gen(2), channels=3), 0.04)}[name]


@pytest.mark.parametrize("name", ["denoise", "blur", "sr2", "inpaint"])
def test_conjugate_gradient_prox_is_the_closed_form(name):
    op = _builtin(name)
    free = MatrixFree(op.A, op.A_adjoint, op.sigma, cg_tol=1e-12)
    z = torch.rand(2, 3, 12, 16, generator=_gen(3), dtype=DT)
    y = torch.rand(op.A(z).shape, generator=_gen(4), dtype=DT)
    for gamma in (0.02, 0.5, torch.tensor([0.03, 1.0], dtype=DT)):
        torch.testing.assert_close(free.prox_l2(z, y, gamma), op.prox_l2(z, y, gamma), atol=1e-9, rtol=1e-9)
    solved = free.prox_l2_cg(z, y, 0.5)
    assert solved.iterations < 100 and float(solved.relative_residual.max()) <= 1e-12
    z32, y32 = z.float(), y.float()
    assert free.prox_l2(z32, y32, 0.5).dtype == torch.float32  # solved in float32, returned in z's dtype


def _dense_cs(m: int, shape: tuple[int, int, int]):
    n = shape[0] * shape[1] * shape[2]
    matrix = torch.randn(m, n, generator=_gen(5), dtype=DT) / n**0.5
    return matrix, (lambda x: x.flatten(1) @ matrix.T), (lambda y: (y @ matrix).reshape(-1, *shape))


def test_jpmap_on_dense_compressed_sensing_reaches_the_map():
    """y [N, m] from a random matrix: with a linear-Gaussian prior, JPMAP's limit is the MAP
    argmin ||A x - y||^2/(2 sigma^2) + ||x||^2/(2 s^2), s^2 = gamma^2 + a^2 tau^2, solved here densely."""
    shape, sigma, gamma, a, tau = (3, 6, 8), 0.02, 0.1, 0.4, 0.7
    matrix, A, At = _dense_cs(70, shape)
    op = MatrixFree(A, At, sigma, cg_tol=1e-13)
    x_true = torch.rand(2, *shape, generator=_gen(6), dtype=DT)
    y = op.degrade(x_true, _gen(7))
    assert y.shape == (2, 70)
    start = op.init(y)  # y has another shape: least squares, mid-grey where A sees nothing
    assert start.shape == x_true.shape
    result = jpmap(y, op, LinearGaussianPrior(a, gamma), JPMAPConfig(gamma=gamma, tau=tau, max_iters=3000, tol=1e-12,
                                                                     check_every=50))
    s2 = gamma**2 + a**2 * tau**2
    normal = matrix.T @ matrix / sigma**2 + torch.eye(matrix.shape[1], dtype=DT) / s2
    x_map = torch.linalg.solve(normal, (y @ matrix).T / sigma**2).T.reshape(x_true.shape)
    assert result.converged
    torch.testing.assert_close(result.x, x_map, atol=1e-8, rtol=1e-7)


def test_starts():
    inp = Inpainting(torch.tensor([[1.0, 0.0], [1.0, 1.0]]).repeat(4, 4), 0.01)  # 8x8, a quarter missing
    y = inp.A(torch.full((1, 1, 8, 8), 0.8, dtype=DT))
    least = MatrixFree(inp.A, inp.A_adjoint, 0.01, init="least_squares").init(y)
    observed = inp.mask.bool().expand_as(y)
    torch.testing.assert_close(least[~observed], torch.full_like(least[~observed], 0.5))  # A sees nothing there
    torch.testing.assert_close(least[observed], torch.full_like(least[observed], (0.8 + 0.5e-3) / 1.001))
    assert torch.equal(MatrixFree(inp.A, inp.A_adjoint, 0.01).init(y), y)  # auto: A keeps the shape
    assert torch.equal(MatrixFree(inp.A, inp.A_adjoint, 0.01, init="adjoint").init(y), inp.A_adjoint(y))
    assert torch.equal(MatrixFree(inp.A, inp.A_adjoint, 0.01, init=lambda v: v + 1).init(y), y + 1)


def test_bad_operators_are_refused_in_one_line(tmp_path):
    blur = _builtin("blur")
    x = torch.rand(1, 3, 12, 16, dtype=DT)
    cases = [
        (lambda: MatrixFree(blur.A, blur.A, 0.03).A(x), "A_adjoint is not the adjoint of A"),
        (lambda: MatrixFree(lambda v: v[0], blur.A_adjoint, 0.03).A(x), r"batch size 1 first, got \(3, 12, 16\)"),
        (lambda: MatrixFree(blur.A, lambda v: v[..., :4], 0.03).prox_l2(x, x, 0.1), "back to the image shape"),
        (lambda: MatrixFree(blur.A, blur.A_adjoint, 0.03, init="zeros"), "init must be one of"),
        (lambda: MatrixFree(blur.A, blur.A_adjoint, 0.03, cg_tol=0), "need cg_tol > 0"),
        (lambda: MatrixFree(blur.A, None, 0.03), "must be functions"),
        (lambda: MatrixFree(blur.A, blur.A_adjoint, 0.0), "noise std sigma"),
        (lambda: MatrixFree(blur.A, blur.A_adjoint, 0.03).prox_l2_cg(x, x, 0.1, x0=x[..., :4]), "prox start x0"),
        (lambda: MatrixFree(blur.A, blur.A_adjoint, 0.03).x_shape((1, 3, 12, 16)), "pass x0"),
    ]
    for call, match in cases:
        with pytest.raises(OperatorError, match=match) as info:
            call()
        assert "\n" not in str(info.value)
    with pytest.raises(TypeError, match="not MatrixFree; restore the whole image"):
        restore_tiled(x[0].float(), MatrixFree(blur.A, blur.A_adjoint, 0.03), "priors/natural.pt", JPMAPConfig(),
                      tmp_path / "out" / "o.png")
    assert not (tmp_path / "out").exists()


def test_baselines_and_jpmap_match_the_builtin_blur(busy_tiny_model):
    op = Blur(gaussian_kernel(1.2), 0.03)
    free = MatrixFree(op.A, op.A_adjoint, op.sigma, wraps=True, cg_tol=1e-10)
    clean = torch.rand(1, 3, 16, 16, generator=_gen(8))
    y = op.degrade(clean, _gen(9))
    for run in (lambda o: jpmap(y, o, busy_tiny_model, JPMAPConfig(max_iters=4)),
                lambda o: adam_joint(y, o, busy_tiny_model, AdamConfig(max_iters=5))):
        torch.testing.assert_close(run(free).estimate, run(op).estimate, atol=2e-6, rtol=0)
    y = y.double()  # TV's x-steps warm-start from its previous x: in float64, to the conjugate gradients' 1e-10
    for run in (lambda o: tikhonov(y, o, grad_std=0.1), lambda o: total_variation(y, o, lam=0.01, max_iters=40)):
        torch.testing.assert_close(run(free).estimate, run(op).estimate, atol=1e-7, rtol=0)


def _prox_gradient_norm(op, x, z, y, gamma) -> float:
    g = op.A_adjoint(op.A(x) - y) / op.sigma**2 + (x - z) / gamma**2
    scale = (op.A_adjoint(y).norm() + op.A_adjoint(op.A(x)).norm()) / op.sigma**2 + (x.norm() + z.norm()) / gamma**2
    return float(g.norm() / scale)


def test_deepinv_physics_closed_form_and_iterative():
    dinv = pytest.importorskip("deepinv")
    p = dinv.physics
    kernel = gaussian_kernel(1.0).float()[None, None]
    cases = [  # (physics, whether its own prox is used)
        (p.Demosaicing(img_size=(12, 16), noise_model=p.GaussianNoise(0.03)), True),
        (p.Inpainting(img_size=(3, 12, 16), mask=0.6, noise_model=p.GaussianNoise(0.03)), True),
        (p.BlurFFT(img_size=(3, 12, 16), filter=kernel, noise_model=p.GaussianNoise(0.03)), True),
        (p.Downsampling(img_size=(3, 12, 16), filter="gaussian", factor=2, padding="circular",
                        noise_model=p.GaussianNoise(0.03)), False),  # its closed form is off at 12x16
        (p.Blur(filter=kernel, padding="valid", noise_model=p.GaussianNoise(0.03)), False),
    ]
    z = torch.rand(2, 3, 12, 16, generator=_gen(10))
    for physics, closed in cases:
        op = from_deepinv(physics)
        assert op.sigma == pytest.approx(0.03) and (op.exact_prox is not None) == closed
        y = op.degrade(z.flip(-1), _gen(11))
        for gamma in (0.05, 0.3):
            x = op.prox_l2(z, y, gamma)
            assert x.shape == z.shape and _prox_gradient_norm(op, x, z, y, gamma) < 1e-5, type(physics).__name__
        cg = from_deepinv(physics, prox="cg", cg_tol=1e-9).prox_l2(z, y, 0.3)
        # float32 round-off times the system's condition number (1 + ||A||^2 / rho, about 100 here)
        torch.testing.assert_close(op.prox_l2(z, y, 0.3), cg, atol=5e-5, rtol=0)
    demosaic = from_deepinv(cases[0][0])
    ours = Inpainting(bayer_mask(12, 16, "BGGR"), 0.03)  # restore.py --operator demosaic --bayer BGGR
    y = demosaic.degrade(z, _gen(12))
    torch.testing.assert_close(demosaic.prox_l2(z, y, 0.3), ours.prox_l2(z, y, 0.3))
    torch.testing.assert_close(demosaic.init(y), ours.init(y))
    y = demosaic.A(z)
    start = demosaic.init(y)  # the harmonic interpolation of each channel's observed pixels
    assert float((start - z).abs().mean()) < float((y - z).abs().mean())
    assert from_deepinv(cases[3][0]).init(torch.rand(1, 3, 6, 8)).shape == (1, 3, 12, 16)  # bicubic
    moved = from_deepinv(cases[1][0]).to(torch.float64)  # the physics is a submodule: its mask moves with it
    assert cases[1][0].mask.dtype == torch.float64 and moved.A(z.double()).dtype == torch.float64
    with pytest.raises(OperatorError, match="not GaussianNoise; pass sigma="):
        from_deepinv(p.Inpainting(img_size=(3, 12, 16), mask=0.6))
    assert from_deepinv(p.Inpainting(img_size=(3, 12, 16), mask=0.6), sigma=0.01).sigma == 0.01
    with pytest.raises(OperatorError, match="no A and A_adjoint"):
        from_deepinv(object())
