"""Tests for restore.operators: adjointness, exact prox, circular convolution, validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from restore.operators import (
    OPERATORS, Blur, Denoising, Inpainting, OperatorError, SuperResolution, bayer_mask, box_mask, gaussian_kernel,
    load_kernel, load_mask, motion_kernel, random_box_mask, random_mask, sigma_from_255, sr_kernel, validate_kernel,
)

DT = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand_kernel(kh: int = 5, kw: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(kh, kw, generator=_gen(seed), dtype=DT)  # non-symmetric, even width


def _make(name: str, C: int, H: int = 24, W: int = 30, sigma: float = 0.05):
    if name == "denoise":
        return Denoising(sigma)
    if name == "blur":
        return Blur(_rand_kernel(), sigma)
    if name == "blur_valid":  # solved to round-off here, so that the tests below check the system it solves
        return Blur(_rand_kernel(), sigma, padding="valid", cg_tol=1e-13, cg_max_iters=500)
    if name.startswith("sr") and name.endswith("_valid"):
        return SuperResolution(_rand_kernel(), int(name[2]), sigma, padding="valid", cg_tol=1e-13, cg_max_iters=500)
    if name.startswith("sr"):
        return SuperResolution(_rand_kernel(), int(name[2:]), sigma)
    if name == "inpaint":
        return Inpainting(random_mask(H, W, 0.4, _gen(3), channels=C), sigma)
    if name == "inpaint_w":  # fractional weights, one mask for all channels
        return Inpainting(torch.rand(H, W, generator=_gen(4), dtype=DT), sigma)
    raise KeyError(name)


NAMES = ["denoise", "blur", "blur_valid", "sr1", "sr2", "sr3", "sr2_valid", "sr3_valid", "inpaint", "inpaint_w"]


def _obs(op, x: torch.Tensor) -> torch.Tensor:
    return torch.rand(op.A(x).shape, generator=_gen(9), dtype=x.dtype)


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_adjointness(name, C):
    op = _make(name, C)
    x = torch.rand(2, C, 24, 30, generator=_gen(5), dtype=DT)
    y = _obs(op, x)
    lhs, rhs = (op.A(x) * y).sum(), (x * op.A_adjoint(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=0)
    assert op.x_shape(tuple(y.shape)) == tuple(x.shape)


def _prox_grad(op, x, z, y, gamma):
    return op.A_adjoint(op.A(x) - y) / op.sigma**2 + (x - z) / gamma**2


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_prox_optimality(name, C):
    op = _make(name, C)
    z = torch.rand(2, C, 24, 30, generator=_gen(6), dtype=DT)
    y = _obs(op, z)
    for gamma in (0.01, 0.3, torch.tensor([0.02, 1.5], dtype=DT).reshape(2, 1, 1, 1)):
        x = op.prox_l2(z, y, gamma)
        assert x.shape == z.shape and x.dtype == DT
        g = _prox_grad(op, x, z, y, gamma)
        scale = (op.A_adjoint(y).norm() + op.A_adjoint(op.A(x)).norm()) / op.sigma**2 \
            + ((x.norm() + z.norm()) / torch.as_tensor(gamma) ** 2).max()
        assert g.norm() <= 1e-8 * scale, (name, gamma, float(g.norm() / scale))


def _cg(apply, b, iters=500, tol=1e-13):
    x = torch.zeros_like(b)
    r = b - apply(x)
    p, rr = r.clone(), (r * r).sum()
    for _ in range(iters):
        Ap = apply(p)
        alpha = rr / (p * Ap).sum()
        x, r = x + alpha * p, r - alpha * Ap
        rr_new = (r * r).sum()
        if rr_new.sqrt() < tol * b.norm():
            break
        p, rr = r + (rr_new / rr) * p, rr_new
    return x


@pytest.mark.parametrize("name", ["blur", "blur_valid", "sr2", "sr3", "sr2_valid"])
def test_prox_matches_conjugate_gradient(name):
    op, gamma = _make(name, 3, sigma=0.1), 0.07
    z = torch.rand(1, 3, 24, 30, generator=_gen(7), dtype=DT)
    y = op.degrade(z, _gen(8))
    b = op.A_adjoint(y) / op.sigma**2 + z / gamma**2
    x_cg = _cg(lambda v: op.A_adjoint(op.A(v)) / op.sigma**2 + v / gamma**2, b)
    assert torch.allclose(op.prox_l2(z, y, gamma), x_cg, atol=1e-9, rtol=0)


@pytest.mark.parametrize("kh,kw", [(3, 3), (5, 4), (2, 6), (1, 1), (7, 2)])
def test_valid_blur_is_the_frame_of_the_linear_convolution(kh, kw):
    k = _rand_kernel(kh, kw, seed=kh * 10 + kw)
    x = torch.rand(2, 3, 11, 13, generator=_gen(2), dtype=DT)
    op = Blur(k, 0.01, padding="valid")
    y = op.A(x)
    assert y.shape[-2:] == (11 - kh + 1, 13 - kw + 1) and op.x_shape(tuple(y.shape)) == tuple(x.shape)
    w = (k / k.sum()).flip(0, 1).expand(3, 1, kh, kw)  # conv2d without padding: the valid linear convolution
    assert torch.allclose(y, F.conv2d(x, w, groups=3), atol=1e-12)
    # the frame puts each observation over the scene pixel its kernel is centred on: what the circular blur
    # gives there (its wrap-around only touches the band outside the frame)
    assert op.frame(x).shape == y.shape and torch.allclose(y, op.frame(Blur(k, 0.01).A(x)), atol=1e-12)
    r, c = op.frame_offset
    assert (r, c) == (kh - 1 - kh // 2, kw - 1 - kw // 2)
    start = op.init(y)  # y continued by reflection to x's grid
    assert start.shape == x.shape and torch.equal(op.frame(start), y)
    assert Blur(k, 0.01).frame(x) is x and Blur(k, 0.01).x_shape((2, 3, 5, 6)) == (2, 3, 5, 6)


@pytest.mark.parametrize("factor,kh,kw", [(2, 7, 7), (3, 4, 6), (4, 13, 13), (2, 1, 2)])
def test_valid_super_resolution_is_the_decimated_linear_convolution(factor, kh, kw):
    k = _rand_kernel(kh, kw, seed=kh + kw)
    op = SuperResolution(k, factor, 0.01, padding="valid")
    (t, b), (l, r) = op.margins
    assert t % factor == b % factor == l % factor == r % factor == 0
    x = torch.rand(2, 3, factor * 6 + t + b, factor * 5 + l + r, generator=_gen(2), dtype=DT)
    y = op.A(x)
    assert y.shape[-2:] == (6, 5) and op.x_shape(tuple(y.shape)) == tuple(x.shape)
    assert op.frame(x).shape[-2:] == (factor * 6, factor * 5) and op.init(y).shape == x.shape
    full = F.conv2d(x, (k / k.sum()).flip(0, 1).expand(3, 1, kh, kw), groups=3)  # outputs centred at kh-1-kh//2
    q0, p0 = t - (kh - 1 - kh // 2), l - (kw - 1 - kw // 2)  # y pixel j sits on the frame's pixel factor * j
    assert q0 >= 0 and p0 >= 0
    assert torch.allclose(y, full[..., q0::factor, p0::factor][..., :6, :5], atol=1e-12)
    with pytest.raises(OperatorError, match="does not fit the valid model"):
        op.A(x[..., 1:, :])


def test_valid_blur_prox_default_tolerance_and_errors():
    op = Blur(gaussian_kernel(2.0), 2.55 / 255, padding="valid")  # the defaults: relative residual 1e-6
    z = torch.rand(2, 3, 40, 44, generator=_gen(3))  # float32, as restore.py runs it
    y = op.degrade(z, _gen(4))
    exact = Blur(gaussian_kernel(2.0), 2.55 / 255, padding="valid", cg_tol=1e-13, cg_max_iters=2000)
    for gamma in (5 / 255, 40 / 255):
        x = op.prox_l2(z, y, gamma)
        assert x.dtype == torch.float32 and 1 <= op.prox_l2_valid(z, y, gamma).iterations < 60
        ref = exact.prox_l2(z.double(), y.double(), gamma)
        assert float((x.double() - ref).abs().max()) < 5e-4, float((x.double() - ref).abs().max())  # 0.13 / 255
    with pytest.raises(OperatorError, match="padding"):
        Blur(torch.ones(3, 3), 0.1, padding="reflect")
    with pytest.raises(OperatorError, match="does not fit the valid model"):
        op.A(torch.rand(1, 1, op.kernel.shape[0] - 1, 30))
    with pytest.raises(OperatorError, match="does not match"):
        op.prox_l2(z, y[..., 1:, :], 0.1)
    assert op.lambda_min() == 0.0


def test_valid_prox_warm_start():
    """x0: the conjugate gradients start there; near the solution they stop sooner, at the same solution."""
    op = Blur(gaussian_kernel(2.0), 7.65 / 255, padding="valid")
    z = torch.rand(1, 3, 40, 44, generator=_gen(5), dtype=DT)
    y = op.degrade(z, _gen(6))
    gamma = 0.5  # TV's Chambolle-Pock step: a small rho, where the circular start is far and CG is slow
    exact = Blur(gaussian_kernel(2.0), 7.65 / 255, padding="valid", cg_tol=1e-13, cg_max_iters=4000)
    solution = exact.prox_l2(z, y, gamma)
    cold = op.prox_l2_valid(z, y, gamma)
    near = solution + 1e-3 * torch.randn(solution.shape, generator=_gen(7), dtype=DT)
    warm = op.prox_l2_valid(z, y, gamma, x0=near)
    assert warm.iterations < cold.iterations / 2  # measured 44 cold
    for result in (cold, warm):
        assert float((result.solution - solution).abs().max()) < 5e-4
    with pytest.raises(OperatorError, match="prox start x0 has shape"):
        op.prox_l2_valid(z, y, gamma, x0=near[..., 1:])


@pytest.mark.parametrize("kh,kw", [(3, 3), (5, 4), (2, 6), (1, 1)])
def test_blur_is_circular_convolution(kh, kw):
    k = _rand_kernel(kh, kw, seed=kh * 10 + kw)
    kn = k / k.sum()
    x = torch.rand(2, 3, 11, 13, generator=_gen(2), dtype=DT)
    ref = sum(kn[i, j] * torch.roll(x, (i - kh // 2, j - kw // 2), (-2, -1)) for i in range(kh) for j in range(kw))
    y = Blur(k, 0.01).A(x)
    assert torch.allclose(y, ref, atol=1e-12)
    # conv2d computes a correlation, so flip the kernel; pad so that the centre lands on (kh//2, kw//2)
    pt, pl = kh - 1 - kh // 2, kw - 1 - kw // 2
    xp = F.pad(x, (pl, kw - 1 - pl, pt, kh - 1 - pt), mode="circular")
    w = kn.flip(0, 1).expand(3, 1, kh, kw)
    assert torch.allclose(y, F.conv2d(xp, w, groups=3), atol=1e-12)


def test_sr_decimation_keeps_first_pixel_of_each_block():
    op = SuperResolution(torch.ones(1, 1), 3, 0.01)  # identity blur
    x = torch.rand(1, 1, 9, 12, generator=_gen(0), dtype=DT)
    assert torch.allclose(op.A(x), x[..., ::3, ::3], atol=1e-14, rtol=0)


def test_float32_and_half_stay_in_dtype():
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.rand(1, 3, 12, 12, dtype=dtype)
        for op in (Blur(gaussian_kernel(1.0), 0.05), SuperResolution(gaussian_kernel(1.0), 2, 0.05)):
            y = op.A(x)
            assert y.dtype == dtype and op.A_adjoint(y).dtype == dtype
            assert op.prox_l2(x, y, 0.1).dtype == dtype and op.init(y).dtype == dtype


@pytest.mark.parametrize("name", ["denoise", "blur", "sr2", "inpaint"])
def test_degrade_reproducible(name):
    op = _make(name, 3)
    x = torch.rand(2, 3, 24, 30, generator=_gen(1))
    y1, y2, y3 = op.degrade(x, _gen(42)), op.degrade(x, _gen(42)), op.degrade(x, _gen(43))
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    assert abs(float((y1 - op.A(x)).std()) - op.sigma) < 0.01


def test_init_shapes_and_inpainting_fill():
    sr = SuperResolution(gaussian_kernel(1.0), 4, 0.01)
    y = torch.rand(2, 3, 6, 5)
    x0 = sr.init(y)
    assert x0.shape == (2, 3, 24, 20) and sr.x_shape(tuple(y.shape)) == tuple(x0.shape)
    assert x0.min() >= 0 and x0.max() <= 1
    assert Blur(gaussian_kernel(1.0), 0.01).init(y).shape == y.shape
    mask = box_mask(8, 10, [(2, 3, 4, 5)])
    op = Inpainting(mask, 0.01)
    x = torch.rand(2, 3, 8, 10, generator=_gen(0))
    y = op.A(x)
    x0 = op.init(y)
    obs = mask.bool().expand_as(x)
    assert torch.equal(x0[obs], x[obs])
    assert x0.min() >= x.min() and x0.max() <= x.max()  # a weighted mean of observed pixels
    flat = torch.full((1, 3, 8, 10), 0.3)
    assert torch.allclose(op.init(op.A(flat)), flat)  # a constant image is filled exactly


def test_random_box_mask_is_squares_drawn_from_the_generator():
    m = random_box_mask(40, 50, _gen(3), count=3, frac=0.2)  # side round(0.2 * 40) = 8
    assert m.shape == (1, 40, 50) and set(m.unique().tolist()) == {0.0, 1.0}
    missing = int((m == 0).sum())
    assert 64 <= missing <= 3 * 64  # three 8x8 squares, possibly overlapping
    assert torch.equal(random_box_mask(40, 50, _gen(3), count=3, frac=0.2), m)
    assert not torch.equal(random_box_mask(40, 50, _gen(4), count=3, frac=0.2), m)
    one = random_box_mask(40, 50, _gen(5), count=1, frac=0.2)
    rows, cols = (one[0] == 0).nonzero(as_tuple=True)
    top, left = int(rows.min()), int(cols.min())
    assert torch.equal(one, box_mask(40, 50, [(top, left, 8, 8)]))


def test_inpainting_local_fill_interpolates_locally_and_falls_back_far_from_observations():
    # a smooth ramp with half of its pixels missing: the interpolation is close, the mean fill is not
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 48, 64).contiguous()
    op = Inpainting(random_mask(48, 64, 0.5, generator=_gen(1)), 0.01)
    x0 = op.fill_local(op.A(ramp))
    assert (x0 - ramp).abs().max() < 0.05
    missing = (op.mask < 0.5).expand_as(ramp)
    assert (x0 - ramp)[missing].abs().mean() < 0.1 * (ramp[missing] - 0.5).abs().mean()
    # pixels farther than the coarsest scale's reach (3 x 16 px) from every observation take ``fill``
    wide = Inpainting(box_mask(8, 120, [(0, 0, 8, 100)]), 0.01)
    x = torch.rand(1, 3, 8, 120, generator=_gen(2))
    y = wide.A(x)
    fill = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    far = wide.fill_local(y, fill)
    assert torch.allclose(far[..., :40], fill.expand(1, 3, 8, 40))
    observed_mean = x[..., 100:].mean((-2, -1)).view(1, 3, 1, 1)
    assert torch.allclose(wide.fill_local(y)[..., :40], observed_mean.expand(1, 3, 8, 40), atol=1e-6)
    near = far[..., 90:100]  # near the observed columns: their local mean, not the fill
    assert (near - fill).abs().min() > 0 and near.min() >= x[..., 100:].min()


def _laplacian(v):
    p = F.pad(v, (1, 1, 1, 1), mode="replicate")
    return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4 * v


def test_inpainting_init_is_the_harmonic_interpolation():
    # a horizontal ramp is harmonic (Neumann at the top and bottom): with its first and last columns observed it
    # is recovered exactly from half of its pixels and from a box, where the local fill is only close
    ramp = torch.linspace(0, 1, 64, dtype=torch.float64).view(1, 1, 1, 64).expand(1, 3, 48, 64).contiguous()
    random = random_mask(48, 64, 0.5, generator=_gen(1))
    random[..., [0, -1]] = 1
    for mask in (random, box_mask(48, 64, [(10, 12, 20, 30)])):
        op = Inpainting(mask, 0.01)
        y = op.A(ramp)
        x0 = op.init(y, tol=1e-10, max_iters=2000)
        torch.testing.assert_close(x0, ramp, atol=1e-6, rtol=0)
        assert (op.fill_local(y) - ramp).abs().max() > 1e-3
    # any image: observed pixels kept, discrete Laplacian ~0 at the missing ones, within the observed range,
    # each image of a batch as alone, no worse than the local fill on the Dirichlet energy
    x = torch.rand(2, 3, 40, 50, generator=_gen(3), dtype=torch.float64)
    op = Inpainting(random_box_mask(40, 50, _gen(4), count=3, frac=0.3) * random_mask(40, 50, 0.3, generator=_gen(5)),
                    0.01)
    y = op.A(x)
    x0 = op.init(y, tol=1e-8, max_iters=2000)
    obs = (op.mask > 0.5).expand_as(x)
    assert torch.equal(x0[obs], x[obs])
    assert _laplacian(x0)[~obs].abs().max() < 1e-6 < _laplacian(op.fill_local(y))[~obs].abs().max()
    assert x0.min() >= x[obs].min() - 1e-9 and x0.max() <= x[obs].max() + 1e-9
    torch.testing.assert_close(op.init(y[1:], tol=1e-8, max_iters=2000), x0[1:])

    def energy(v):
        return (v.diff(dim=-1) ** 2).sum() + (v.diff(dim=-2) ** 2).sum()
    assert energy(x0) < energy(op.fill_local(y))
    # an image with nothing observed keeps ``fill``; the default start still takes float32 images
    none = Inpainting(torch.zeros(8, 8), 0.01)
    fill = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(none.init(torch.zeros(1, 3, 8, 8), fill), fill.expand(1, 3, 8, 8))
    assert op.init(y.float()).dtype == torch.float32


def test_lambda_min_and_registry():
    assert Denoising(0.1).lambda_min() == 1.0
    assert SuperResolution(gaussian_kernel(1.0), 2, 0.1).lambda_min() == 0.0
    assert Inpainting(box_mask(4, 4, [(0, 0, 1, 1)]), 0.1).lambda_min() == 0.0
    assert abs(Blur(torch.ones(1, 1), 0.1).lambda_min() - 1.0) < 1e-12
    assert 0 <= Blur(gaussian_kernel(2.0), 0.1).lambda_min() < 1e-3
    assert set(OPERATORS) == {"denoise", "blur", "sr", "inpaint", "demosaic"}
    assert abs(sigma_from_255(25.5) - 0.1) < 1e-15


def test_kernel_helpers():
    g = gaussian_kernel(1.5)
    assert g.shape == (11, 11) and abs(float(g.sum()) - 1) < 1e-12 and torch.equal(g, g.flip(0)) and g.argmax() == 60
    line = motion_kernel(9, 5, 0)
    assert abs(float(line.sum()) - 1) < 1e-12 and line[4].sum() > 0.999  # horizontal line through the centre
    vert = motion_kernel(9, 5, 90)
    assert vert[:, 4].sum() > 0.999
    r1, r2 = motion_kernel(15, 10, generator=_gen(3)), motion_kernel(15, 10, generator=_gen(3))
    assert torch.equal(r1, r2) and abs(float(r1.sum()) - 1) < 1e-12 and (r1 >= 0).all()
    assert not torch.equal(r1, motion_kernel(15, 10, generator=_gen(4)))
    k = validate_kernel(torch.tensor([[1.0, -1e-9], [2.0, 1.0]]))
    assert k.min() == 0 and abs(float(k.sum()) - 1) < 1e-12


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("kind, resample", [("bicubic", "BICUBIC"), ("box", "BOX")])
def test_sr_kernel_down_samples_as_pil(factor, kind, resample):
    """SuperResolution with sr_kernel makes the low-resolution image PIL's resize makes (each pixel centred on its
    block: MATLAB's imresize and OpenCV's INTER_AREA too), away from the wrapped border; a kernel centred on its
    array samples the block's first pixel instead, (factor - 1) / 2 pixels off."""
    from PIL import Image

    x = np.random.default_rng(factor).random((12 * factor, 12 * factor)).astype(np.float32)
    small = (x.shape[1] // factor, x.shape[0] // factor)
    pil = np.asarray(Image.fromarray(x, mode="F").resize(small, getattr(Image, resample)), np.float64)
    inside = (slice(3, -3), slice(3, -3))  # PIL renormalises at the border, the operator wraps around
    k = sr_kernel(factor, kind)
    y = SuperResolution(k, factor, 0.01).A(torch.from_numpy(x).double()[None, None])[0, 0]
    assert np.abs(y.numpy() - pil)[inside].max() < 1e-6
    assert k.shape[0] % 2 == 1 and abs(float(k.sum()) - 1) < 1e-12 and (kind == "box" or k.min() < 0)
    if factor % 2:  # odd: the same weights centred on the array, a whole-pixel shift
        centred = torch.roll(k, ((factor - 1) // 2,) * 2, (0, 1))
        y0 = SuperResolution(centred, factor, 0.01).A(torch.from_numpy(x).double()[None, None])[0, 0]
        assert np.abs(y0.numpy() - pil)[inside].max() > 0.05


def test_sr_kernel_kinds_and_refusals():
    for factor, std in [(2, None), (3, None), (4, 1.5)]:
        marginal = sr_kernel(factor, "gaussian", std=std).sum(0)
        t = torch.arange(marginal.numel()) - marginal.numel() // 2 + (factor - 1) / 2  # distance to the block centre
        assert abs(float((marginal * t).sum())) < 1e-12  # centred on the block
        assert abs(float((marginal * t**2).sum()) ** 0.5 - (std or 0.5 * factor)) < 0.05 * (std or 0.5 * factor)
    assert torch.equal(sr_kernel(1, "bicubic"), torch.ones(1, 1, dtype=torch.float64))
    point = sr_kernel(2, "gaussian", std=0.05)  # narrower than the block: the block centre's two nearest pixels
    assert point.shape == (3, 3) and torch.allclose(point[:2, :2], torch.full((2, 2), 0.25, dtype=torch.float64))
    assert sr_kernel(np.int64(4)).shape == (19, 19)  # a numpy integer factor
    for bad in [dict(factor=0), dict(factor=2.0), dict(factor=2, kind="lanczos"), dict(factor=2, kind="box", std=1.0),
                dict(factor=2, kind="gaussian", std=0.0)]:
        _one_line_error(lambda: sr_kernel(**bad), match="factor|kernel|std")
    signed = sr_kernel(4, "bicubic")
    assert torch.equal(SuperResolution(signed, 4, 0.1).kernel, signed)  # negative lobes kept
    _one_line_error(lambda: Blur(signed, 0.1), match="negative")  # a blur kernel stays non-negative


def test_load_kernel_and_mask(tmp_path):
    from PIL import Image

    k = np.random.default_rng(0).random((5, 7))
    np.save(tmp_path / "k.npy", k)
    assert torch.allclose(load_kernel(tmp_path / "k.npy"), torch.from_numpy(k / k.sum()))
    Image.fromarray((k * 255).astype(np.uint8)).save(tmp_path / "k.png")
    assert load_kernel(tmp_path / "k.png").shape == (5, 7)
    m = np.zeros((6, 8), np.uint8)
    m[:, :4] = 255
    Image.fromarray(m).convert("RGB").save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png")
    assert mask.shape == (1, 6, 8) and mask[..., :4].eq(1).all() and mask[..., 4:].eq(0).all()
    np.save(tmp_path / "m.npy", m[None] / 255.0)
    assert torch.equal(load_mask(tmp_path / "m.npy"), mask)


def _one_line_error(fn, *args, match: str | None = None, **kw):
    with pytest.raises(OperatorError, match=match) as err:
        fn(*args, **kw)
    assert "\n" not in str(err.value) and str(err.value)
    return str(err.value)


def test_validation_errors(tmp_path):
    x = torch.rand(1, 3, 16, 16)
    _one_line_error(Blur, torch.tensor([[1.0, float("nan")]]), 0.1, match="NaN")
    _one_line_error(Blur, -torch.ones(3, 3), 0.1, match="positive sum")
    _one_line_error(Blur, torch.tensor([[1.0, -0.5], [0.2, 0.1]]), 0.1, match="negative")
    _one_line_error(Blur, torch.zeros(3, 3), 0.1, match="positive sum")
    _one_line_error(Blur, torch.ones(3, 3, 3), 0.1, match="2-D")
    _one_line_error(Blur(torch.ones(17, 5), 0.1).A, x, match="blur kernel 17x5 is larger than the image 16x16")
    _one_line_error(SuperResolution(torch.ones(3, 3), 3, 0.1).A, x, match="16x16 is not divisible by the super")
    _one_line_error(SuperResolution, torch.ones(3, 3), 0, 0.1, match="factor")
    _one_line_error(SuperResolution, torch.ones(3, 3), 2.5, 0.1, match="factor")
    _one_line_error(Inpainting(torch.ones(16, 15), 0.1).A, x, match="give a mask of the image's height")
    _one_line_error(Inpainting(torch.ones(2, 16, 16), 0.1).A, x, match="does not match")
    _one_line_error(Inpainting, torch.full((4, 4), 2.0), 0.1, match=r"\[0, 1\]")
    for bad in (0, -0.1, float("nan"), float("inf")):
        _one_line_error(Denoising, bad, match="sigma")
    _one_line_error(Denoising(0.1).prox_l2, x, x, 0.0, match="gamma")
    _one_line_error(Denoising(0.1).prox_l2, x, x[..., :8], 0.1, match="does not match")
    for bad in (-0.1, 1.0, 1.5):
        _one_line_error(random_mask, 4, 4, bad, match="rate")
    _one_line_error(box_mask, 4, 4, [(5, 0, 1, 1)], match="box")
    _one_line_error(load_kernel, tmp_path / "missing.npy", match="missing.npy")
    (tmp_path / "garbage.png").write_bytes(b"\x00\x01not an image\xff" * 10)
    _one_line_error(load_kernel, tmp_path / "garbage.png", match="garbage.png")
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage\n\x00")
    _one_line_error(load_kernel, tmp_path / "garbage.npy", match="garbage.npy")
    np.save(tmp_path / "k3.npy", np.ones((2, 3, 3)))
    _one_line_error(load_kernel, tmp_path / "k3.npy", match="k3.npy")
    _one_line_error(load_mask, tmp_path / "nomask.png", match="nomask.png")
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise std must be > 0 on the 0-255 scale, got"):
            sigma_from_255(bad)


def test_bayer_mask_patterns():
    rggb = bayer_mask(4, 6, "rggb")
    assert rggb.shape == (3, 4, 6) and torch.equal(rggb.sum(0), torch.ones(4, 6))  # one channel per pixel
    assert rggb[0, 0, 0] == 1 and rggb[1, 0, 1] == 1 and rggb[1, 1, 0] == 1 and rggb[2, 1, 1] == 1
    assert float(rggb[1].mean()) == 0.5 and float(rggb[0].mean()) == float(rggb[2].mean()) == 0.25
    for pattern in ("BGGR", "GRBG", "GBRG"):
        m = bayer_mask(4, 6, pattern)
        assert all(m["RGB".index(c), k // 2, k % 2] == 1 for k, c in enumerate(pattern))
    dinv = pytest.importorskip("deepinv")  # deepinv's "bayer" is BGGR in this naming
    assert torch.equal(bayer_mask(4, 6, "BGGR"), dinv.physics.Demosaicing(img_size=(4, 6)).mask[0])
    with pytest.raises(OperatorError, match="not one of RGGB"):
        bayer_mask(4, 6, "RGBG")
