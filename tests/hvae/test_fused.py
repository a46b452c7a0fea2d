"""hvae.fused: the inference copy whose decoder groups run their prior and posterior nets as one net."""

import copy

import pytest
import torch

from hvae.fused import FusedDecoderGroup, fuse_nets


def _conv_calls(model, fn):
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        fn()
    finally:
        for h in hooks:
            h.remove()
    return len(calls)


def test_fused_copy_gives_the_same_latents_and_decoding(busy_tiny_model):
    fused = fuse_nets(busy_tiny_model)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z_ref, g_ref = busy_tiny_model.encode_decode(x, [1.0, 0.9, 0.7, 0.5])
        z, g = fused.encode_decode(x, [1.0, 0.9, 0.7, 0.5])
    assert float(g_ref.std()) > 0.05  # the decoding depends on the image: the comparison means something
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(z, z_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fused_copy_samples_decodes_and_scores_like_the_model(busy_tiny_model):
    """The paths without an encoded image use the prior's rows of the fused weights."""
    fused = fuse_nets(busy_tiny_model)
    with torch.no_grad():
        ref = busy_tiny_model.sample(2, 32, 32, 0.8, torch.Generator().manual_seed(3))
        out = fused.sample(2, 32, 32, 0.8, torch.Generator().manual_seed(3))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
        latents = busy_tiny_model.encode(x, 0.9)
        g_ref, logp_ref = busy_tiny_model.decode_log_prior(latents, 0.9)
        g, logp = fused.decode_log_prior(latents, 0.9)
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logp, logp_ref, rtol=1e-5, atol=1e-3)
        e_ref = busy_tiny_model.elbo(x, torch.Generator().manual_seed(5))
        e = fused.elbo(x, torch.Generator().manual_seed(5))
        torch.testing.assert_close(e.loss, e_ref.loss, rtol=1e-5, atol=1e-5)


def test_fused_copy_runs_three_fewer_convolutions_per_group_and_leaves_the_model_alone(busy_tiny_model, tiny_config):
    before = {k: v.clone() for k, v in busy_tiny_model.state_dict().items()}
    fused = fuse_nets(busy_tiny_model)
    learned = sum(1 for g in busy_tiny_model.groups if g.prior_net is not None)
    assert learned == tiny_config.num_groups - 1  # the top group's prior is N(0, I): nothing to fuse there
    assert sum(isinstance(g, FusedDecoderGroup) for g in fused.groups) == learned
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        plain = _conv_calls(busy_tiny_model, lambda: busy_tiny_model.encode_decode(x, 0.9))
        fewer = _conv_calls(fused, lambda: fused.encode_decode(x, 0.9))
    assert plain - fewer == 3 * learned  # 8 -> 5 for the two nets: the state increment has a conv of its own
    fused_params = {p.data_ptr() for p in fused.parameters()}
    assert not fused_params & {p.data_ptr() for p in busy_tiny_model.parameters()}  # no shared storage
    for k, v in busy_tiny_model.state_dict().items():
        assert torch.equal(v, before[k])


def test_fused_state_increments_are_dense_in_channels_last(busy_tiny_model):
    """Every 4-d add of the fused copy's channels_last pass reads dense tensors: the prior's state increment is a
    tensor of its own, not a strided channel slice (CUDA's eager add runs a slow non-vectorised kernel on those)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    def dense(t):
        return not isinstance(t, torch.Tensor) or t.dim() < 4 or t.numel() == t.shape[0] * t.shape[1] or \
            t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)

    class Adds(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.operands = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.add, torch.ops.aten.add_):
                self.operands += [a for a in args[:2] if isinstance(a, torch.Tensor) and a.dim() == 4]
            return func(*args, **(kwargs or {}))

    x = torch.rand(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    for model, want_dense in ((fuse_nets(busy_tiny_model), True), (busy_tiny_model, False)):
        model = model.to(memory_format=torch.channels_last)
        adds = Adds()
        with torch.no_grad(), adds:
            model.encode_decode(x, 0.9)
        assert adds.operands and all(dense(t) for t in adds.operands) == want_dense  # the plain model slices


def test_fuse_nets_refuses_what_is_not_an_hvae():
    with pytest.raises(TypeError, match="HierarchicalVAE"):
        fuse_nets(torch.nn.Linear(2, 2))


def test_pointwise_matmul_is_the_1x1_convolution_on_channels_last_inputs():
    from hvae.fused import PointwiseMatmul, is_pointwise, pointwise_as_matmul
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(6, 5, 1), torch.nn.Conv2d(5, 4, 3, padding=1), torch.nn.Conv2d(4, 3, 1),
                              torch.nn.Conv2d(3, 3, 1, groups=3), torch.nn.Conv2d(3, 2, 1, stride=2))
    ref = copy.deepcopy(net)
    assert pointwise_as_matmul(net) == 2  # only the plain 1x1 convolutions: not 3x3, grouped or strided
    assert [type(m) for m in net] == [PointwiseMatmul, torch.nn.Conv2d, PointwiseMatmul, torch.nn.Conv2d,
                                      torch.nn.Conv2d]
    assert not is_pointwise(net[0]) and pointwise_as_matmul(net) == 0  # turned once
    x = torch.randn(2, 6, 9, 7)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = net[0](x_cl)
    assert out.shape == (2, 5, 9, 7) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref[0](x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net(x_cl), ref(x), rtol=1e-5, atol=1e-5)  # the whole stack, matmul path
    torch.testing.assert_close(net(x), ref(x), rtol=1e-6, atol=1e-6)  # NCHW input: the convolution itself
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = net[0](x_cl)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), ref[0](x), rtol=0.05, atol=0.05)
