import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import torch  # noqa: E402

from hvae.config import HVAEConfig  # noqa: E402
from hvae.model import HierarchicalVAE  # noqa: E402

torch.set_num_threads(2)

TINY = HVAEConfig(image_channels=3, stem_channels=8, widths=(8, 8, 8), strides=(2, 2, 1), encoder_blocks=(1, 1, 1),
                  latent_groups=(1, 2, 1), kernel_sizes=(3, 3, 3), latent_channels=3)


@pytest.fixture(scope="session")  # frozen: safe to share
def tiny_config() -> HVAEConfig:
    return TINY


@pytest.fixture
def tiny_model() -> HierarchicalVAE:
    torch.manual_seed(0)
    return HierarchicalVAE(TINY).eval()


@pytest.fixture
def busy_tiny_model(tiny_model) -> HierarchicalVAE:
    """The tiny model with every weight perturbed, so that G(E(x)) really depends on x (zero-initialised
    last layers make a fresh model's output nearly constant) and every block carries real numbers."""
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return tiny_model


def _load_benchmark(name: str):
    """benchmarks/<name>.py imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", Path(__file__).parent.parent / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_benchmark():
    """load_benchmark("quality") -> the module of benchmarks/quality.py, freshly imported."""
    return _load_benchmark
