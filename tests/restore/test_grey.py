"""restore.operators.GreyObservation: a grey observation restored through a colour prior (adjointness, the x-step
exact on grey images, refusals) and restore.py on a grey photograph with the shipped colour prior."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.images import builtin_images, write_image
from restore.operators import (Blur, Denoising, GreyObservation, Inpainting, OperatorError, SuperResolution,
                               motion_kernel, prior_operator, random_mask)

DT = torch.float64
ROOT = Path(__file__).resolve().parents[2]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inner(name: str, sigma: float = 0.05):
    k = torch.rand(5, 4, generator=_gen(1), dtype=DT)
    return {"denoise": lambda: Denoising(sigma),
            "blur": lambda: Blur(k, sigma),
            "blur_valid": lambda: Blur(k, sigma, padding="valid", cg_tol=1e-13, cg_max_iters=500),
            "sr2": lambda: SuperResolution(k, 2, sigma),
            "sr2_valid": lambda: SuperResolution(k, 2, sigma, padding="valid", cg_tol=1e-13, cg_max_iters=500),
            "inpaint": lambda: Inpainting(random_mask(24, 30, 0.4, _gen(3)), sigma)}[name]()


NAMES = ["denoise", "blur", "blur_valid", "sr2", "sr2_valid", "inpaint"]


@pytest.mark.parametrize("name", NAMES)
def test_adjointness(name):
    op = GreyObservation(_inner(name))
    x = torch.rand(2, 3, 24, 30, generator=_gen(5), dtype=DT)
    y = torch.rand(op.A(x).shape, generator=_gen(6), dtype=DT)
    assert y.shape[1] == 1
    assert torch.allclose((op.A(x) * y).sum(), (x * op.A_adjoint(y)).sum(), rtol=1e-10, atol=0)
    assert op.x_shape(tuple(y.shape)) == tuple(x.shape)


@pytest.mark.parametrize("name", NAMES)
def test_prox_is_exact_on_grey_images(name):
    """x = prox_l2(z, y, gamma) is grey (equal channels u) and minimises ||A_g u - y||^2 / (2 sigma^2)
    + sum_c ||u - z_c||^2 / (2 gamma^2): its gradient in u vanishes."""
    inner = _inner(name)
    op = GreyObservation(inner)
    z = torch.rand(2, 3, 24, 30, generator=_gen(7), dtype=DT)
    y = torch.rand(op.A(z).shape, generator=_gen(8), dtype=DT)
    for gamma in (0.02, 0.3, torch.tensor([0.05, 1.5], dtype=DT).reshape(2, 1, 1, 1)):
        x = op.prox_l2(z, y, gamma)
        assert x.shape == z.shape and torch.equal(x[:, 1:], x[:, :1].expand(-1, 2, -1, -1))
        u = x[:, :1]
        grad = inner.A_adjoint(inner.A(u) - y) / inner.sigma**2 + (u - z).sum(1, keepdim=True) / gamma**2
        scale = (inner.A_adjoint(y).norm() + inner.A_adjoint(inner.A(u)).norm()) / inner.sigma**2 \
            + (3 * (u.norm() + z.norm()) / torch.as_tensor(gamma) ** 2).max()
        assert grad.norm() <= 1e-8 * scale, (name, gamma, float(grad.norm() / scale))


def test_start_frame_and_refusals():
    inner = Blur(torch.ones(3, 3, dtype=DT), 0.05, padding="valid")
    op = GreyObservation(inner)
    y = torch.rand(1, 1, 10, 12, generator=_gen(0), dtype=DT)
    start = op.init(y)
    assert start.shape == (1, 3, 12, 14) and torch.equal(start[:, 2:], inner.init(y))
    assert torch.equal(op.frame(start), inner.frame(start)) and op.wraps is False
    assert prior_operator(inner, 1, 1) is inner and prior_operator(inner, 3, 3) is inner
    assert isinstance(prior_operator(inner, 1, 3), GreyObservation)
    with pytest.raises(OperatorError, match="must be grey"):
        op.prox_l2(start, y.expand(-1, 3, -1, -1), 0.1)
    with pytest.raises(OperatorError, match=r"expects images \[N, 3, H, W\]"):
        op.A(y)


@pytest.mark.parametrize("index", [6, 13])
def test_grey_photograph_through_the_colour_prior_beats_wiener(tmp_path, index):
    """restore.py on a grey crop with the shipped colour prior (motion blur, noise 7.65). When the grey image went
    through the prior as three copies with their noise counted three times over, PnP-HVAE lost to the Wiener line
    of metrics.json on these crops (27.92 against 32.79 dB, 27.26 against 32.68); as one grey observation it is
    ahead (36.6 and 34.5)."""
    from restore.cli import main

    image = builtin_images(1)[index]
    h, w = image.shape[-2:]
    write_image(tmp_path / "grey.png", image[:, h // 2 - 32:h // 2 + 32, w // 2 - 32:w // 2 + 32])
    out = tmp_path / "out"
    main(["--clean", str(tmp_path / "grey.png"), "--operator", "blur", "--motion-length", "7", "--noise-std", "7.65",
          "--prior", str(ROOT / "priors" / "natural.pt"), "--out", str(out), "--no-progress"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["psnr"] > metrics["tikhonov"]["psnr"] + 1.0, metrics


def test_every_start_of_jpmap_is_grey_in_the_prior_channels(tiny_model):
    """JPMAPConfig.init "auto", "observation" and "adjoint" all start from x [N, 3, H, W] with equal channels."""
    from restore.jpmap import JPMAPConfig, initial_x, jpmap

    op = GreyObservation(Blur(torch.ones(3, 3), 0.05))
    y = torch.rand(2, 1, 16, 16, generator=_gen(0))
    for how in ("auto", "observation", "adjoint"):
        x = initial_x(y, op, how)
        assert x.shape == (2, 3, 16, 16) and torch.equal(x[:, 1:], x[:, :1].expand(-1, 2, -1, -1)), how
        result = jpmap(y, op, tiny_model, JPMAPConfig(max_iters=2, init=how))
        assert result.estimate.shape == (2, 3, 16, 16) and torch.isfinite(result.estimate).all()


def _grey_observation(index: int = 6, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, y): a grey crop of a scikit-image photograph and its motion-blurred noisy observation (8-bit)."""
    image = builtin_images(1)[index]
    h, w = image.shape[-2:]
    clean = image[:, h // 2 - size // 2:h // 2 + size // 2, w // 2 - size // 2:w // 2 + size // 2]
    op = Blur(motion_kernel(9, 7, 0), 7.65 / 255, padding="valid")
    y = op.degrade(clean[None].double(), torch.Generator().manual_seed(0))[0].float()
    return op.frame(clean[None])[0], (y.clamp(0, 1) * 255).round() / 255


def test_noise_of_a_grey_image_stored_in_colour():
    """Three equal channels carry one noise: the estimate is the grey image's (it was 0: the copies made two of
    every three patch-covariance eigenvalues vanish)."""
    from restore.noise import estimate_noise_std

    _, y = _grey_observation(size=96)
    grey = estimate_noise_std(y[None])
    assert 6.5 < float(grey) * 255 < 9
    assert torch.equal(estimate_noise_std(y[None].expand(1, 3, -1, -1)), grey)


def test_a_grey_photograph_stored_in_colour_is_restored_as_the_grey_one(tmp_path):
    """restore.py --input an RGB file whose channels are equal (a grey photograph saved in colour, its noise the
    same in each channel): the same noise estimate, restoration and PSNR as the grey file, written grey; its
    reference may be stored in colour too. A folder holding it next to a colour image of the same size restores
    it as alone."""
    from data.images import read_image
    from restore.cli import main

    clean, y = _grey_observation()
    write_image(tmp_path / "grey.png", y)
    write_image(tmp_path / "rgb" / "rgb.png", y.expand(3, -1, -1))
    write_image(tmp_path / "clean_rgb.png", clean.expand(3, -1, -1))
    write_image(tmp_path / "clean.png", clean)
    np.save(tmp_path / "k.npy", motion_kernel(9, 7, 0).numpy())
    common = ["--operator", "blur", "--kernel", str(tmp_path / "k.npy"), "--noise-std", "auto", "--iterations", "5",
              "--no-progress"]
    metrics = {}
    for name, observed, reference in (("grey", tmp_path / "grey.png", tmp_path / "clean.png"),
                                      ("rgb", tmp_path / "rgb" / "rgb.png", tmp_path / "clean_rgb.png")):
        assert main(["--input", str(observed), "--clean", str(reference), *common, "--out", str(tmp_path / name)]) == 0
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics["rgb"]["settings"]["noise_std"] == metrics["grey"]["settings"]["noise_std"]
    assert 6 < metrics["grey"]["settings"]["noise_std"] < 9 and metrics["rgb"]["psnr"] == metrics["grey"]["psnr"]
    restored = read_image(tmp_path / "rgb" / "restored.png")
    assert restored.shape[0] == 1 and torch.equal(restored, read_image(tmp_path / "grey" / "restored.png"))
    colour = builtin_images(3)[2][:, :y.shape[-2], :y.shape[-1]]  # a colour observation of the same size
    write_image(tmp_path / "rgb" / "colour.png", colour)
    assert main(["--input", str(tmp_path / "rgb"), *common, "--images-per-batch", "2",
                 "--out", str(tmp_path / "folder")]) == 0
    assert torch.equal(read_image(tmp_path / "folder" / "restored" / "rgb.png"), restored)
    assert read_image(tmp_path / "folder" / "restored" / "colour.png").shape[0] == 3


def test_a_large_grey_photograph_stored_in_colour_streamed_tile_by_tile(tmp_path):
    """restore.py --input FILE --tile: the file read box by box (large_io.grey_if_equal) is restored as the grey
    one, tile for tile, and written grey."""
    from data.images import read_image
    from restore.cli import main

    _, y = _grey_observation()
    write_image(tmp_path / "grey.png", y)
    write_image(tmp_path / "rgb.png", y.expand(3, -1, -1))
    common = ["--operator", "blur", "--motion-length", "7", "--noise-std", "7.65", "--iterations", "3", "--tile", "32",
              "--no-progress"]
    for name in ("grey", "rgb"):
        assert main(["--input", str(tmp_path / f"{name}.png"), *common, "--out", str(tmp_path / name)]) == 0
    restored = read_image(tmp_path / "rgb" / "restored.png")
    assert restored.shape[0] == 1 and torch.equal(restored, read_image(tmp_path / "grey" / "restored.png"))
