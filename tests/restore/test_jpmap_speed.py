"""JPMAP's fast path: bf16 autocast, channels_last, torch.compile of the network pass, checks every few iterations."""

from pathlib import Path

import pytest
import torch

from hvae.export import load_prior
from restore import jpmap as jpmap_module
from restore.jpmap import JPMAPConfig, jpmap, make_decoder_step, network_for
from restore.operators import Blur, Denoising, gaussian_kernel

SHIPPED = Path(__file__).resolve().parents[2] / "priors" / "natural.pt"


def _psnr(x, clean):
    return float(-10 * torch.log10(((x.clamp(0, 1) - clean) ** 2).mean()))


def _smooth_image(size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bicubic").clamp(0, 1)


def test_bf16_channels_last_matches_fp32_on_tiny_model(busy_tiny_model):
    y = _smooth_image(32)
    op = Denoising(0.05)
    step32 = make_decoder_step(busy_tiny_model, [0.8] * 4, JPMAPConfig())
    decoded = step32(y)
    assert float(decoded.std()) > 0.05  # the network's output depends on its input: the comparison means something
    r32 = jpmap(y, op, busy_tiny_model, JPMAPConfig(max_iters=4, tol=0.0))
    r16 = jpmap(y, op, busy_tiny_model, JPMAPConfig(max_iters=4, tol=0.0, precision="bf16", channels_last=True))
    assert r16.x.dtype == torch.float32 and r16.x.shape == y.shape
    err = float((r16.decoded - r32.decoded).abs().max())
    assert 0 < err < 0.05  # bf16 changes the network's arithmetic, a little
    assert float((r16.x - r32.x).abs().max()) < err  # the exact x-step (fp32) shrinks the difference


def test_bf16_weight_copy_gives_autocasts_numbers_and_leaves_the_prior_alone(busy_tiny_model):
    y = _smooth_image(32)
    op = Denoising(0.05)
    cfg = JPMAPConfig(max_iters=3, tol=0.0, precision="bf16")
    per_call = jpmap(y, op, busy_tiny_model, JPMAPConfig(**{**cfg.__dict__, "cast_weights": False}))
    copied = jpmap(y, op, busy_tiny_model, cfg)
    assert torch.equal(copied.x, per_call.x) and torch.equal(copied.decoded, per_call.decoded)
    assert all(p.dtype == torch.float32 for p in busy_tiny_model.parameters())
    net = network_for(busy_tiny_model, cfg)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m is not net.out]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    assert net.out.weight.dtype == torch.float32  # the decoder mean is computed in fp32 (HierarchicalVAE._mean)
    assert net.log_gamma.dtype == torch.float32  # parameters outside convolutions keep their dtype
    assert network_for(busy_tiny_model, cfg) is net  # made once, reused
    assert network_for(net, cfg) is net  # a copy handed back (the tiled loop gives jpmap its copy) is not copied again
    assert network_for(busy_tiny_model, JPMAPConfig()) is busy_tiny_model  # fp32: the prior itself


def test_bf16_state_runs_the_decoder_stream_in_bf16_on_the_copy_only(busy_tiny_model):
    y = _smooth_image(32)
    op = Denoising(0.05)
    cfg = JPMAPConfig(max_iters=3, tol=0.0, precision="bf16")
    state_cfg = JPMAPConfig(**{**cfg.__dict__, "bf16_state": True})
    net = network_for(busy_tiny_model, state_cfg)
    assert net.state_dtype == torch.bfloat16 and busy_tiny_model.state_dtype is None
    assert network_for(busy_tiny_model, cfg).state_dtype is None  # one copy per variant
    r32 = jpmap(y, op, busy_tiny_model, JPMAPConfig(max_iters=3, tol=0.0))
    r16, r16s = jpmap(y, op, busy_tiny_model, cfg), jpmap(y, op, busy_tiny_model, state_cfg)
    assert not torch.equal(r16s.decoded, r16.decoded)  # the stream's dtype changes the arithmetic
    assert float((r16s.decoded - r32.decoded).abs().max()) < 0.05
    with pytest.raises(ValueError, match="bf16_state"):
        JPMAPConfig(bf16_state=True)


