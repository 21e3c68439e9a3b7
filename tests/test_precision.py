"""Lowered precision where it is safe, float32 where it matters.

Under the networks' autocast the terms' convolutions / linear layers run at the networks' precision
(their outputs come back in float32), everything else in a term stays float32; the feature losses
that read bf16 maps compute in float32 anyway; gradients go back in the network's dtype and layout.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import TinyNet, toy_batch

from crossdistill.distiller import Distiller, loss_input
from crossdistill.losses import at_loss, factor_loss, nst_loss, vid_loss
from crossdistill.methods import DataSetup, Method, build_method
from crossdistill.methods.base import split_loss

BF16 = torch.bfloat16


def _autocast():
    return torch.autocast("cpu", dtype=BF16)


class Recorder(Method):
    """A test term with a conv projector: records the precision its module and its loss arithmetic see."""

    default_student = "layer2"
    default_teacher = "layer2"

    def build(self, s, t):
        self.proj = nn.Sequential(nn.Conv2d(s[0].shape[1], t[0].shape[1], 1), nn.ReLU())
        self.seen = {}
        self.proj.register_forward_hook(self._record)

    def _record(self, module, args, out):
        self.seen["module_autocast"] = torch.is_autocast_enabled("cpu")
        self.seen["module_out_dtype"] = out.dtype

    def forward(self, s, t, batch):
        p = self.proj(s[0])
        self.seen["loss_autocast"] = torch.is_autocast_enabled("cpu")
        self.seen["projected_dtype"] = p.dtype
        self.seen["input_dtype"] = s[0].dtype
        return (p - t[0]).pow(2).mean()


def _distiller(terms, seed=0):
    torch.manual_seed(seed)
    d = Distiller(TinyNet(width=8), TinyNet(width=8), terms, example_input=torch.randn(2, 3, 16, 16))
    d.setup(DataSetup(num_samples=16, num_classes=5, labels=torch.arange(16) % 5))
    return d


def test_term_modules_run_at_the_networks_precision_and_hand_back_float32():
    term = Recorder()
    d = _distiller([term])
    batch = toy_batch()
    with _autocast():
        loss, _ = d(batch)
    assert term.seen == {"module_autocast": True, "module_out_dtype": BF16, "loss_autocast": False,
                         "projected_dtype": torch.float32, "input_dtype": torch.float32}
    assert loss.dtype == torch.float32
    loss.backward()
    assert term.proj[0].weight.grad.dtype == torch.float32 and term.proj[0].weight.grad.abs().sum() > 0
    d(batch)  # fp32 networks: nothing is lowered
    assert term.seen["module_autocast"] is False and term.seen["module_out_dtype"] == torch.float32


@pytest.mark.parametrize("name,options", [
    ("vid", {}), ("vid", {"projector": "inverted"}), ("ft", {"init_epochs": 0}),
    ("ft", {"init_epochs": 0, "projector": "inverted"}), ("fitnet", {"student": "layer2", "teacher": "layer2"}),
    ("crd", {"nce_k": 8}), ("at", {}), ("nst", {}), ("cc", {}), ("dpk", {}),
])
def test_lowered_precision_terms_stay_close_to_float32(name, options):
    """The same bf16 network features through the term: bf16 modules + float32 loss (what training
    runs) against every module and op in float32 — within bf16's rounding of the module outputs."""
    term = build_method(name, **options)
    d = _distiller([term])
    captured = {}
    original = term.forward

    def capture(s, t, batch):
        captured["s"], captured["t"] = [x.detach() for x in s], [x.detach() for x in t]
        captured["batch"] = batch  # the term's view of the batch (e.g. CRD's contrast indices)
        return original(s, t, batch)

    term.forward = capture
    batch = toy_batch()
    state = {k: v.clone() for k, v in term.state_dict().items()}  # CRD's banks move at every step
    torch.manual_seed(1)  # the same negatives in both calls
    with _autocast():
        _, parts = d(batch)
    term.load_state_dict(state)
    torch.manual_seed(1)
    with torch.no_grad():
        reference, _ = split_loss(original([x.float() for x in captured["s"]], [x.float() for x in captured["t"]],
                                           captured["batch"]))
    lowered = parts[d.labels[0]]
    assert lowered.dtype == torch.float32
    assert float(lowered) == pytest.approx(float(reference), rel=2e-2, abs=1e-6)


def test_feature_losses_compute_in_float32_from_bf16_maps():
    """at/nst/vid on bf16 maps equal the same losses on those maps upcast to float32 (values and
    gradients): the upcast happens inside the loss, not by rounding its arithmetic to bf16."""
    g = torch.Generator().manual_seed(0)
    for shape_s, shape_t in (((4, 8, 6, 6), (4, 12, 6, 6)), ((4, 32, 2, 2), (4, 48, 2, 2))):
        fs = torch.randn(*shape_s, generator=g).relu().to(BF16).requires_grad_()
        ft = torch.randn(*shape_t, generator=g).relu().to(BF16)
        for fn in (at_loss, nst_loss):
            low = fn(fs, ft)
            (g_low,) = torch.autograd.grad(low, fs)
            ref_in = fs.detach().float().requires_grad_()
            ref = fn(ref_in, ft.float())
            (g_ref,) = torch.autograd.grad(ref, ref_in)
            assert low.dtype == torch.float32
            torch.testing.assert_close(low, ref, rtol=1e-5, atol=1e-7)
            assert g_low.dtype == BF16
            torch.testing.assert_close(g_low.float(), g_ref.to(BF16).float(), rtol=1e-2, atol=1e-6)
    mu = torch.randn(4, 8, 6, 6, generator=g, requires_grad=True)
    te = torch.randn(4, 8, 6, 6, generator=g).to(BF16)
    ls = torch.randn(8, generator=g)
    torch.testing.assert_close(vid_loss(mu, te, ls), vid_loss(mu, te.float(), ls), rtol=1e-6, atol=1e-7)
    f = torch.randn(4, 8, 3, 3, generator=g)
    torch.testing.assert_close(factor_loss(f, f.flip(0)), factor_loss(f, f.flip(0)))


