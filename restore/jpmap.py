"""PnP-HVAE: the JPMAP alternating scheme with the temperature-scaled encoder as z-step.

Objective (Gonzalez et al. 2022; Prost et al. 2023), for y = A x + n, n ~ N(0, sigma^2 I):

    J(x, z) = ||A x - y||^2 / (2 sigma^2) + ||x - G(z)||^2 / (2 gamma^2) - log p_tau(z)

Update rule, k = 0, 1, ...:

    z_{k+1} = E_tau(x_k)          top-down tempered mode of q(z_l|z_<l,x) p(z_l|z_<l)^(1/tau_l^2 - 1)
    x_{k+1} = prox_l2(G(z_{k+1}))  = argmin_x ||A x - y||^2/(2 sigma^2) + ||x - G(z_{k+1})||^2/(2 gamma^2), exact

It converges when x -> prox(G(E_tau(x))) is a contraction; the history records the residual
||x_k - x_{k-1}|| (RMS per pixel) and its ratio to the previous one, which estimates that constant.
With an imperfect prior it may not be one: the iterates can improve for a while and then drift away (the
residual grows again). Divergence guard (``divergence_guard`` = g): per image, once the residual exceeds
g times its smallest value so far (and the tolerance), the image stops and returns the iterate of that
smallest residual; kept on the device, with no extra host synchronisation.

Fast path (JPMAPConfig): bf16 autocast for the network passes (the x-step and its FFTs stay fp32) with
the convolution weights cast to bf16 once (:func:`network_for`) rather than by autocast at every call,
channels_last, the decoder groups' two nets fused into one (``fuse_nets``), the 1x1 convolutions as matrix
products with the bias in their epilogue (``pointwise_matmul``), torch.compile of the network pass
(CUDA graphs with compile_mode="reduce-overhead") or, with no compilation, the eager pass replayed from a
CUDA graph (``cuda_graph``); the history is kept as device tensors and read once at the end, and the
convergence test, the loop's only host synchronisation, runs every ``check_every`` iterations. Operators with
``padding="valid"`` (a photograph's boundaries) have no closed-form x-step: theirs is solved by conjugate
gradients to a relative residual of 1e-6, which reads its residual on the host every 4 of its steps.
"""

from __future__ import annotations

import copy
import functools
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .prior import Prior, crop, pad_to_multiple