def test_bf16_weight_copy_follows_a_change_of_the_priors_weights(busy_tiny_model):
    cfg = JPMAPConfig(max_iters=2, tol=0.0, precision="bf16")
    y = _smooth_image(32)
    op = Denoising(0.05)
    before = jpmap(y, op, busy_tiny_model, cfg).decoded
    old = network_for(busy_tiny_model, cfg)
    with torch.no_grad():
        busy_tiny_model.out.weight.mul_(1.5)  # an in-place change, as an optimiser step makes
    assert network_for(busy_tiny_model, cfg) is not old
    after = jpmap(y, op, busy_tiny_model, cfg).decoded
    ref = jpmap(y, op, busy_tiny_model, JPMAPConfig(**{**cfg.__dict__, "cast_weights": False})).decoded
    assert torch.equal(after, ref) and not torch.equal(after, before)


@pytest.mark.skipif(not SHIPPED.is_file(), reason="needs the shipped prior priors/natural.pt")
def test_bf16_psnr_within_005_db_of_fp32_with_shipped_prior():
    prior = load_prior(SHIPPED)
    clean = _smooth_image(64)
    op = Blur(gaussian_kernel(1.5), 0.03)
    y = op.degrade(clean.double(), torch.Generator().manual_seed(0)).float()
    cfg = JPMAPConfig(gamma=20 / 255, tau=0.9, max_iters=5, tol=0.0)
    r32 = jpmap(y, op, prior, cfg)
    r16 = jpmap(y, op, prior, JPMAPConfig(**{**cfg.__dict__, "precision": "bf16", "channels_last": True}))
    assert _psnr(r32.x, clean) > _psnr(y, clean)
    assert abs(_psnr(r16.x, clean) - _psnr(r32.x, clean)) < 0.05


def test_convergence_is_checked_every_check_every_iterations(busy_tiny_model):
    y = _smooth_image(32)
    op = Denoising(0.05)
    # a huge tolerance: converged after the first iteration, but only seen at the first check
    result = jpmap(y, op, busy_tiny_model, JPMAPConfig(max_iters=20, tol=1.0, check_every=3))
    assert result.converged and result.iterations == 3
    assert len(result.history.residual) == 3 and all(isinstance(r, float) for r in result.history.residual)
    never = jpmap(y, op, busy_tiny_model, JPMAPConfig(max_iters=7, tol=0.0, check_every=3))
    assert not never.converged and never.iterations == 7 and len(never.history.residual) == 7


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_pass_matches_eager_with_dynamo_capture_on_cpu(busy_tiny_model, monkeypatch, precision):
    """torch.compile's capture of the z-step (no graph break, outputs copied out) with the 'eager' backend:
    inductor's code generation takes over a minute on 2 CPU cores, so it is tested on CUDA only (below). bf16
    covers the decoder mean's autocast-off block (torch 2.11's dynamo broke the graph on a check there)."""
    y = _smooth_image(32)
    op = Denoising(0.05)
    monkeypatch.setitem(jpmap_module._COMPILED, "default",
                        torch.compile(jpmap_module._decoded_pass, backend="eager", dynamic=False, fullgraph=True))
    ref = jpmap(y, op, busy_tiny_model, JPMAPConfig(max_iters=3, tol=0.0, precision=precision))
    out = jpmap(y, op, busy_tiny_model, JPMAPConfig(max_iters=3, tol=0.0, compile=True, precision=precision))
    torch.testing.assert_close(out.x, ref.x)
    torch.testing.assert_close(out.decoded, ref.decoded)


def test_bad_compile_mode_is_refused():
    with pytest.raises(ValueError, match="compile_mode"):
        JPMAPConfig(compile_mode="fast")


