"""otplug.diagnostics on synthetic embeddings with known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from otplug import diagnostics as d
from otplug.errors import OtplugError


def cloud(n=64, f=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, f))


def test_identical_clouds_are_indistinguishable_and_retrieved():
    x = cloud()
    m = d.alignment_diagnostics(x, x.copy())
    assert m["diag/domain_probe_acc"] == pytest.approx(0.5, abs=0.1)
    assert m["diag/retrieval_at_1"] == 1.0
    assert m["diag/retrieval_at_1_cosine"] == 1.0
    assert "diag/embed_scale_ratio" not in m  # no reference given


def test_shifted_clouds_are_separable():
    x = cloud()
    assert d.domain_probe_accuracy(x, x + 3.0) == 1.0
    # a shift along one direction only is still found (standardised features)
    y = x.copy()
    y[:, 0] += 5.0
    assert d.domain_probe_accuracy(x, y) >= 0.95


def test_probe_is_deterministic_and_scale_blind():
    x, y = cloud(seed=1), cloud(seed=2) + 0.3
    a = d.domain_probe_accuracy(x, y, seed=3)
    assert d.domain_probe_accuracy(x, y, seed=3) == a
    assert d.domain_probe_accuracy(1e-4 * x, 1e-4 * y, seed=3) == a


def test_probe_matches_sklearn_objective():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 10))
    y = (rng.random(120) > 0.5).astype(float)
    x[y > 0] += 0.4
    w, b = d._fit_logistic(x, y, c=1.0, max_iter=200)
    ref = sklearn.LogisticRegression(C=1.0, tol=1e-10, max_iter=2000).fit(x, y)
    assert np.allclose(w, ref.coef_[0], atol=1e-5)
    assert b == pytest.approx(ref.intercept_[0], abs=1e-5)


def test_probe_wide_features_uses_row_span():
    # F >> n: fitting in the basis of the training rows (representer theorem) gives the full problem's classifier
    rng = np.random.default_rng(1)
    z, z_test = rng.normal(size=(20, 300)), rng.normal(size=(6, 300))
    y = np.r_[np.zeros(10), np.ones(10)]
    z[y > 0, :5] += 1.0
    reduced = d._probe_logits(z, y, z_test, c=1.0, max_iter=200)
    w, b = d._fit_logistic(z, y, c=1.0, max_iter=500)
    assert np.allclose(reduced, z_test @ w + b, atol=1e-5)
    x = rng.normal(size=(16, 300))
    assert d.domain_probe_accuracy(x, x + 1.0) == 1.0
    assert d.domain_probe_accuracy(x, x.copy()) == 0.5


def test_effective_rank_of_rank_k():
    rng = np.random.default_rng(0)
    for k in (1, 3, 7):
        a = np.linalg.qr(rng.normal(size=(50, k)))[0]  # orthonormal columns: k equal singular values
        b = np.linalg.qr(rng.normal(size=(20, k)))[0]
        assert d.effective_rank(a @ b.T, center=False) == pytest.approx(k, rel=1e-9)
    g = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 40))  # generic rank 5
    assert 3.5 < d.effective_rank(g) <= 5.0 + 1e-9
    assert d.effective_rank(np.zeros((6, 3))) == 0.0
    assert d.effective_rank(np.ones((6, 3))) == 0.0  # one point, centred
    assert math.isnan(d.effective_rank(np.full((3, 3), np.nan)))


def test_scale_and_ratio_exact():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert d.scale(x) == 12.5
    m = d.alignment_diagnostics(x, 2 * x, reference_scale=25.0)
    assert m["diag/embed_scale"] == pytest.approx((25 + 100) / 4)
    assert m["diag/embed_scale_ratio"] == pytest.approx(31.25 / 25.0)
    assert "diag/embed_scale_ratio" not in d.alignment_diagnostics(x, x, reference_scale=0.0)


def test_retrieval_partial_and_cosine():
    x = cloud(n=10, f=4)
    y = x.copy()
    y[[0, 1]] = y[[1, 0]]  # two real rows swapped: their nearest sim rows are the other's partner
    assert d.retrieval_at_1(x, y) == pytest.approx(0.8)
    # cosine ignores length, Euclidean does not
    z = x * np.linspace(1, 50, 10)[:, None]
    assert d.retrieval_at_1(x, z, "cosine") == 1.0
    assert d.retrieval_at_1(x, z) < 1.0
    with pytest.raises(OtplugError, match="metric"):
        d.retrieval_at_1(x, x, "manhattan")


def test_inputs_tensors_shapes_and_nonfinite():
    t = torch.randn(8, 2, 3)  # flattened to (8, 6)
    m = d.alignment_diagnostics(t, t.clone())
    assert m["diag/retrieval_at_1"] == 1.0
    with pytest.raises(OtplugError, match="same shape"):
        d.alignment_diagnostics(np.zeros((4, 2)), np.zeros((5, 2)))
    with pytest.raises(OtplugError, match="at least 2"):
        d.alignment_diagnostics(np.zeros((1, 2)), np.zeros((1, 2)))
    bad = cloud(n=8, f=3)
    bad[0, 0] = np.nan
    m = d.alignment_diagnostics(bad, cloud(n=8, f=3))
    assert math.isnan(m["diag/domain_probe_acc"]) and math.isnan(m["diag/retrieval_at_1"])
    assert math.isnan(m["diag/embed_scale"])


def test_collapse_alarm_rate_limited():
    alarm = d.CollapseAlarm(threshold=0.1, every=3)
    fired = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, ratio in enumerate([1.0, 0.05, 0.05, 0.05, 0.05, 0.5, 0.01, 0.01]):
            fired.append(alarm.check({"diag/embed_scale_ratio": ratio}, step=i))
    assert fired == [False, True, False, False, True, False, False, True]
    assert alarm.fired == 3 and len(caught) == 3
    assert all(issubclass(w.category, d.EmbeddingCollapseWarning) for w in caught)
    assert "step 1" in str(caught[0].message) and "scale collapse" in str(caught[0].message)
    assert not alarm.check({}) and not alarm.check(float("nan"))
    with pytest.raises(OtplugError):
        d.CollapseAlarm(every=0)


def test_embed_probe_keeps_rng_and_modes():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5))
    net.train()
    state = torch.get_rng_state()
    probe = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    s, t = d.embed_probe(net, probe, probe, module=net)
    assert np.array_equal(s, t)  # eval mode: dropout off, both passes equal
    assert torch.equal(torch.get_rng_state(), state)
    assert net.training and net[1].training
    m = d.diagnose(net, probe, probe, reference=1.0, module=net)
    assert m["diag/retrieval_at_1"] == 1.0 and "diag/embed_scale_ratio" in m


def test_recorder_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    src, tgt = torch.from_numpy(rng.normal(size=(10, 5))), torch.from_numpy(rng.normal(size=(10, 5)))
    factor = {"k": 1.0}

    def encode(batch):
        return batch * factor["k"]

    phase = np.linspace(0, 1, 10)
    rec = d.DiagnosticsRecorder(tmp_path, src, tgt, every=5, total_steps=20, src_phase=phase, tgt_phase=phase,
                                alarm=d.CollapseAlarm(threshold=0.1, every=100))
    assert [s for s in range(21) if rec.due(s)] == [0, 5, 10, 15, 20]
    m0 = rec.record(0, encode)
    assert m0["diag/embed_scale_ratio"] == 1.0
    factor["k"] = 0.1
    with pytest.warns(d.EmbeddingCollapseWarning):
        m1 = rec.record(5, encode)
    assert m1["diag/embed_scale_ratio"] == pytest.approx(0.01)
    rec.record(20, encode)
    files = d.embedding_files(tmp_path)
    assert [s for s, _ in files] == [0, 20]  # first and last only
    z = d.load_probe_embeddings(files[0][1])
    assert z["step"] == 0 and z["src"].shape == (10, 5) and z["src"].dtype == np.float64
    assert np.allclose(z["tgt_phase"], phase)
    assert z["metrics"]["diag/embed_scale"] == pytest.approx(m0["diag/embed_scale"])
    # a resumed run takes the reference from the earliest saved file
    again = d.DiagnosticsRecorder(tmp_path, src, tgt, resume_step=20, alarm=None)
    assert again.reference == pytest.approx(m0["diag/embed_scale"])


def test_load_rejects_foreign_files(tmp_path):
    p = tmp_path / "step_000001.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(OtplugError, match="not a readable"):
        d.load_probe_embeddings(p)
    np.savez(p, other=np.zeros(3))
    with pytest.raises(OtplugError, match="'src'"):
        d.load_probe_embeddings(p)
    np.savez(p, src=np.array([object()], dtype=object), tgt=np.zeros(1))
    with pytest.raises(OtplugError):
        d.load_probe_embeddings(p)


def test_retrieval_lives_in_stats_and_takes_tensors():
    from otplug import stats

    assert d.retrieval_at_1 is stats.retrieval_at_1
    x = torch.randn(6, 2, 3, requires_grad=True)  # flattened to (6, 6); the graph is left alone
    assert d.retrieval_at_1(x, x.detach().clone()) == 1.0
