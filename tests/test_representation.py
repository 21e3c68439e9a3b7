"""k-NN and linear probe: hand-checked tiny cases, tie rules, chance on shuffled labels, the CLI and its errors."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from crossdistill.engine.representation import Features, knn_eval, knn_predict, linear_probe, standardise
from crossdistill.errors import ConfigError


def _unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# ------------------------------------------------------------------------------------------ k-NN
def test_knn_hand_case():
    # bank: class 0 around 0°, class 1 around 90°; the scale of a row never matters (cosine)
    bank = torch.tensor([_unit(0), _unit(10), _unit(80), _unit(90), [5 * x for x in _unit(100)]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    queries = torch.tensor([_unit(5), _unit(60), _unit(44), _unit(-30)])
    # nearest neighbours by angle: 5°→{0°,10°}, 60°→80°, 44°→10° (34° away) before 80° (36°), -30°→0°
    assert knn_predict(bank, labels, queries, 1, 2).tolist() == [0, 1, 0, 0]
    # k=3: 5° → 0°,10°,80° (2 votes for class 0); 60° → 80°,90°,100° (class 1); 44° is 34° from 10°,
    # 36° from 80°, 44° from 0°, 46° from 90° → 10°,80°,0° (class 0); -30° → 0°,10°,80° (class 0)
    assert knn_predict(bank, labels, queries, 3, 2).tolist() == [0, 1, 0, 0]
    # k=5: every row votes: class 1 has 3 votes everywhere
    assert knn_predict(bank, labels, queries, 5, 2).tolist() == [1, 1, 1, 1]


def test_knn_vote_ties_go_to_the_class_of_the_best_ranked_neighbour():
    bank = torch.tensor([_unit(0), _unit(90), _unit(20), _unit(70)])
    labels = torch.tensor([0, 1, 0, 1])
    # k=2 at 30°: neighbours 20° (class 0) then 0°/70°... 30° is 10° from 20°, 30° from 0°, 40° from 70°
    # → {20°, 0°}: both class 0. At 50°: 70° (20° away) then 20° (30° away) → one vote each → class 1 first
    assert knn_predict(bank, labels, torch.tensor([_unit(50)]), 2, 2).tolist() == [1]
    assert knn_predict(bank, labels, torch.tensor([_unit(40)]), 2, 2).tolist() == [0]   # 20° is 20° away, 70° is 30°
    # k=4 at 45°: two votes each; the nearest neighbours are 20° and 70° (25° each): equal similarity,
    # the lower index (2, class 0) ranks first → class 0
    assert knn_predict(bank, labels, torch.tensor([_unit(45)]), 4, 2).tolist() == [0]


def test_knn_equal_similarities_rank_by_lower_index_also_across_the_top_k_boundary():
    # four identical bank rows with labels 1, 0, 1, 0: k=1 must pick index 0 (class 1), k=2 indices 0, 1
    bank = torch.ones(4, 3)
    labels = torch.tensor([1, 0, 1, 0])
    q = torch.ones(2, 3)
    assert knn_predict(bank, labels, q, 1, 2).tolist() == [1, 1]
    assert knn_predict(bank, labels, q, 2, 2).tolist() == [1, 1]     # one vote each: index 0 ranks first
    bank2 = torch.cat([torch.ones(4, 3), -torch.ones(1, 3)])
    labels2 = torch.tensor([0, 1, 1, 1, 0])
    assert knn_predict(bank2, labels2, q, 3, 2).tolist() == [1, 1]   # indices 0,1,2 → votes 0:1, 1:2


def test_knn_leave_one_out_never_counts_the_query_itself():
    bank = torch.tensor([_unit(0), _unit(1), _unit(90)])
    labels = torch.tensor([0, 1, 1])
    # with itself excluded, row 0's nearest is row 1 (class 1), row 1's is row 0 (class 0)
    assert knn_predict(bank, labels, bank, 1, 2, exclude_self=True).tolist() == [1, 0, 1]
    assert knn_predict(bank, labels, bank, 1, 2).tolist() == [0, 1, 1]


def test_knn_k_larger_than_the_bank_is_refused():
    with pytest.raises(ConfigError, match="lower k"):
        knn_predict(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.randn(2, 3), 6, 2)


def _blobs(n, classes, dim, seed, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    y = torch.arange(n) % classes
    return centres[y] + spread * torch.randn(n, dim, generator=g), y


def test_knn_and_probe_are_perfect_on_separable_blobs():
    x, y = _blobs(600, 5, 8, 0)
    xt, yt = _blobs(300, 5, 8, 1)
    feats = Features(x, y, xt, yt, 5)
    assert knn_eval(feats) == {"knn_k1": 1.0, "knn_k20": 1.0}
    assert linear_probe(feats, epochs=20)["linear"] == 1.0


def test_knn_and_probe_give_chance_when_the_training_labels_are_shuffled():
    # 200 tight, mutually orthogonal clusters (10 training and 5 test points each), cluster c of class
    # c mod 5: with true labels both protocols are perfect; with the training labels shuffled nothing
    # links a cluster to its class any more, and the test accuracy is chance, 1/5 (200 clusters make
    # its spread small: about sqrt(.2·.8/200) ≈ 0.03)
    g = torch.Generator().manual_seed(0)
    cluster, cluster_t = torch.arange(2000) % 200, torch.arange(1000) % 200
    x = torch.nn.functional.one_hot(cluster, 200).float() + 0.05 * torch.randn(2000, 200, generator=g)
    xt = torch.nn.functional.one_hot(cluster_t, 200).float() + 0.05 * torch.randn(1000, 200, generator=g)
    y, yt = cluster % 5, cluster_t % 5
    honest = Features(x, y, xt, yt, 5)
    assert knn_eval(honest) == {"knn_k1": 1.0, "knn_k20": 1.0} and linear_probe(honest, epochs=10)["linear"] > 0.9
    shuffled = Features(x, y[torch.randperm(2000, generator=g)], xt, yt, 5)
    results = [*knn_eval(shuffled).values(), linear_probe(shuffled, epochs=10)["linear"]]
    for acc in results:
        assert abs(acc - 0.2) < 0.08, results


def test_standardise_uses_the_training_statistics_after_l2_normalisation():
    x = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, 2.0]])
    xt = torch.tensor([[1.0, 0.0]])
    a, b = standardise(x, xt)
    n = np.array([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    mean, std = n.mean(0), n.std(0)
    assert np.allclose(a.numpy(), (n - mean) / std, atol=1e-6)
    assert np.allclose(b.numpy(), (np.array([[1.0, 0.0]]) - mean) / std, atol=1e-5)


def test_linear_probe_is_deterministic():
    x, y = _blobs(200, 3, 4, 0, spread=2.0)
    xt, yt = _blobs(100, 3, 4, 1, spread=2.0)
    feats = Features(x, y, xt, yt, 3)
    assert linear_probe(feats, epochs=5) == linear_probe(feats, epochs=5)


# ------------------------------------------------------------------------------------------ checkpoints and CLI
SHAPES = {"name": "shapes", "batch_size": 16,
          "options": {"num_classes": 3, "image_size": 16, "train_size": 48, "test_size": 24}}


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory):
    from crossdistill.engine.trainer import export_student
    from crossdistill.models import create_model

    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=3, in_channels=3)
    spec = {"name": "resnet8", "options": {}, "num_classes": 3, "in_channels": 3, "task": "classification",
            "task_classes": 3, "data": SHAPES}
    export_student(folder / "student.pt", model, spec, {})
    dense = create_model("dense_resnet_xs", num_classes=3, in_channels=3)
    export_student(folder / "dense.pt", dense, dict(spec, name="dense_resnet_xs"), {})
    return folder


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "crossdistill.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_eval_knn_and_linear_write_eval_json(student_ckpt, tmp_path):
    import shutil

    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(student_ckpt / "student.pt", folder / "student.pt")
    r = _cli("eval", str(folder / "student.pt"), "--protocol", "knn", "--k", "1", "5")
    assert r.returncode == 0, r.stderr
    assert "knn_k1=" in r.stdout and "knn_k5=" in r.stdout
    r = _cli("eval", str(folder / "student.pt"), "--protocol", "linear", "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads((folder / "eval.json").read_text())
    assert set(record) >= {"knn", "linear"}
    assert 0 <= record["knn"]["knn_k1"] <= 1 and record["knn"]["train_size"] == 48 and record["knn"]["test_size"] == 24
    assert json.loads(r.stdout)["linear"] == record["linear"]["linear"]
    # the same numbers from the Python function (no file written)
    from crossdistill.commands.representation import evaluate_representation

    again = evaluate_representation(str(folder / "student.pt"), "knn", ks=(1, 5), write=False)
    assert again["knn_k1"] == record["knn"]["knn_k1"]


def test_eval_help_documents_both_protocols():
    r = _cli("eval", "--help")
    assert r.returncode == 0
    assert "--protocol" in r.stdout and "knn" in r.stdout and "linear probe" in r.stdout and "ties" in r.stdout


def _write_nyu(path, n=6, w=16, h=16):
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as fh:
        fh["images"] = rng.integers(0, 256, (n, 3, w, h), dtype=np.uint8)
        fh["depths"] = rng.uniform(0.5, 10.0, (n, w, h)).astype(np.float32)
        fh["labels"] = rng.integers(0, 895, (n, w, h)).astype(np.uint16)


@pytest.mark.parametrize("case", ["no_labels", "k_too_large", "no_pooled_feature", "bad_feature"])
def test_eval_bad_input_is_one_line_nonzero_exit_and_nothing_written(student_ckpt, tmp_path, case):
    import shutil

    folder = tmp_path / "run"
    folder.mkdir()
    for f in ("student.pt", "dense.pt"):
        shutil.copy(student_ckpt / f, folder / f)
    ckpt, extra = str(folder / "student.pt"), []
    if case == "no_labels":
        _write_nyu(tmp_path / "nyu_depth_v2_labeled.mat")
        extra = ["data.name=nyuv2", f"data.root={tmp_path}", "data.options={num_seg_classes: 894, image_size: [16, 16]}"]
        want = "needs class labels"
    elif case == "k_too_large":
        extra = ["--k", "1", "49"]
        want = "lower --k"
    elif case == "no_pooled_feature":
        ckpt = str(folder / "dense.pt")
        want = "cannot resolve '@pooled'"
    else:
        extra = ["--feature", "layer9"]
        want = "no layer 'layer9'"
    r = _cli("eval", ckpt, "--protocol", "knn", *extra)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], r.stderr
    assert not (folder / "eval.json").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["dense.pt", "student.pt"]


def test_eval_protocols_refuse_a_student_with_non_finite_weights(student_ckpt, tmp_path):
    """As `eval` does for the task metric: a diverged student gets no k-NN or probe score."""
    from crossdistill.commands.representation import evaluate_representation
    from crossdistill.errors import CheckpointError

    student = torch.load(student_ckpt / "student.pt", weights_only=True)
    first = next(k for k, v in student["student"].items() if v.is_floating_point())
    student["student"][first] = student["student"][first].clone().fill_(float("nan"))
    torch.save(student, tmp_path / "nan.pt")
    for protocol in ("knn", "linear"):
        with pytest.raises(CheckpointError, match="non-finite weights"):
            evaluate_representation(str(tmp_path / "nan.pt"), protocol, [])
    assert not (tmp_path / "eval.json").exists()