def test_fused_nets_give_jpmap_the_same_iterates_and_compose_with_bf16(busy_tiny_model, monkeypatch):
    from hvae.fused import FusedDecoderGroup
    y = _smooth_image(32)
    op = Denoising(0.05)
    cfg = JPMAPConfig(max_iters=3, tol=0.0)
    fused_cfg = JPMAPConfig(max_iters=3, tol=0.0, fuse_nets=True)
    ref, out = jpmap(y, op, busy_tiny_model, cfg), jpmap(y, op, busy_tiny_model, fused_cfg)
    torch.testing.assert_close(out.x, ref.x, rtol=1e-5, atol=1e-5)
    net = network_for(busy_tiny_model, fused_cfg)
    assert any(isinstance(g, FusedDecoderGroup) for g in net.groups) and network_for(busy_tiny_model, fused_cfg) is net
    assert not any(isinstance(g, FusedDecoderGroup) for g in busy_tiny_model.groups)
    bf16 = JPMAPConfig(max_iters=3, tol=0.0, precision="bf16", channels_last=True, fuse_nets=True)
    net16 = network_for(busy_tiny_model, bf16)
    assert net16 is not net and all(m.weight.dtype == torch.bfloat16 for m in net16.modules()
                                    if isinstance(m, torch.nn.Conv2d) and m is not net16.out)
    assert float((jpmap(y, op, busy_tiny_model, bf16).x - ref.x).abs().max()) < 0.05
    # the fused pass is captured whole by torch.compile (dynamo, eager backend: see the compile test above)
    monkeypatch.setitem(jpmap_module._COMPILED, "default",
                        torch.compile(jpmap_module._decoded_pass, backend="eager", dynamic=False, fullgraph=True))
    compiled = jpmap(y, op, busy_tiny_model, JPMAPConfig(max_iters=3, tol=0.0, fuse_nets=True, compile=True))
    torch.testing.assert_close(compiled.x, out.x)


def test_pointwise_matmul_gives_jpmap_the_same_iterates_with_channels_last(busy_tiny_model):
    from hvae.fused import PointwiseMatmul
    y = _smooth_image(32)
    op = Denoising(0.05)
    ref = jpmap(y, op, busy_tiny_model, JPMAPConfig(max_iters=3, tol=0.0))
    cfg = JPMAPConfig(max_iters=3, tol=0.0, channels_last=True, fuse_nets=True, pointwise_matmul=True)
    out = jpmap(y, op, busy_tiny_model, cfg)
    torch.testing.assert_close(out.x, ref.x, rtol=1e-5, atol=1e-5)
    net = network_for(busy_tiny_model, cfg)
    assert sum(isinstance(m, PointwiseMatmul) for m in net.modules()) >= 10
    assert not any(isinstance(m, PointwiseMatmul) for m in busy_tiny_model.modules())  # the prior is left alone
    # without channels_last the option changes nothing: no copy is made for it
    assert network_for(busy_tiny_model, JPMAPConfig(pointwise_matmul=True)) is busy_tiny_model
    bf16 = jpmap(y, op, busy_tiny_model, JPMAPConfig(max_iters=3, tol=0.0, precision="bf16", channels_last=True,
                                                    pointwise_matmul=True))
    assert float((bf16.x - ref.x).abs().max()) < 0.05


