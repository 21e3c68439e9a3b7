"""CRD: reference semantics (banks, Z, NCE, sampling), the fast path against the reference gather,
queue mode, state, errors, and a few training steps."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossdistill.config import parse_config
from crossdistill.distiller import Distiller
from crossdistill.errors import ConfigError
from crossdistill.losses import crd_loss_from_logits, crd_nce_fused, crd_nce_loss
from crossdistill.methods import DataSetup, build_method
from crossdistill.methods.crd_memory import last_occurrence, momentum_update
from crossdistill.methods.crd_sampler import NegativeSampler

from helpers import TinyNet, toy_batch


def _method(n=10, labels=None, d_s=6, d_t=8, **opts):
    """A built CRD term on plain vectors (no networks): features are [B, d]."""
    m = build_method("crd", **opts)
    m.build([torch.zeros(2, d_s)], [torch.zeros(2, d_t)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # toy sizes: nce_k may exceed the other-class samples
        m.setup(DataSetup(num_samples=n, labels=labels))
    return m


def _naive_loss(m, f_s, f_t, contrast_idx, Z_s=None, Z_t=None):
    """The reference's computation: gather rows, exp, divide by Z, NCE with a sum over negatives."""
    with torch.no_grad():
        v_s, v_t = m.embed(f_s, f_t)
        mem = m.memory
        out_s = torch.exp(torch.einsum("bkd,bd->bk", mem.bank_t[contrast_idx], v_s) / m.nce_t)
        out_t = torch.exp(torch.einsum("bkd,bd->bk", mem.bank_s[contrast_idx], v_t) / m.nce_t)
        Z_s = out_s.mean() * mem.n if Z_s is None else Z_s
        Z_t = out_t.mean() * mem.n if Z_t is None else Z_t
        return crd_nce_loss(out_s / Z_s, mem.n) + crd_nce_loss(out_t / Z_t, mem.n), Z_s, Z_t


def test_bank_init_range_shape_and_seed():
    torch.manual_seed(3)
    m = _method(n=200)
    bound = 1 / math.sqrt(128 / 3)
    for bank in (m.memory.bank_s, m.memory.bank_t):
        assert bank.shape == (200, 128)
        assert bank.abs().max() <= bound and bank.abs().max() > 0.95 * bound
        assert abs(bank.mean()) < 0.01
    assert not torch.equal(m.memory.bank_s, m.memory.bank_t)
    torch.manual_seed(3)
    again = _method(n=200)
    assert torch.equal(again.memory.bank_s, m.memory.bank_s)  # fixed by the torch RNG at build
    assert float(m.memory.Z_s) < 0 and float(m.memory.Z_t) < 0  # not estimated yet


@pytest.mark.parametrize("impl", ["dense", "gather"])
def test_loss_equals_crd_nce_loss_on_naively_gathered_scores(impl):
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 4])
    m = _method(n=10, labels=labels, nce_k=3, feat_dim=4, nce_t=0.5, impl=impl)
    g = torch.Generator().manual_seed(1)
    m.memory.bank_s.copy_(F.normalize(torch.randn(10, 4, generator=g), dim=1))
    m.memory.bank_t.copy_(F.normalize(torch.randn(10, 4, generator=g), dim=1))
    index = torch.tensor([1, 4, 8])
    # column 0 = the sample itself, then 3 negatives of other classes
    contrast_idx = torch.tensor([[1, 2, 9, 8], [4, 0, 7, 5], [8, 6, 0, 4]])
    f_s, f_t = torch.randn(3, 6, generator=g), torch.randn(3, 8, generator=g)
    expected, Z_s, Z_t = _naive_loss(m, f_s, f_t, contrast_idx)
    m.train()
    loss = m.contrast_loss(f_s, f_t, index, contrast_idx)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.memory.Z_s, Z_s, rtol=1e-5, atol=0)
    torch.testing.assert_close(m.memory.Z_t, Z_t, rtol=1e-5, atol=0)


def test_forward_scores_the_batch_contrast_indices_like_the_reference():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 4])
    m = _method(n=10, labels=labels, nce_k=3, feat_dim=4, nce_t=0.5).train()
    index = torch.tensor([1, 4, 8])
    f_s, f_t = torch.randn(3, 6), torch.randn(3, 8)
    contrast_idx = m.sampler.sample(index)
    expected, _, _ = _naive_loss(m, f_s, f_t, contrast_idx)
    loss = m([f_s], [f_t], {"index": index, "contrast_index": contrast_idx})
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="contrast_index"):
        m([f_s], [f_t], {"index": index})


