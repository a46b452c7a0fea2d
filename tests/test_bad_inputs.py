"""Bad inputs, each refused with one `error:` line, exit code 2 and nothing written; the formats that are
handled (RGBA, palette, grey, 16-bit, 1x1) restore with a sensible output.

The table runs ``restore.cli.main``, which ``restore.py`` returns as its exit code, in this process (a tiny
prior, one iteration: fast); a few rows also run ``restore.py`` itself, to prove the real exit code. Training
configs and checkpoints go through ``hvae.cli.main``, which is ``train.py``. See docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from data.images import read_image_with_info, write_image
from hvae.config import HVAEConfig
from hvae.export import export_prior
from hvae.model import HierarchicalVAE
from restore.cli import SSIM_WINDOW
from restore.cli import main as restore_main

ROOT = Path(__file__).resolve().parent.parent
H, W = 24, 32  # the ordinary test image
MARKER = "code_ran.txt"  # what the malicious pickles would create


@dataclass(frozen=True)
class Refusal:
    """A bad input: ``argv`` (``@name`` is a file of the ``inputs`` folder) and a word the error must contain."""

    name: str
    argv: tuple[str, ...]
    says: str


@dataclass(frozen=True)
class Handled:
    """An unusual but valid input: the run succeeds with this many channels and this bit depth out."""

    name: str
    argv: tuple[str, ...]
    channels: int
    bit_depth: int
    size: tuple[int, int] = (H, W)


REFUSALS = [
    Refusal("truncated_png", ("--clean", "@truncated.png", "--operator", "denoise"), "truncated"),
    Refusal("truncated_jpeg", ("--clean", "@truncated.jpg", "--operator", "denoise"), "truncated"),
    Refusal("truncated_tiff", ("--clean", "@truncated.tif", "--operator", "denoise"), "cannot read image"),
    Refusal("truncated_tiff_observation", ("--input", "@truncated.tif", "--operator", "denoise"), "cannot read image"),
    Refusal("corrupt_bytes", ("--clean", "@corrupt.png", "--operator", "denoise"), "cannot read image"),
    Refusal("empty_file", ("--input", "@empty.png", "--operator", "denoise"), "empty"),
    Refusal("decompression_bomb_header", ("--clean", "@bomb.png", "--operator", "denoise"), "over the limit"),
    Refusal("pixel_limit_lowered_on_purpose", ("--clean", "@clean.png", "--operator", "denoise", "--max-pixels",
                                               str(H * W - 1)), "over the limit"),
    Refusal("one_pixel_super_resolution", ("--clean", "@one.png", "--operator", "sr", "--scale", "2"),
            "smaller than --scale"),
    Refusal("image_smaller_than_kernel", ("--clean", "@small.png", "--operator", "blur", "--kernel", "@k7.npy"),
            "larger than the image"),
    Refusal("kernel_with_nan", ("--clean", "@clean.png", "--operator", "blur", "--kernel", "@nan.npy"), "NaN"),
    Refusal("kernel_negative_sum", ("--clean", "@clean.png", "--operator", "blur", "--kernel", "@negative.npy"),
            "positive sum"),
    Refusal("kernel_zero_sum", ("--clean", "@clean.png", "--operator", "blur", "--kernel", "@zero.npy"), "positive sum"),
    Refusal("mask_wrong_shape", ("--clean", "@clean.png", "--operator", "inpaint", "--mask", "@mask.png"), "but the image is"),
    Refusal("valid_boundary_smaller_than_kernel", ("--clean", "@small.png", "--operator", "blur", "--kernel",
                                                    "@k7.npy", "--boundary", "valid"), "--boundary valid needs a larger"),
    Refusal("valid_boundary_not_a_convolution", ("--clean", "@clean.png", "--operator", "denoise", "--boundary",
                                                  "valid"), "--boundary valid is for --operator blur or sr"),
    Refusal("unknown_operator", ("--clean", "@clean.png", "--operator", "sharpen"), "invalid choice"),
    Refusal("negative_noise", ("--clean", "@clean.png", "--operator", "denoise", "--noise-std", "-3"), "--noise-std"),
    Refusal("zero_noise", ("--clean", "@clean.png", "--operator", "denoise", "--noise-std", "0"), "--noise-std"),
    Refusal("noise_not_a_number", ("--clean", "@clean.png", "--operator", "denoise", "--noise-std", "lots"),
            "neither a number"),
    Refusal("noise_auto_without_observation", ("--clean", "@clean.png", "--operator", "denoise", "--noise-std", "auto"),
            "--noise-std auto estimates the noise of --input"),
    Refusal("noise_auto_image_too_small", ("--input", "@clean.png", "--operator", "denoise", "--noise-std", "auto"),
            "give the noise level instead"),
    Refusal("noise_auto_sparse_mask", ("--input", "@clean.png", "--operator", "inpaint", "--mask", "@mask_sparse.png",
                                       "--noise-std", "auto"), "patches of observed pixels"),
    Refusal("noise_auto_noiseless", ("--input", "@flat.png", "--operator", "denoise", "--noise-std", "auto"),
            "found no noise"),
    Refusal("accelerator_without_gpu", ("--clean", "@clean.png", "--operator", "denoise", "--tile", "16",
                                        "--accelerator", "gpu"), "no GPU is visible"),
    Refusal("cuda_graph_with_compile", ("--clean", "@clean.png", "--operator", "denoise", "--cuda-graph", "--compile",
                                        "default"), "--cuda-graph replays the eager pass"),
    Refusal("fast_path_flag_with_adam", ("--clean", "@clean.png", "--operator", "denoise", "--method", "adam",
                                         "--fuse-nets"), "JPMAP options"),
    Refusal("pointwise_matmul_without_channels_last", ("--clean", "@clean.png", "--operator", "denoise",
                                                       "--pointwise-matmul"), "add --channels-last"),
    Refusal("divergence_guard_below_one", ("--clean", "@clean.png", "--operator", "denoise", "--divergence-guard",
                                           "0.5"), "--divergence-guard must be > 1"),
    Refusal("prior_of_another_architecture", ("--clean", "@clean.png", "--operator", "denoise",
                                              "--prior", "@other_architecture.pt"), "architecture"),
    Refusal("prior_with_nan_weights", ("--clean", "@clean.png", "--operator", "denoise", "--prior", "@nan_prior.pt"),
            "non-finite weights"),
    Refusal("prior_not_a_checkpoint", ("--clean", "@clean.png", "--operator", "denoise", "--prior", "@notes.pt"),
            "not a readable checkpoint"),
    Refusal("prior_that_runs_code", ("--clean", "@clean.png", "--operator", "denoise", "--prior", "@evil.pt"),
            "refusing to load"),
    Refusal("preset_list_without_noise", ("--clean", "@clean.png", "--operator", "denoise",
                                          "--preset", "@preset_untagged_list.yaml"), "needs 'noise'"),
    Refusal("preset_bad_tau", ("--clean", "@clean.png", "--operator", "denoise", "--preset", "@preset_bad_tau.yaml"),
            "tau 'warm'"),
    Refusal("preset_unknown_operator", ("--clean", "@clean.png", "--operator", "denoise",
                                        "--preset", "@preset_unknown_operator.yaml"), "must map some of"),
    Refusal("tau_not_a_number", ("--clean", "@clean.png", "--operator", "denoise", "--tau", "0.9:x"),
            "--tau '0.9:x'"),
]

HANDLED = [
    Handled("rgba_alpha_dropped", ("--clean", "@rgba.png", "--operator", "denoise"), 3, 8),
    Handled("palette_expanded", ("--clean", "@palette.png", "--operator", "denoise"), 3, 8),
    Handled("grey_8_bit", ("--clean", "@grey.png", "--operator", "blur", "--blur-sigma", "1"), 1, 8),
    Handled("colour_16_bit_tiff", ("--input", "@colour16.tif", "--operator", "denoise"), 3, 16),
    Handled("one_pixel", ("--clean", "@one.png", "--operator", "denoise"), 3, 8, (1, 1)),
    Handled("colour_through_grey_prior", ("--clean", "@clean.png", "--operator", "denoise", "--prior", "@grey_prior.pt"),
            3, 8),
]

SUBPROCESS_ROWS = ["unknown_operator", "prior_that_runs_code"]


# ------------------------------------------------------------------------------------------------ inputs
def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bomb_png(side: int) -> bytes:
    """A tiny PNG whose header claims side x side pixels (a decompression bomb's first line of attack)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _truncate(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


class _RunsCode:
    """Unpickling this runs a shell command that creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _images(d: Path) -> None:
    clean = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
    for name in ("clean.png", "clean.jpg", "clean.tif"):
        write_image(d / name, clean)
    for ext in ("png", "jpg", "tif"):
        _truncate(d / f"clean.{ext}", d / f"truncated.{ext}")
    (d / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(300))
    (d / "empty.png").write_bytes(b"")
    (d / "bomb.png").write_bytes(_bomb_png(100_000))
    rgb = np.round(clean.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(np.concatenate([rgb, rgb[..., :1]], axis=-1), "RGBA").save(d / "rgba.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.png")
    write_image(d / "grey.png", clean[:1])
    write_image(d / "colour16.tif", clean, bit_depth=16)
    write_image(d / "one.png", clean[:, :1, :1])
    write_image(d / "small.png", clean[:, :4, :4])
    write_image(d / "mask.png", torch.ones(1, H // 2, W // 2))
    write_image(d / "flat.png", torch.full((3, 48, 48), 0.5))  # enough patches, and no noise in them
    write_image(d / "mask_sparse.png", (torch.arange(H * W).reshape(1, H, W) % 2).float())  # every other pixel


def _kernels(d: Path) -> None:
    nan = np.ones((5, 5), np.float32)
    nan[0, 0] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "negative.npy", -np.ones((3, 3), np.float32))
    np.save(d / "zero.npy", np.array([[1.0, -2.0, 1.0]], np.float32))
    np.save(d / "k7.npy", np.ones((7, 7), np.float32))
    (d / "preset_untagged_list.yaml").write_text("denoise:\n  - {gamma: 10}\n")
    (d / "preset_bad_tau.yaml").write_text("denoise: {tau: warm}\n")
    (d / "preset_unknown_operator.yaml").write_text("deblur: {gamma: 10}\n")


def _priors(d: Path, config: HVAEConfig) -> None:
    torch.manual_seed(0)
    export_prior(HierarchicalVAE(config), d / "tiny.pt")
    export_prior(HierarchicalVAE(HVAEConfig(**{**config.to_dict(), "image_channels": 1})), d / "grey_prior.pt")
    wider = HVAEConfig(**{**config.to_dict(), "widths": tuple(2 * w for w in config.widths)})
    payload = torch.load(export_prior(HierarchicalVAE(wider), d / "wider.pt"), weights_only=True)
    payload["config"] = config.to_dict()  # weights of one architecture under the config of another
    torch.save(payload, d / "other_architecture.pt")
    diverged = HierarchicalVAE(config)
    with torch.no_grad():
        next(p for name, p in diverged.named_parameters() if name.startswith("stem")).fill_(float("nan"))
    export_prior(diverged, d / "nan_prior.pt")
    (d / "notes.pt").write_text("these are not weights\n")
    torch.save({"format": "pnp-hvae-prior", "payload": _RunsCode(d / MARKER)}, d / "evil.pt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_config) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    _images(d)
    _kernels(d)
    _priors(d, tiny_config)
    return d


def _argv(row_argv: tuple[str, ...], inputs: Path, out: Path) -> list[str]:
    files = [str(inputs / a[1:]) if a.startswith("@") else a for a in row_argv]
    return ["--prior", str(inputs / "tiny.pt"), "--iterations", "1", "--no-progress", *files, "--out", str(out)]


def _run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = restore_main(argv)
    except SystemExit as stop:  # argparse refusals exit from inside main, as restore.py would
        code = stop.code
    return code, capsys.readouterr().err


def _assert_one_line_error(err: str, says: str) -> None:
    text = err.strip()
    assert text.startswith("error: ") and "\n" not in text, text
    assert says.lower() in text.lower(), text


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("row", REFUSALS, ids=[r.name for r in REFUSALS])
def test_refused_with_one_line_and_nothing_written(row: Refusal, inputs, tmp_path, capsys):
    out = tmp_path / "runs" / "out"
    code, err = _run_in_process(_argv(row.argv, inputs, out), capsys)
    assert code == 2
    _assert_one_line_error(err, row.says)
    assert not (tmp_path / "runs").exists()  # no output folder, no temporary file beside it
    assert not (inputs / MARKER).exists()


@pytest.mark.parametrize("row", HANDLED, ids=[r.name for r in HANDLED])
def test_handled_inputs_restore(row: Handled, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _run_in_process(_argv(row.argv, inputs, out), capsys)
    assert code == 0, err
    restored, info = read_image_with_info(out / "restored.png")
    assert tuple(restored.shape) == (row.channels, *row.size) and info.bit_depth == row.bit_depth
    assert torch.isfinite(restored).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 1
    if "psnr" in metrics:  # a clean reference: SSIM where its window fits, else null (not NaN, not a crash)
        assert (metrics["ssim"] is None) == (min(row.size) < SSIM_WINDOW)
    assert sorted(p.name for p in out.iterdir()) == ["degraded.png", "metrics.json", "restored.png"]


def test_pixel_limit_flag_raises_the_limit_on_purpose(inputs, tmp_path, capsys):
    """The bomb's header passes a raised --max-pixels, so what stops it then is its (missing) data, not the limit."""
    argv = _argv(("--clean", "@bomb.png", "--operator", "denoise", "--max-pixels", str(10**11)), inputs, tmp_path / "o")
    code, err = _run_in_process(argv, capsys)
    assert code == 2 and "over the limit" not in err
    _assert_one_line_error(err, "cannot read image")


@pytest.mark.parametrize("name", SUBPROCESS_ROWS)
def test_restore_py_exit_code_and_previous_outputs_kept(name: str, inputs, tmp_path):
    row = next(r for r in REFUSALS if r.name == name)
    out = tmp_path / "out"
    out.mkdir()
    (out / "restored.png").write_bytes(b"a previous result")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "restore.py"), *_argv(row.argv, inputs, out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    _assert_one_line_error(proc.stderr, row.says)
    assert proc.stdout == ""
    assert [p.name for p in out.iterdir()] == ["restored.png"]
    assert (out / "restored.png").read_bytes() == b"a previous result"
    assert not (inputs / MARKER).exists()


# ------------------------------------------------------------------------------------------------ train.py
def _tiny_yaml_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "configs" / "tiny.yaml").read_text()
    assert old in text
    path = tmp_path / "config.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


