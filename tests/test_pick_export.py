"""benchmarks/pick_export.py on tiny checkpoints and synthetic faces: the export is the best-scoring candidate."""

import math
from pathlib import Path

import pytest
import torch

from data.images import write_image
from hvae.export import load_prior, prior_meta
from hvae.model import HierarchicalVAE


def _checkpoint(path: Path, config, seeds: tuple[int, int], step: int) -> Path:
    """A checkpoint as train.py writes it: hvae_config plus 'ema.' and 'model.' weights (two random inits)."""
    state = {}
    for prefix, seed in zip(("ema.", "model."), seeds):
        torch.manual_seed(seed)
        state.update({prefix + k: v for k, v in HierarchicalVAE(config).state_dict().items()})
    torch.save({"hvae_config": config.to_dict(), "state_dict": state, "global_step": step}, path)
    return path


@pytest.fixture
def workspace(tmp_path, tiny_config):
    g = torch.Generator().manual_seed(0)
    faces = tmp_path / "faces"
    for i in range(60):  # the 5% hash split keeps a few of them for validation
        x = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(32, 32), mode="bilinear")
        write_image(faces / f"face{i:02d}.png", x[0])
    ckpts = [_checkpoint(tmp_path / "a.ckpt", tiny_config, (0, 1), 10),
             _checkpoint(tmp_path / "b.ckpt", tiny_config, (2, 3), 20)]
    return tmp_path, faces, ckpts


@pytest.mark.parametrize("select, kind", [("restore", "faces"), ("bpd", "faces"), ("restore", "patches")])
def test_exports_the_best_candidate(workspace, select, kind, load_benchmark):
    tmp_path, faces, ckpts = workspace
    pick = load_benchmark("pick_export")
    out = tmp_path / f"{select}.pt"
    size = 32 if kind == "faces" else 16  # faces: SR x4, whose bicubic kernel is 19x19
    common = [*map(str, ckpts), str(faces), str(out), "--image-size", str(size), "--images", "8",
              "--restore-images", "2", "--tasks", "sr", "inpaint", "--kind", kind]
    best = pick.main(common + ["--select", select])
    # every candidate scored the same way, independently of main
    if kind == "faces":  # whole images resized to 32x32
        dm = pick.FaceDataModule(faces, image_size=size, batch_size=32, val_fraction=0.05)
    else:  # fixed 16x16 patches
        dm = pick.PatchDataModule(str(faces), patch_size=16, batch_size=32, val_fraction=0.05, val_samples=8)
    dm.setup("fit")
    val = torch.stack([dm.val_set[i] for i in range(min(8, len(dm.val_set)))])
    presets = pick.read_presets(pick.ROOT / "configs/restore" / ("faces.yaml" if kind == "faces" else "natural.yaml"))
    problems = pick.restoration_problems(val[:2], ["sr", "inpaint"], tmp_path, presets, kind)
    scores = []
    for path in ckpts:
        for label, cfg, state, _ in pick.load_weights(path):
            model = HierarchicalVAE(cfg).eval()
            model.load_state_dict(state)
            scores.append(pick.score(model, val, val[:2], problems))
    assert len(scores) == 4 and all(math.isfinite(b) and math.isfinite(p) for b, p in scores)
    key = (lambda s: s[1]) if select == "restore" else (lambda s: -s[0])
    want = max(scores, key=key)
    assert best.bits_per_dim == pytest.approx(want[0]) and best.restore_psnr == pytest.approx(want[1])
    exported = load_prior(out)
    assert prior_meta(out)["trained_on"] == {"kind": "images" if kind == "faces" else "patches", "size": size}
    for k, v in best.model.state_dict().items():  # the chosen weights, in half precision
        assert torch.equal(exported.state_dict()[k], v.half().float()), k


def test_bad_checkpoint_is_refused_and_nothing_written(workspace, load_benchmark):
    tmp_path, faces, ckpts = workspace
    pick = load_benchmark("pick_export")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    out = tmp_path / "prior.pt"
    with pytest.raises(SystemExit) as e:
        pick.main([str(ckpts[0]), str(junk), str(faces), str(out), "--image-size", "16", "--tasks", "sr", "inpaint"])
    assert "junk.ckpt" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:  # blur needs kernel 9
        pick.main([str(ckpts[0]), str(faces), str(out), "--image-size", "16", "--kernels", str(tmp_path)])
    assert "9.npy" in str(e.value) and "--kernels" in str(e.value)
    with pytest.raises(SystemExit) as e:
        pick.main([str(ckpts[0]), str(faces), str(ckpts[1]), "--image-size", "16"])  # would overwrite a checkpoint
    assert "overwrite" in str(e.value)
    assert not out.exists()