def test_momentum_update_formula():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    v = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    momentum_update(bank, torch.tensor([0, 2]), v, 0.5)
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[s, s], [0.0, 1.0], [0.8, 0.4]])
    expected[2] = expected[2] / expected[2].norm()  # normalise(0.5·[0.6, 0.8] + 0.5·[1, 0])
    torch.testing.assert_close(bank, expected)
    # a repeated index: the last occurrence wins (as the reference's index_copy_ on CPU)
    assert last_occurrence(torch.tensor([5, 3, 5, 1])).sort().values.tolist() == [1, 2, 3]


def test_method_updates_the_banks_after_scoring():
    m = _method(n=10, nce_k=3, feat_dim=4)
    m.train()
    old_s, old_t = m.memory.bank_s.clone(), m.memory.bank_t.clone()
    index = torch.tensor([2, 7])
    f_s, f_t = torch.randn(2, 6), torch.randn(2, 8)
    contrast_idx = torch.tensor([[2, 0, 1, 3], [7, 1, 2, 3]])
    expected, _, _ = _naive_loss(m, f_s, f_t, contrast_idx)  # scored with the banks *before* the update
    loss = m.contrast_loss(f_s, f_t, index, contrast_idx)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    v_s, v_t = m.embed(f_s, f_t)
    torch.testing.assert_close(m.memory.bank_s[index], F.normalize(0.5 * old_s[index] + 0.5 * v_s.detach(), dim=1))
    torch.testing.assert_close(m.memory.bank_t[index], F.normalize(0.5 * old_t[index] + 0.5 * v_t.detach(), dim=1))
    untouched = torch.tensor([i for i in range(10) if i not in (2, 7)])
    assert torch.equal(m.memory.bank_s[untouched], old_s[untouched])
    m.eval()  # outside training nothing changes
    before = m.memory.bank_s.clone()
    m.contrast_loss(f_s, f_t, index, contrast_idx)
    assert torch.equal(m.memory.bank_s, before)


@pytest.mark.parametrize("z_mode", ["fixed", "running"])
def test_z_fixed_after_first_batch_or_running(z_mode):
    m = _method(n=50, nce_k=8, z_mode=z_mode, z_momentum=0.5)
    m.train()
    zs = []
    for step in range(3):
        index = torch.arange(4) + 4 * step
        contrast_idx = m.sampler.sample(index)
        f_s, f_t = torch.randn(4, 6), torch.randn(4, 8)
        if step == 0:
            _, Z_s, _ = _naive_loss(m, f_s, f_t, contrast_idx)
        m.contrast_loss(f_s, f_t, index, contrast_idx)
        zs.append(float(m.memory.Z_s))
    torch.testing.assert_close(torch.tensor(zs[0]), Z_s, rtol=1e-5, atol=0)
    if z_mode == "fixed":
        assert zs[0] == zs[1] == zs[2]
    else:
        assert zs[0] != zs[1] != zs[2]


def test_negatives_are_distinct_other_class_samples_uniformly():
    """The reference: ``np.random.choice(cls_negative[target], K, replace=False)`` — K distinct samples,
    uniform over the other classes."""
    labels = torch.arange(60) % 6
    index = torch.arange(60)
    other = labels.unsqueeze(0) != labels.unsqueeze(1)
    # K = every other-class sample (50): each row is exactly that set
    full = NegativeSampler(60, 50, labels).sample(index)
    assert full.shape == (60, 51) and torch.equal(full[:, 0], index)
    for b in range(60):
        assert sorted(full[b, 1:].tolist()) == torch.nonzero(other[b]).flatten().tolist()
    # K = 20 of 50, many rows: no repeat within a row; each candidate drawn with probability 20/50
    s = NegativeSampler(60, 20, labels)
    rng = np.random.default_rng(0)
    rows = torch.stack([s(0, rng) for _ in range(2000)])[:, 1:]
    assert all(len(set(r.tolist())) == 20 for r in rows)
    counts = torch.bincount(rows.flatten(), minlength=60).float()
    assert counts[~other[0]].sum() == 0
    expected = 2000 * 20 / 50
    sd = math.sqrt(2000 * 0.4 * 0.6)
    assert ((counts[other[0]] - expected).abs() < 5 * sd).all()


def test_with_replacement_only_when_k_exceeds_the_other_classes():
    labels = torch.arange(12) % 3  # 8 other-class samples per anchor
    assert not NegativeSampler(12, 8, labels).with_replacement
    rows = NegativeSampler(12, 8, labels).sample(torch.arange(12))
    assert all(len(set(r[1:].tolist())) == 8 for r in rows)
    many = NegativeSampler(12, 20, labels)
    assert many.with_replacement
    rows = many.sample(torch.arange(12))
    assert not (labels[rows[:, 1:]] == labels.unsqueeze(1)).any()
    m = build_method("crd", nce_k=20, feat_dim=4)
    m.build([torch.zeros(2, 6)], [torch.zeros(2, 8)])
    with pytest.warns(UserWarning, match="with replacement"):
        m.setup(DataSetup(num_samples=12, labels=labels))


