"""restore.noise: the noise std of an observation, estimated from the observation (``--noise-std auto``)."""

import pytest
import torch

from data.images import builtin_images
from restore.noise import NoiseEstimateError, _noise_variance, estimate_noise_std
from restore.operators import Blur, Denoising, gaussian_kernel, random_mask


def _photo(side: int = 96, index: int = 1) -> torch.Tensor:
    """[1, 3, side, side] crop of a built-in photograph, at its own resolution (its texture intact)."""
    x = builtin_images(3)[index]
    top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
    return x[None, :, top:top + side, left:left + side].double()


def _noisy(x: torch.Tensor, sigma255: float, seed: int = 0) -> torch.Tensor:
    return Denoising(sigma255 / 255).degrade(x, torch.Generator().manual_seed(seed))


def test_noise_variance_is_the_mean_of_the_noise_eigenvalues():
    noise = torch.full((60,), 4.0) + torch.linspace(-0.5, 0.5, 60)  # symmetric spread around sigma^2 = 4
    signal = torch.tensor([50.0, 200.0, 900.0, 3000.0])
    assert float(_noise_variance(torch.cat([noise, signal + 4]).sort().values)) == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize("sigma255", [2.55, 10.0, 30.0])
def test_blurred_photograph(sigma255):
    """A blur empties the patches' high-frequency directions: what is left there is the noise."""
    clean = _photo()
    y = Blur(gaussian_kernel(1.6), sigma255 / 255).degrade(clean, torch.Generator().manual_seed(1))
    estimate = float(estimate_noise_std(y)[0]) * 255
    assert estimate == pytest.approx(sigma255, rel=0.05)


@pytest.mark.parametrize("sigma255", [5.0, 25.0])
def test_noisy_photograph_and_a_batch(sigma255):
    clean = torch.cat([_photo(index=1), _photo(index=2)])
    y = _noisy(clean, sigma255)
    estimates = estimate_noise_std(y) * 255  # one per image
    assert estimates.shape == (2,)
    # unblurred texture adds to the noise floor at low noise (measured: 5.41 for 5 on the first crop)
    assert estimates.tolist() == pytest.approx([sigma255] * 2, rel=0.1)
    pooled = float(estimate_noise_std(y, pooled=True)[0]) * 255
    assert pooled == pytest.approx(sigma255, rel=0.08)


def test_mask_keeps_the_observed_pixels_only():
    """Inpainting: the missing half holds much stronger noise (as unobserved pixels hold anything); the mask
    leaves it out."""
    clean = _photo(side=96)
    y = _noisy(clean, 5.0)
    y[..., 48:] = _noisy(clean, 60.0, seed=2)[..., 48:]
    mask = torch.ones(1, 1, 96, 96)
    mask[..., 48:] = 0
    assert float(estimate_noise_std(y)[0]) * 255 > 10  # the whole image: mixed
    assert float(estimate_noise_std(y, mask=mask)[0]) * 255 == pytest.approx(5.0, rel=0.08)


def test_clipped_pixels_are_left_out():
    """Pixels clipped at 0 or 1 (a saved observation) hold less than their noise; patches with one are left out."""
    clean = _photo(side=96, index=3)
    clean[..., :40, :] = 0.02  # a dark area, 40% clipped once noise of 20 is added
    y = _noisy(clean, 20.0).clamp(0, 1)
    # measured: 19.28; 17.62 with the clipped patches kept
    assert float(estimate_noise_std(y)[0]) * 255 == pytest.approx(20.0, rel=0.05)


def test_refusals_say_to_give_the_noise_level():
    with pytest.raises(NoiseEstimateError, match="smaller than the 8x8 patches"):
        estimate_noise_std(torch.rand(1, 3, 6, 40))
    with pytest.raises(NoiseEstimateError, match="give the noise level"):  # too few patches for 192 dimensions
        estimate_noise_std(torch.rand(1, 3, 20, 20))
    y = _noisy(_photo(side=64), 5.0)
    sparse = random_mask(64, 64, 0.5, generator=torch.Generator().manual_seed(0))  # no wholly observed 8x8 patch
    with pytest.raises(NoiseEstimateError, match="patches of observed pixels"):
        estimate_noise_std(y, mask=sparse)
    with pytest.raises(NoiseEstimateError, match=r"\[N, C, H, W\]"):
        estimate_noise_std(y[0])