def test_cuda_graph_option_runs_the_eager_pass_off_cuda_and_refuses_compile(busy_tiny_model):
    y = _smooth_image(32)
    op = Denoising(0.05)
    ref = jpmap(y, op, busy_tiny_model, JPMAPConfig(max_iters=3, tol=0.0))
    out = jpmap(y, op, busy_tiny_model, JPMAPConfig(max_iters=3, tol=0.0, cuda_graph=True))
    assert torch.equal(out.x, ref.x)  # no CUDA here: the same eager pass
    with pytest.raises(ValueError, match="cuda_graph"):
        JPMAPConfig(cuda_graph=True, compile=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
@pytest.mark.parametrize("precision, fuse, mm", [("fp32", False, False), ("bf16", True, False),
                                                 ("bf16", True, True)])  # the last: restore.py --fast on CUDA
def test_cuda_graph_replay_matches_the_eager_pass(busy_tiny_model, precision, fuse, mm):
    model = busy_tiny_model.cuda()
    op = Denoising(0.05)
    y, y2 = _smooth_image(64).cuda(), _smooth_image(64, seed=1).cuda()
    cfg = JPMAPConfig(max_iters=5, tol=0.0, precision=precision, fuse_nets=fuse, channels_last=precision == "bf16",
                      pointwise_matmul=mm)
    ref = jpmap(y, op, model, cfg)
    graphed = JPMAPConfig(**{**cfg.__dict__, "cuda_graph": True})
    out = jpmap(y, op, model, graphed)
    assert float((out.x - ref.x).abs().max()) < 1e-4 and len(out.history.residual) == 5
    # a second image of the same shape and a batch of two (a new capture) in one more call each
    torch.testing.assert_close(jpmap(y2, op, model, graphed).x, jpmap(y2, op, model, cfg).x, atol=1e-4, rtol=0)
    both = torch.cat([y, y2])
    torch.testing.assert_close(jpmap(both, op, model, graphed).x, jpmap(both, op, model, cfg).x, atol=1e-4, rtol=0)
    with torch.no_grad():
        model.out.weight.mul_(1.5)  # the graphs read the old weights' memory: captured again
    changed = jpmap(y, op, model, graphed).x
    torch.testing.assert_close(changed, jpmap(y, op, model, cfg).x, atol=1e-4, rtol=0)
    assert float((changed - out.x).abs().max()) > 1e-3


def test_a_prior_made_in_inference_mode_runs_every_pass_in_and_out_of_it(busy_tiny_model, tmp_path):
    """Lightning's predict loop and users' own code run torch.inference_mode: a prior loaded there has parameters
    without version counters. network_for converts the caller's own prior in the caller's mode (converted outside
    it, such a parameter breaks the next convolution in inference mode) and fingerprints it without versions."""
    from hvae.export import export_prior

    path = export_prior(busy_tiny_model, tmp_path / "prior.pt", half=False)
    with torch.inference_mode():
        prior = load_prior(path)
    y, op = _smooth_image(32), Denoising(0.05)
    for cfg in (JPMAPConfig(max_iters=2, channels_last=True), JPMAPConfig(max_iters=2, fuse_nets=True),
                JPMAPConfig(max_iters=2, cuda_graph=True), JPMAPConfig(max_iters=2)):
        ref = jpmap(y, op, load_prior(path), cfg).x
        with torch.inference_mode():
            inside = jpmap(y, op, prior, cfg).x
        outside = jpmap(y, op, prior, cfg).x
        torch.testing.assert_close(inside, ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(outside, ref, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
def test_tiles_replay_one_cuda_graph_while_they_stop_one_by_one(busy_tiny_model, tmp_path):
    """The tiled loop with graph replay (restore.py --fast --tile): windows on the pooling grid reach the network
    itself, the batch keeps its shape as tiles stop, so one graph is captured, and each tile gets the eager
    loop's result."""
    from hvae.export import export_prior
    from restore.predict import TiledJPMAP
    from restore.tiling import TileGrid, cut

    path = export_prior(busy_tiny_model, tmp_path / "prior.pt", half=False)
    op = Denoising(0.05)
    image = _smooth_image(64)
    y = (image + 0.05 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))).cuda()
    module = TiledJPMAP(str(path), JPMAPConfig(max_iters=6, tol=0.0, check_every=2), "denoise", op.sigma).cuda()
    grid = TileGrid(64, 64, 16, 8, 1, False, module.prior.multiple)
    tiles = grid.tiles[:4]
    ys, segs = torch.cat([cut(y, t.obs_box) for t in tiles]), [grid.segments(t) for t in tiles]
    res = [jpmap(ys[k:k + 1], op, module.prior, JPMAPConfig(max_iters=2, tol=0.0)).history.residual[-1]
           for k in range(4)]
    low = sorted(res)
    module.config = JPMAPConfig(max_iters=6, tol=(low[0] * low[1]) ** 0.5, check_every=2)  # one stops early
    eager = module._solve(ys, None, segs)
    module.config = JPMAPConfig(max_iters=6, tol=(low[0] * low[1]) ** 0.5, check_every=2, cuda_graph=True)
    graphed = module._solve(ys, None, segs)
    torch.testing.assert_close(graphed, eager, atol=1e-4, rtol=0)
    assert len(jpmap_module._GRAPHS[network_for(module.prior, module.config)]) == 1


# last in the file: inductor's compilations are the slowest CUDA tests (gpu_session.sh runs them under a time limit)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor compilation is tested on CUDA only (too slow on CPU)")
@pytest.mark.parametrize("mode, fuse, mm", [("default", False, False), ("reduce-overhead", False, False),
                                            ("reduce-overhead", True, False), ("reduce-overhead", True, True)])
def test_compiled_bf16_pass_on_cuda(busy_tiny_model, mode, fuse, mm):
    model = busy_tiny_model.cuda()
    y = _smooth_image(64).cuda()
    op = Denoising(0.05)
    ref = jpmap(y, op, model, JPMAPConfig(max_iters=4, tol=0.0, precision="bf16"))
    out = jpmap(y, op, model, JPMAPConfig(max_iters=4, tol=0.0, precision="bf16", channels_last=True,
                                          compile=True, compile_mode=mode, fuse_nets=fuse, pointwise_matmul=mm))
    assert out.x.device.type == "cuda"
    assert float((out.x - ref.x).abs().max()) < 0.02