def test_without_labels_negatives_are_all_other_indices():
    s = NegativeSampler(20, 19, None)
    index = torch.arange(20)
    neg = s.sample(index)[:, 1:]
    for b in range(20):
        assert sorted(neg[b].tolist()) == [i for i in range(20) if i != b]


def test_relax_positive_has_the_same_class():
    labels = torch.arange(40) % 4
    s = NegativeSampler(40, 4, labels, "relax")
    index = torch.arange(40).repeat(20)
    pos = s.sample(index)[:, 0]
    assert torch.equal(labels[pos], labels[index])
    assert (pos != index).any()  # not just the sample itself
    with pytest.raises(ConfigError, match="relax"):
        _method(n=10, labels=None, mode="relax")


@pytest.mark.parametrize("impl", ["dense", "gather"])
@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_training_draws_negatives_without_replacement(impl, mode):
    """Both paths, both modes: the indices the term scores come from the per-sample field, distinct
    within each row; the loss equals the reference's formula on those indices."""
    labels = torch.arange(200) % 4  # 150 other-class samples per anchor
    torch.manual_seed(0)
    m = _method(n=200, labels=labels, nce_k=100, feat_dim=8, impl=impl, mode=mode).train()
    index = torch.arange(16)
    rng = np.random.default_rng(3)
    contrast_idx = torch.stack([m.sample_fields()["contrast_index"](int(i), rng) for i in index])
    assert all(len(set(r[1:].tolist())) == 100 for r in contrast_idx)
    assert not (labels[contrast_idx[:, 1:]] == labels[index].unsqueeze(1)).any()
    assert torch.equal(labels[contrast_idx[:, 0]], labels[index])
    f_s, f_t = torch.randn(16, 6), torch.randn(16, 8)
    expected, _, _ = _naive_loss(m, f_s, f_t, contrast_idx)
    loss = m([f_s], [f_t], {"index": index, "contrast_index": contrast_idx})
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_the_data_pipeline_draws_the_same_negatives_for_any_worker_count_and_after_resume():
    from torch.utils.data import DataLoader

    from crossdistill.data import SampleFieldsDataset

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 24

        def __getitem__(self, i):
            return {"index": torch.tensor(i)}

    sampler = NegativeSampler(24, 10, torch.arange(24) % 3)
    ds = SampleFieldsDataset(Plain(), {"crd.contrast_index": sampler}, seed=5)

    def epoch(e, workers):
        ds.set_epoch(e)
        return torch.cat([b["crd.contrast_index"] for b in DataLoader(ds, batch_size=5, num_workers=workers)])

    a = epoch(1, 0)
    assert torch.equal(a, epoch(1, 2))                  # workers do not change the draw
    assert torch.equal(ds[7]["crd.contrast_index"], a[7])  # nor does fetching one sample alone (a resume)
    assert not torch.equal(a, epoch(2, 0))               # a new epoch, new negatives
    assert all(len(set(r[1:].tolist())) == 10 for r in a)


def test_dense_equals_gather_in_loss_and_gradients():
    labels = torch.arange(500) % 10
    methods = {}
    for impl in ("gather", "dense"):
        torch.manual_seed(0)
        methods[impl] = _method(n=500, labels=labels, nce_k=256, impl=impl, d_s=32, d_t=48).train()
    g = torch.Generator().manual_seed(2)
    for step in range(3):  # Z estimated at step 0, banks updated between steps
        index = torch.randperm(500, generator=g)[:16]
        contrast_idx = methods["gather"].sampler.sample(index)
        f_s, f_t = torch.randn(16, 32, generator=g), torch.randn(16, 48, generator=g)
        out = {}
        for impl, m in methods.items():
            fs, ft = f_s.clone().requires_grad_(), f_t.clone().requires_grad_()
            m.zero_grad()
            loss = m.contrast_loss(fs, ft, index, contrast_idx)
            loss.backward()
            out[impl] = (loss.detach(), fs.grad, ft.grad, [p.grad.clone() for p in m.parameters()])
        a, b = out["gather"], out["dense"]
        torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=0)
        for x, y in zip(b[1:3] + tuple(b[3]), a[1:3] + tuple(a[3])):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(methods["dense"].memory.bank_s, methods["gather"].memory.bank_s)
    torch.testing.assert_close(methods["dense"].memory.Z_t, methods["gather"].memory.Z_t, rtol=1e-5, atol=0)