def test_gradients_go_back_in_the_networks_dtype_and_layout():
    x = torch.randn(2, 4, 5, 5).to(BF16).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = x * 1  # a non-leaf, like a tapped map
    z = loss_input(y)
    assert z.dtype == torch.float32
    z.flatten(2).square().sum().backward()  # flatten: an NCHW gradient on the loss side
    assert x.grad.dtype == BF16 and x.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x.grad.float(), (2 * x.detach().float()).to(BF16).float())
    w = loss_input(y, None)  # the term reads the network's dtype
    assert w.dtype == BF16 and w.data_ptr() == y.data_ptr()


def _nst_naive(fs, ft):
    s = torch.nn.functional.normalize(fs.flatten(2), dim=2)
    t = torch.nn.functional.normalize(ft.flatten(2), dim=2)

    def k(a, b):
        return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()

    return k(s, s) + k(t, t) - 2 * k(s, t)


def _vid_naive(mu, t, ls, eps=1e-5):
    var = (torch.nn.functional.softplus(ls) + eps).view(1, -1, 1, 1)
    return (0.5 * ((t - mu).pow(2) / var + torch.log(var))).mean()


@pytest.mark.parametrize("cs,ct,hw", [(3, 5, 4), (7, 9, 2)])  # the channel-Gram form, the second-moment form
def test_hand_written_backwards_match_the_formulas(cs, ct, hw):
    """NST's and VID's hand-written backward against autograd through the naive formula (float64)."""
    g = torch.Generator().manual_seed(cs)
    fs = torch.randn(2, cs, hw, hw, generator=g, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(2, ct, hw, hw, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(nst_loss, (fs, ft))
    for got, want in zip(torch.autograd.grad(nst_loss(fs, ft), (fs, ft)), torch.autograd.grad(_nst_naive(fs, ft), (fs, ft))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(nst_loss(fs, ft), _nst_naive(fs, ft), rtol=1e-12, atol=1e-14)
    mu = torch.randn(2, cs, hw, hw, generator=g, dtype=torch.float64, requires_grad=True)
    ls = torch.randn(cs, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(vid_loss, (mu, fs, ls))
    for got, want in zip(torch.autograd.grad(vid_loss(mu, fs, ls), (mu, fs, ls)),
                         torch.autograd.grad(_vid_naive(mu, fs, ls), (mu, fs, ls))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_a_term_region_hands_its_gradient_back_in_its_own_dtype_and_layout():
    """A term's bf16 region (e.g. a projector's conv-BN) returns float32 to the loss; the gradient
    must come back channels_last and bf16, or its BatchNorm's backward runs ~10x slower on CPU."""
    import contextlib

    from crossdistill.precision import TermAutocast

    regions = TermAutocast()
    regions.state = ("cpu", BF16)
    regions._open.append(contextlib.nullcontext())  # as the forward pre-hook leaves it
    leaf = torch.randn(2, 4, 3, 3).to(BF16).to(memory_format=torch.channels_last).requires_grad_()
    x = leaf * 1  # the region's output (a leaf's .grad would be restrided to its layout anyway)
    seen = []
    x.register_hook(seen.append)  # the gradient as the region's backward receives it
    out = regions._leave(None, None, x)
    assert out.dtype == torch.float32
    (out.flatten(1) * torch.arange(36.0)).sum().backward()  # the loss side gives an NCHW gradient
    (grad,) = seen
    assert grad.dtype == BF16 and grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(grad.float().flatten(1), torch.arange(36.0).expand(2, 36).to(BF16).float())


def test_a_residual_block_runs_whole_in_the_networks_precision():
    """DPK's generation blocks (residual bottlenecks) are one bf16 region each: the input is cast once,
    the residual sums stay bf16 (not promoted to float32 by ``x + branch(x)``), and the loss reads
    float32; its gradient reaches the projector in float32."""
    term = build_method("dpk")
    d = _distiller([term])
    seen = []
    for gen in term.generators:
        for block in gen:
            block.register_forward_hook(lambda m, a, out: seen.append((a[0].dtype, out.dtype)))
    with _autocast():
        loss, _ = d(toy_batch())
    assert seen and all(pair == (BF16, BF16) for pair in seen)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in term.projectors.parameters())
    seen.clear()
    d(toy_batch())  # fp32 networks: nothing is lowered
    assert seen and all(pair == (torch.float32, torch.float32) for pair in seen)