TRAIN_REFUSALS = {
    "config_unknown_key": ("latent_channels: 4", "latent_channels: 4\n    colour: 3", "colour"),
    "config_wrong_type": ("latent_channels: 4", "latent_channels: four", "latent_channels"),
    "config_invalid_value": ("image_channels: 3", "image_channels: 2", "image_channels"),
}


@pytest.mark.parametrize("name", sorted(TRAIN_REFUSALS))
def test_train_py_refuses_a_bad_config(name: str, tmp_path, monkeypatch, capsys):
    from hvae.cli import main as train_main

    old, new, says = TRAIN_REFUSALS[name]
    config = _tiny_yaml_with(tmp_path, old, new)
    runs = tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", ["train.py", "fit", "--config", str(config), "--trainer.default_root_dir", str(runs)])
    with pytest.raises(SystemExit) as stop:
        train_main()
    assert stop.value.code == 2
    _assert_one_line_error(capsys.readouterr().err, says)
    assert not runs.exists()


@pytest.mark.parametrize("flag, checkpoint, says", [
    ("--ckpt_path", "evil.pt", "refusing to load"), ("--ckpt_path", "notes.pt", "not a readable checkpoint"),
    ("--model.init_from", "evil.pt", "refusing to load"), ("--model.init_from", "missing.pt", "not found")])
def test_train_py_refuses_a_checkpoint_it_cannot_trust(flag: str, checkpoint: str, says: str, inputs, tmp_path,
                                                       monkeypatch, capsys):
    """--ckpt_path resumes a run, --model.init_from warm-starts one from an export: both are refused alike."""
    from hvae.cli import main as train_main

    runs = tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", ["train.py", "fit", "--config", str(ROOT / "configs" / "tiny.yaml"),
                                      "--trainer.default_root_dir", str(runs), flag, str(inputs / checkpoint)])
    with pytest.raises(SystemExit) as stop:
        train_main()
    assert stop.value.code == 2
    _assert_one_line_error(capsys.readouterr().err, says)
    assert not runs.exists() and not (inputs / MARKER).exists()