def test_fused_nce_equals_crd_loss_from_logits_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    Z = torch.tensor([40.0, 7.0])
    logits = (torch.randn(2, 5, 9, generator=g, dtype=torch.float64) * 3).requires_grad_()
    ref = crd_loss_from_logits(logits[0], logits[1], Z[0], Z[1], 30)
    (ref_grad,) = torch.autograd.grad(ref, [logits])
    fused = crd_nce_fused(logits, Z, 30)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(fused, [logits])[0], ref_grad, rtol=1e-10, atol=1e-14)
    # float32 at the reference's scale: within 1e-6 of a float64 evaluation
    k, n = 16384, 50000
    logits = torch.randn(2, 64, k + 1, generator=g) * 1.3
    exact = crd_loss_from_logits(logits[0].double(), logits[1].double(), 1.1e5, 1.1e5, n)
    assert abs(float(crd_nce_fused(logits, torch.tensor([1.1e5, 1.1e5]), n)) / float(exact) - 1) < 1e-6


def test_initial_loss_matches_the_formula():
    # at init the logits are ~N(0, σ²) with σ² = 1/(D·T²) (bank rows have variance 1/D per coordinate):
    # each side gives ln K + 1 + σ²/2, so L ≈ 2(ln(K+1) + 1) + 1/(D·T²) (23.0 at the defaults, not 21.4)
    torch.manual_seed(0)
    m = _method(n=4000, labels=torch.arange(4000) % 10, nce_k=1024, d_s=64, d_t=64).train()
    index = torch.arange(256)
    loss = m.contrast_loss(torch.randn(256, 64), torch.randn(256, 64), index, m.sampler.sample(index))
    k, d, t = 1024, 128, 0.07
    assert abs(float(loss.detach()) - (2 * (math.log(k + 1) + 1) + 1 / (d * t * t))) < 0.35


def _crd_distiller(n=64, **opts):
    torch.manual_seed(0)
    full = toy_batch(n=n)
    d = Distiller(TinyNet(width=4), TinyNet(width=8), [build_method("crd", **opts)], example_input=full["input"][:2])
    d.setup(DataSetup(num_samples=n, labels=full["label"]))
    return d, full


def test_a_few_training_steps_lower_the_crd_loss():
    d, full = _crd_distiller(nce_k=16)
    opt = torch.optim.Adam(d.trainable_parameters(), lr=1e-3)
    d.train()
    epochs = []
    for _ in range(10):
        total = 0.0
        for j in range(2):
            b = {k: v[32 * j: 32 * (j + 1)] for k, v in full.items()}
            opt.zero_grad()
            loss, parts = d(b)
            loss.backward()
            opt.step()
            total += parts["crd"].item() / 2
        epochs.append(total)
    assert sum(epochs[-3:]) / 3 < 0.92 * epochs[0], epochs


def test_state_dict_round_trip_restores_banks_and_z():
    d, full = _crd_distiller(nce_k=16)
    d.train()
    for j in range(2):
        d({k: v[16 * j: 16 * (j + 1)] for k, v in full.items()})
    state = d.state_dict()
    assert {"terms.0.memory.bank_s", "terms.0.memory.bank_t", "terms.0.memory.Z_s", "terms.0.memory.Z_t"} <= set(state)
    fresh, _ = _crd_distiller(nce_k=16)
    fresh.load_state_dict(state)
    for key in ("bank_s", "bank_t", "Z_s", "Z_t"):
        assert torch.equal(getattr(fresh.terms[0].memory, key), getattr(d.terms[0].memory, key))
    b = {k: v[:16] for k, v in full.items()}
    fresh.train()
    torch.manual_seed(5)
    a = d(b)[1]["crd"]
    torch.manual_seed(5)
    assert torch.equal(fresh(b)[1]["crd"], a)  # same negatives → same loss: nothing was lost
    # restoring before setup() (e.g. to inspect a checkpoint) adopts the checkpoint's bank size
    torch.manual_seed(0)
    unset = Distiller(TinyNet(width=4), TinyNet(width=8), [build_method("crd", nce_k=16)],
                      example_input=full["input"][:2])
    unset.load_state_dict(state)
    assert torch.equal(unset.terms[0].memory.bank_t, d.terms[0].memory.bank_t)