TauArg = float | Sequence[float]
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class JPMAPConfig:
    """Settings of :func:`jpmap`. gamma is in [0, 1] image units (10/255 in the natural-image protocol)."""

    gamma: float = 10 / 255
    tau: TauArg = 0.8  # one value, or one per latent group (top first)
    tau_end: float | None = None  # if set: tau linear from ``tau`` (top group) to ``tau_end`` (bottom group)
    max_iters: int = 50
    tol: float = 1e-4  # stop when the RMS residual of every image is below this (bf16: its rounding keeps the
    #                    residual above about 4e-4 on natural images, BENCHMARKS.md, so bf16 runs max_iters)
    divergence_guard: float | None = 4.0  # residual > this x its minimum: return the minimum's iterate (None: off)
    check_every: int = 5  # convergence test every few iterations (one host synchronisation each)
    init: str = "auto"  # "auto" (operator's choice), "observation", "adjoint"
    return_estimate: str = "x"  # "x" (x_K) or "decoded" (G(z_K), what the published code returns)
    precision: str = "fp32"  # "fp32" or "bf16" (autocast for the network; x-step FFTs stay fp32)
    channels_last: bool = False  # network passes in NHWC memory layout (tensor-core GPUs; converts the prior once)
    compile: bool = False  # torch.compile the network pass of the z-step (one compilation per image size)
    compile_mode: str = "default"  # torch.compile mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune"
    cast_weights: bool = True  # bf16: convolutions run on a bf16 copy of their weights, made once (False: autocast
    #                            casts every weight at every call, one extra kernel per convolution)
    bf16_state: bool = False  # bf16: the decoder's residual stream in bf16 too (half the bytes; less exact; with
    #                           upsample="conv_nearest" it is bf16 below the top level anyway: the projection's output)
    fuse_nets: bool = False  # each decoder group's prior and posterior nets as one net (hvae.fused): fewer kernels
    pointwise_matmul: bool = False  # with channels_last: 1x1 convolutions as one matrix product with the bias in
    #                                 its epilogue (hvae.fused.PointwiseMatmul), not convolution + bias-add kernel
    cuda_graph: bool = False  # CUDA: replay the eager network pass from a CUDA graph captured once per input
    #                           shape (no launch cost, no compilation); ignored on other devices

    def __post_init__(self) -> None:
        if not self.gamma > 0 or not math.isfinite(self.gamma):
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        if self.divergence_guard is not None and not self.divergence_guard > 1:
            raise ValueError(f"divergence_guard must be > 1 (or None to turn it off), got {self.divergence_guard}")
        if self.max_iters < 1 or self.check_every < 1:
            raise ValueError("max_iters and check_every must be >= 1")
        if self.init not in ("auto", "observation", "adjoint"):
            raise ValueError(f"init must be auto, observation or adjoint, got {self.init!r}")
        if self.return_estimate not in ("x", "decoded"):
            raise ValueError(f"return_estimate must be 'x' or 'decoded', got {self.return_estimate!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.bf16_state and self.precision != "bf16":
            raise ValueError("bf16_state needs precision='bf16'")
        if self.cuda_graph and self.compile:
            raise ValueError("cuda_graph replays the eager pass; with compile=True use compile_mode='reduce-overhead' "
                             "for CUDA graphs instead")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")

    def taus(self, num_groups: int) -> list[float]:
        """One tau per latent group, top first; each in (0, 1]."""
        if self.tau_end is not None:
            if not isinstance(self.tau, (int, float)):
                raise ValueError("tau_end needs a single starting tau")
            taus = [self.tau + (self.tau_end - self.tau) * i / max(1, num_groups - 1) for i in range(num_groups)]
        elif isinstance(self.tau, (int, float)):
            taus = [float(self.tau)] * num_groups
        else:
            taus = [float(t) for t in self.tau]
        if len(taus) != num_groups:
            raise ValueError(f"tau gives {len(taus)} values but the prior has {num_groups} latent groups")
        if any(not 0 < t <= 1 for t in taus):
            raise ValueError(f"every tau must be in (0, 1], got {taus}")
        return taus


@dataclass
class History:
    """Per-iteration records (python floats, means over the batch)."""

    residual: list[float] = field(default_factory=list)  # RMS ||x_k - x_{k-1}|| per pixel
    ratio: list[float] = field(default_factory=list)  # residual_k / residual_{k-1} (nan at k = 0)
    data_term: list[float] = field(default_factory=list)  # ||A x - y||^2 / (2 sigma^2) per pixel
    coupling_term: list[float] = field(default_factory=list)  # ||x - G(z)||^2 / (2 gamma^2) per pixel
    prior_term: list[float] = field(default_factory=list)  # -log p_tau(z) per pixel (Adam only)
    seconds: list[float] = field(default_factory=list)  # wall time since the start


@dataclass
class RestoreResult:
    estimate: Tensor  # [N, C, H, W] what the config asked for (x or G(z))
    x: Tensor  # last x-step
    decoded: Tensor  # G(z) of the last z
    history: History
    iterations: int
    converged: bool
    seconds: float
    diverged: int = 0  # images that the divergence guard stopped (they return their smallest-residual iterate)


class DivergenceGuard:
    """The divergence guard's state, per image, on the device: the smallest residual so far and the iterates
    that had it. An image whose residual exceeds ``factor`` times its smallest one (and ``tol``) stops for good
    and keeps those iterates. :func:`jpmap` updates it every iteration; the tiled loop every chunk, for the
    tiles still running (``index``). No host synchronisation."""

    def __init__(self, factor: float, tol: float, iterates: Sequence[Tensor]) -> None:
        n = iterates[0].shape[0]
        self.factor, self.tol = factor, tol
        self.stopped = torch.zeros(n, dtype=torch.bool, device=iterates[0].device)  # [N]
        self.best_residual = torch.full((n,), math.inf, device=iterates[0].device, dtype=iterates[0].dtype)  # [N]
        self.best = [t.clone() for t in iterates]  # each [N, C, H, W]

    def update(self, residual: Tensor, iterates: Sequence[Tensor], index: Tensor | None = None) -> list[Tensor]:
        """``residual`` [n]: the RMS change of images ``index`` (all when None) to ``iterates`` (each
        [n, C, H, W]); returns the iterates with those of stopped images replaced by their best ones."""
        at = slice(None) if index is None else index
        residual = residual.to(self.best_residual.dtype)
        best_residual = self.best_residual[at]
        stopped = self.stopped[at] | ((residual > self.factor * best_residual) & (residual >= self.tol))
        better = ((residual < best_residual) & ~stopped)[:, None, None, None]
        keep, out = stopped[:, None, None, None], []
        for best, new in zip(self.best, iterates):
            kept = torch.where(better, new.to(best.dtype), best[at])
            best[at] = kept
            out.append(torch.where(keep, kept.to(new.dtype), new))
        self.best_residual[at] = torch.where(better[:, 0, 0, 0], residual, best_residual)
        self.stopped[at] = stopped
        return out


def initial_x(y: Tensor, operator, how: str) -> Tensor:
    if how == "observation":  # a grey observation through a colour prior: y in each of the prior's channels
        from .operators import GreyObservation
        return operator.spread(y) if isinstance(operator, GreyObservation) else y.clone()
    if how == "adjoint":
        return operator.A_adjoint(y)
    return operator.init(y)


def _autocast(x: Tensor, precision: str):
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def z_step(prior: Prior, x: Tensor, taus: list[float], precision: str = "fp32",
           channels_last: bool = False) -> tuple[list[Tensor], Tensor]:
    """z = E_tau(x) and G(z), on the reflection-padded image (NHWC with ``channels_last``), cropped back;
    G in the dtype of x."""
    padded, size = pad_to_multiple(x, prior.multiple)
    if channels_last:
        padded = padded.contiguous(memory_format=torch.channels_last)
    with _autocast(x, precision):
        latents, decoded = prior.encode_decode(padded, taus)
    return latents, crop(decoded, size).to(x.dtype)


def _decoded_pass(prior: Prior, x: Tensor, taus: list[float], precision: str = "fp32",
                  channels_last: bool = False) -> Tensor:
    """G(E_tau(x)) only (the latents are dropped, so a compiled graph does not keep them)."""
    return z_step(prior, x, taus, precision, channels_last)[1]


_COMPILED: dict[str, Callable[..., Tensor]] = {}  # one torch.compile wrapper per mode, so its cache is reused


def _compiled(mode: str) -> Callable[..., Tensor]:
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(_decoded_pass, mode=None if mode == "default" else mode, dynamic=False)
    return _COMPILED[mode]


# prior -> {(fuse_nets, bf16 weights, bf16 state, pointwise matmul): (fingerprint of its parameters, copy)}; dropped
# with the prior
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MADE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # copy -> its variant


def _version(t: Tensor) -> int:
    """``t._version``, or -1 for a tensor without a version counter (made under torch.inference_mode, or a
    parameter whose data was replaced by such a tensor), which can be changed in place only in inference mode."""
    try:
        return t._version
    except RuntimeError:
        return -1


def _fingerprint(module: torch.nn.Module) -> tuple:
    """Changes when a parameter is replaced or changed in place (optimiser steps, load_state_dict); for a
    parameter without a version counter, its address, dtype and device stand for it."""
    return tuple((p.data_ptr(), _version(p), p.dtype, p.device) for p in module.parameters())


def network_for(prior: Prior, config: JPMAPConfig) -> Prior:
    """The prior as the network passes of ``config`` run it.

    A copy of the prior, made once and reused while the prior's parameters are unchanged (the prior itself is
    left as it is), when ``config`` asks for one of:

    - ``fuse_nets``: each decoder group's prior and posterior nets run as one net (:func:`hvae.fused.fuse_nets`;
      the same numbers up to the order of floating-point sums, fewer convolutions);
    - precision "bf16" with ``cast_weights``: the ``nn.Conv2d`` weights and biases are bf16, except the output
      convolution's (``out``), which the model runs in fp32 with autocast off (:meth:`HierarchicalVAE._mean`).
      Under autocast a convolution casts its input, weight and bias to bf16 anyway, so the copy computes the
      same numbers without one cast kernel per convolution per call; every other parameter stays in its dtype;
    - precision "bf16" with ``bf16_state``: the decoder's residual stream in bf16 too (the copy's
      ``state_dtype``), which changes the numbers;
    - ``pointwise_matmul`` with ``channels_last``: the 1x1 convolutions as matrix products with the bias in the
      epilogue (:func:`hvae.fused.pointwise_as_matmul`; the same numbers up to float rounding).

    With ``channels_last`` the weights are put in NHWC layout (in place: the values do not change). A prior that
    is not an ``nn.Module`` is returned as it is, and so is one of these copies given back for the same settings
    (the tiled loop hands its copy to jpmap). The copies are made, and put in NHWC layout, outside
    torch.inference_mode (which Lightning's predict loop runs in), so that their parameters are ordinary tensors
    wherever they are used next; the caller's own prior is converted in the caller's mode."""
    if not isinstance(prior, torch.nn.Module):
        return prior
    bf16 = config.precision == "bf16"
    variant = (config.fuse_nets, bf16 and config.cast_weights, bf16 and config.bf16_state,
               config.channels_last and config.pointwise_matmul)
    if not any(variant):
        if config.channels_last:
            prior.to(memory_format=torch.channels_last)
        return prior
    with torch.inference_mode(False):
        return _copy_for(prior, variant, config.channels_last)


def _copy_for(prior: torch.nn.Module, variant: tuple, channels_last: bool) -> torch.nn.Module:
    """:func:`network_for`'s copy of ``prior`` for ``variant`` (made, or found in the cache), or ``prior`` itself
    when it is such a copy already."""
    if _MADE.get(prior) != variant:
        key = _fingerprint(prior)
        copies = _COPIES.setdefault(prior, {})
        if variant not in copies or copies[variant][0] != key:
            if variant[0]:
                from hvae.fused import fuse_nets
                net = fuse_nets(prior)
            else:
                net = copy.deepcopy(prior)
            if variant[1]:  # the output convolution stays fp32: the model runs it with autocast off
                for module in net.modules():
                    if isinstance(module, torch.nn.Conv2d) and module is not getattr(net, "out", None):
                        module.to(torch.bfloat16)
            if variant[2]:
                net.state_dtype = torch.bfloat16
            if variant[3]:
                from hvae.fused import pointwise_as_matmul
                pointwise_as_matmul(net)
            copies[variant] = (key, net)
            _MADE[net] = variant
        prior = copies[variant][1]
    if channels_last:
        prior.to(memory_format=torch.channels_last)
    return prior


_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> {key: (fingerprint, graph, in, out)}
MAX_GRAPHS = 2  # captured graphs kept per network (each holds the memory of one pass: GBs for a large image);
#                the least recently used is dropped. 2: the two orientations of a data set like CBSD68


def _graphed(net: Prior, fn: Callable[[Tensor], Tensor], settings: tuple) -> Callable[[Tensor], Tensor]:
    """``fn``, the pass of ``net`` with ``settings`` (no randomness, no host synchronisation), replayed from a CUDA graph.

    For a CUDA input of a shape not seen yet: two warm-up calls on a side stream (cuDNN's algorithm choice, the
    allocator), then the capture of one call into a graph with a static input and output. Each call copies its
    input into the static one, replays the graph and returns a copy of the static output. The graphs are kept
    with the network (the last ``MAX_GRAPHS`` shapes and settings), so later jpmap calls on images of the same
    size replay them, and captured again when the network's parameters have changed (the graph reads the memory
    they had). The parameters are fingerprinted once here, per jpmap call, not per iteration: the published
    architecture has about 1,200 tensors, a few ms of Python. Inputs on other devices, and a prior that is not
    an ``nn.Module`` (the tiled loop's wrapper of a window cut in segments, made anew for each chunk of
    iterations), run ``fn``: a capture costs three passes."""
    if not isinstance(net, torch.nn.Module):
        return fn
    stamp = _fingerprint(net)

    def step(x: Tensor) -> Tensor:
        if x.device.type != "cuda":
            return fn(x)
        cache = _GRAPHS.setdefault(net, {})
        key = (settings, tuple(x.shape), x.dtype, x.device, x.stride())
        entry = cache.pop(key, None)  # popped and put back last: the dict's order is the order of use
        if entry is None or entry[0] != stamp:
            while len(cache) >= MAX_GRAPHS:  # the least recently used goes before the new one takes its memory
                cache.pop(next(iter(cache)))
            static_in = x.clone()
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn(static_in)
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = fn(static_in)
            entry = (stamp, graph, static_in, static_out)
        cache[key] = entry
        _, graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    return step


def make_decoder_step(prior: Prior, taus: list[float], config: JPMAPConfig) -> Callable[[Tensor], Tensor]:
    """The network part of the z-step as the loop uses it: x -> G(E_tau(x)), same size and dtype as x.

    bf16 autocast when ``config.precision`` is "bf16", on the network of :func:`network_for`; with
    ``config.channels_last`` the input and the weights are in NHWC layout; with ``config.compile`` the pass
    is compiled by torch.compile (``config.compile_mode``), its output copied out of the compiled graph's
    memory (CUDA graphs reuse it from one call to the next); with ``config.cuda_graph`` the eager pass is
    captured in a CUDA graph per input shape and replayed (:func:`_graphed`).
    """
    prior = network_for(prior, config)
    if not config.compile:
        eager = functools.partial(_decoded_pass, prior, taus=taus, precision=config.precision,
                                  channels_last=config.channels_last)
        settings = (tuple(taus), config.precision, config.channels_last)
        return _graphed(prior, eager, settings) if config.cuda_graph else eager
    run = _compiled(config.compile_mode)

    def step(x: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # the previous call's outputs are no longer needed
        return run(prior, x, taus, config.precision, config.channels_last).clone(memory_format=torch.contiguous_format)

    return step


def _records(history: History, residual_sq: list[Tensor], data: list[Tensor], coupling: list[Tensor],
             times: list[float]) -> None:
    """Turns the device tensors kept during the loop into floats (one synchronisation)."""
    if not residual_sq:
        return
    stacked = torch.stack([torch.stack(residual_sq), torch.stack(data), torch.stack(coupling)]).cpu().tolist()
    for r2, d, c, t in zip(*stacked, times):
        r = math.sqrt(r2)
        prev = history.residual[-1] if history.residual else float("nan")
        history.ratio.append(r / prev if prev > 0 else float("nan"))
        history.residual.append(r)
        history.data_term.append(d)
        history.coupling_term.append(c)
        history.seconds.append(t)


@torch.no_grad()
def jpmap(y: Tensor, operator, prior: Prior, config: JPMAPConfig = JPMAPConfig(),
          x0: Tensor | None = None, callback: Callable[[int, Tensor], None] | None = None) -> RestoreResult:
    """Run PnP-HVAE (see the module docstring) on a batch of observations ``y``; images in [0, 1], NCHW."""
    taus = config.taus(prior.num_groups)
    gamma, sigma = config.gamma, operator.sigma
    x = initial_x(y, operator, config.init) if x0 is None else x0.clone()
    n_pix = x[0].numel()
    history = History()
    residual_sq, data, coupling, times = [], [], [], []
    decoder_step = make_decoder_step(prior, taus, config)
    start = time.perf_counter()
    converged, k, decoded = False, 0, x
    guard = None if config.divergence_guard is None else DivergenceGuard(config.divergence_guard, config.tol, (x, x))
    for k in range(1, config.max_iters + 1):
        decoded = decoder_step(x)
        x_new = operator.prox_l2(decoded, y, gamma)
        per_image_mse = ((x_new - x) ** 2).flatten(1).mean(1)
        if guard is not None:  # a stopped image keeps its best iterate from here on
            x_new, decoded = guard.update(per_image_mse.sqrt(), (x_new, decoded))
            per_image_mse = ((x_new - x) ** 2).flatten(1).mean(1)  # 0 for a stopped image after its stop
        residual_sq.append(per_image_mse.mean())  # device tensors: no host synchronisation here
        data.append(((operator.A(x_new) - y) ** 2).flatten(1).sum(1).mean() / (2 * sigma**2 * n_pix))
        coupling.append(((x_new - decoded) ** 2).flatten(1).sum(1).mean() / (2 * gamma**2 * n_pix))
        times.append(time.perf_counter() - start)  # time the work was queued (the GPU may still be busy)
        x = x_new
        if callback is not None:
            callback(k, x)
        if k % config.check_every == 0 or k == config.max_iters:  # the one synchronisation every check_every
            done = per_image_mse.sqrt() < config.tol
            stopped = torch.zeros_like(done) if guard is None else guard.stopped
            if bool((done | stopped).all()):
                converged = bool((done & ~stopped).all())
                break
    _records(history, residual_sq, data, coupling, times)
    estimate = x if config.return_estimate == "x" else decoded
    return RestoreResult(estimate, x, decoded, history, k, converged, time.perf_counter() - start,
                         0 if guard is None else int(guard.stopped.sum()))