def test_missing_setup_and_missing_index_are_clear_errors():
    torch.manual_seed(0)
    d = Distiller(TinyNet(width=4), TinyNet(width=8), [build_method("crd", nce_k=8)],
                  example_input=toy_batch()["input"])
    with pytest.raises(ConfigError, match=r"crd needs the dataset size.*distiller\.setup\(DataSetup\(num_samples=len\(ds\)"):
        d(toy_batch())
    d.setup(DataSetup(num_samples=16))
    b = toy_batch()
    del b["index"]
    with pytest.raises(ConfigError, match="IndexedDataset"):
        d(b)
    with pytest.raises(ConfigError, match="mode"):
        build_method("crd", mode="approximate")
    with pytest.raises(ConfigError, match="nce_m"):
        build_method("crd", nce_m=1.5)


def test_queue_mode_is_a_fifo_with_same_class_entries_masked():
    torch.manual_seed(0)
    labels = torch.arange(40) % 4
    m = _method(n=40, labels=labels, memory="queue", queue_size=8, d_s=6, d_t=8).train()
    assert m.memory.queue_s.shape == (8, 128)
    batches = [torch.arange(5), torch.arange(5, 10)]
    for index in batches:
        f_s, f_t = torch.randn(5, 6), torch.randn(5, 8)
        loss = m([f_s], [f_t], {"index": index})
        assert torch.isfinite(loss)
    q = m.memory
    assert int(q.ptr) == 10 % 8
    # slots 0..1 hold the newest entries (indices 8, 9), slots 2..7 the first batch's tail and the second's head
    assert q.queue_index.tolist() == [8, 9, 2, 3, 4, 5, 6, 7]
    assert torch.equal(q.queue_label, labels[q.queue_index])
    v_s, v_t = m.embed(f_s, f_t)
    torch.testing.assert_close(q.queue_s[:2], v_s[3:].detach())
    # the anchor's class is masked out of the negatives
    logits_s = q.logits(v_s, v_t, labels[torch.tensor([8, 9, 0, 1, 2])], torch.tensor([8, 9, 0, 1, 2]))[0]
    same = labels[q.queue_index].unsqueeze(0) == labels[torch.tensor([8, 9, 0, 1, 2])].unsqueeze(1)
    assert torch.isinf(logits_s[:, 1:][same]).all() and torch.isfinite(logits_s[:, 1:][~same]).all()


def test_a_recipe_can_express_crd_plus_kd():
    base = {"student": {"name": "resnet8"}, "data": {"name": "cifar100"}}
    two_terms = parse_config({**base, "distill": {"terms": [{"method": "kd", "weight": 1.0, "T": 4},
                                                             {"method": "crd"}]}})
    assert [t.method for t in two_terms.distill.terms] == ["kd", "crd"]
    with pytest.raises(ConfigError, match="crd_kd"):  # one term for both is gone: list two terms
        parse_config({**base, "distill": {"terms": [{"method": "crd_kd", "nce_k": 4096}]}})
    with pytest.raises(ConfigError, match="memory"):
        parse_config({**base, "distill": {"terms": [{"method": "crd", "memory": "que"}]}})


def test_inverted_projector_has_no_student_head():
    m = _method(n=10, projector="inverted", d_s=6, d_t=8)
    assert not list(m.embed_s.parameters())
    assert m.embed_t.linear.weight.shape == (6, 8) and m.memory.bank_s.shape == (10, 6)
    f_s = torch.randn(3, 6)
    torch.testing.assert_close(m.embed(f_s, torch.randn(3, 8))[0], F.normalize(f_s, dim=1))


def test_bench_crd_reports_ratio_equality_and_phases(tmp_path):
    """`crossdistill bench crd` at a toy size: both impls agree, the JSON carries ratio and phases.
    (No timing is asserted — only that the numbers are there and finite.)"""
    import json
    import math

    from crossdistill.lab.bench import run_bench

    out = tmp_path / "crd.json"
    res = run_bench("crd", ["n=3000", "k=512", "b=8", "dim=16", "classes=10", "steps=2", "warmup=1",
                            "memory=false", f"out={out}"])["crd"]
    saved = json.loads(out.read_text())
    assert saved["speedup"] == pytest.approx(res["speedup"]) and math.isfinite(res["speedup"])
    eq = res["equality"]
    assert max(eq["loss_rel_diff_step0"], eq["loss_rel_diff_step1"]) < 1e-5
    assert max(eq["grad_rel_diff_step0"], eq["grad_rel_diff_step1"]) < 1e-4
    assert eq["bank_max_abs_diff"] < 1e-6
    assert set(res["dense_phases_ms"]) >= {"sample indices", "the 4 GEMMs alone", "bank update"}
    assert all(ms > 0 for ms in res["dense_phases_ms"].values())
