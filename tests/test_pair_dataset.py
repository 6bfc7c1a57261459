"""The OT pair dataset's sampling rules (SPEC §4 item 7, §5)."""

from __future__ import annotations

import os
from collections import Counter
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from otplug.errors import OtplugError
from otplug.lerobot.datasets import open_dataset
from otplug.lerobot.pair_dataset import (
    OTPairDataset,
    PairDatasetError,
    PairSampling,
    collate_pairs,
    episode_rows,
    make_source_dataset,
)
from otplug.lerobot.synthetic import make_dataset


def fake_dataset(lengths: list[int], name: str = "fake"):
    """Just enough of a LeRobotDataset for sampling: an arrow table with episode_index and index."""
    eps = np.repeat(np.arange(len(lengths)), lengths)
    table = pa.table({"episode_index": eps, "index": np.arange(len(eps))})
    return SimpleNamespace(hf_dataset=SimpleNamespace(data=table), repo_id=name, root="-")


def full_pairing(n_tgt: int, n_src: int) -> dict[str, list[int]]:
    """A proportional monotone pairing covering every target frame."""
    return {str(i): [min(n_src - 1, (i * n_src) // n_tgt)] for i in range(n_tgt)}


TGT_LENS = [6, 9, 4]
SRC_LENS = [5, 8, 7, 3]
DISTS = {0: [3.0, 1.0, 2.0, 10.0], 1: [5.0, 6.0, 1.0, 2.0], 2: [1.0, 1.0, 8.0, 9.0]}


def make_info(drop_frames: dict[int, set[int]] | None = None) -> dict:
    drop_frames = drop_frames or {}
    info = {}
    for t_ep, n in enumerate(TGT_LENS):
        entries = []
        for s_ep, m in enumerate(SRC_LENS):
            pairing = {k: v for k, v in full_pairing(n, m).items() if int(k) not in drop_frames.get(t_ep, set())}
            entries.append({"demo_name": str(s_ep), "raw_dtw_dist": DISTS[t_ep][s_ep], "pairing": pairing})
        info[str(t_ep)] = entries
    return info


@pytest.fixture(scope="module")
def fakes():
    return fake_dataset(TGT_LENS, "tgt"), fake_dataset(SRC_LENS, "src")


def test_len_counts_paired_target_frames_once(fakes):
    tgt, src = fakes
    ds = OTPairDataset(tgt, src, make_info({1: {0, 3, 8}}))
    assert len(ds) == sum(TGT_LENS) - 3
    frames = [ds.target_frame(i) for i in range(len(ds))]
    assert len(set(frames)) == len(frames)  # each paired target frame is exactly one index
    assert (1, 3) not in frames and (1, 4) in frames
    assert ds.index_of(1, 4) == frames.index((1, 4))
    with pytest.raises(PairDatasetError, match="episode 1 frame 3"):
        ds.index_of(1, 3)


def test_frames_with_many_aligned_source_frames_are_not_oversampled(fakes):
    tgt, src = fakes
    info = make_info()
    # target frame 0 of episode 0 is aligned to 5 source frames in every entry, frame 1 to one
    for e in info["0"]:
        e["pairing"]["0"] = list(range(min(5, SRC_LENS[int(e["demo_name"])])))
    ds = OTPairDataset(tgt, src, info)
    # a uniform sampler over indices draws each target frame equally often
    loader = torch.utils.data.RandomSampler(range(len(ds)), num_samples=20000,
                                            generator=torch.Generator().manual_seed(0), replacement=True)
    counts = Counter(ds.target_frame(i) for i in loader)
    assert counts[(0, 0)] == pytest.approx(20000 / len(ds), rel=0.25)
    assert counts[(0, 1)] == pytest.approx(20000 / len(ds), rel=0.25)


@pytest.mark.parametrize("mode", ["logistic", "exp", "uniform"])
def test_source_episode_weights(fakes, mode):
    tgt, src = fakes
    sampling = PairSampling(mode=mode, sharpness=0.7)
    ds = OTPairDataset(tgt, src, make_info(), sampling=sampling)
    d = np.array(DISTS[1])
    if mode == "logistic":
        cutoff = np.median(d)
        w = 1.0 / (1.0 + np.exp(0.7 * (d - cutoff)))
    elif mode == "exp":
        w = np.exp(-0.7 * d)
    else:
        w = np.ones_like(d)
    want = {s: p for s, p in enumerate(w / w.sum())}
    got = {s: p for s, _, p in ds.candidates(ds.index_of(1, 2))}
    assert got == pytest.approx(want)
    # empirical check of the sampler itself
    i = ds.index_of(1, 2)
    rng = np.random.default_rng(1)
    counts = Counter(ds.sample_source(i, rng)[0] for _ in range(6000))
    for s, p in want.items():
        assert counts[s] / 6000 == pytest.approx(p, abs=0.03)


def test_logistic_explicit_cutoff_and_no_underflow(fakes):
    tgt, src = fakes
    info = make_info()
    for e in info["2"]:
        e["raw_dtw_dist"] += 1e5  # huge distances: exp(-d) underflows in float64, log-space weights do not
    for mode in ("exp", "logistic"):
        ds = OTPairDataset(tgt, src, info, sampling=PairSampling(mode=mode, sharpness=1.0, cutoff=0.0))
        probs = [p for _, _, p in ds.candidates(ds.index_of(2, 1))]
        assert np.isfinite(probs).all() and sum(probs) == pytest.approx(1.0)
        assert ds.sample_source(ds.index_of(2, 1))[0] in {0, 1}


def test_top_k_keeps_the_closest(fakes):
    tgt, src = fakes
    ds = OTPairDataset(tgt, src, make_info(), sampling=PairSampling(mode="uniform", top_k=2))
    for i in range(len(ds)):
        t_ep, _ = ds.target_frame(i)
        closest = set(np.argsort(DISTS[t_ep], kind="stable")[:2].tolist())
        assert {s for s, _, _ in ds.candidates(i)} == closest
        for seed in range(5):
            ds.set_epoch(seed)
            assert ds.sample_source(i)[0] in closest


def test_default_cutoff_is_median_after_top_k(fakes):
    tgt, src = fakes
    ds = OTPairDataset(tgt, src, make_info(), sampling=PairSampling(top_k=3, sharpness=1.0))
    # target episode 0: distances 3, 1, 2, 10 -> top-3 = 1, 2, 3 -> median 2 -> weights 1/(1+e^-1), 1/2, 1/(1+e)
    probs = {s: p for s, _, p in ds.candidates(ds.index_of(0, 0))}
    w = np.array([1 / (1 + np.exp(-1)), 0.5, 1 / (1 + np.exp(1))])
    assert [probs[1], probs[2], probs[0]] == pytest.approx((w / w.sum()).tolist())


@settings(max_examples=60, deadline=None)
@given(
    tgt_lens=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    src_lens=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    window=st.integers(0, 15),
    no_window=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_jitter_never_crosses_episode_boundaries(tgt_lens, src_lens, window, no_window, seed, data):
    info = {}
    for t_ep, n in enumerate(tgt_lens):
        entries = []
        for s_ep, m in enumerate(src_lens):
            pairing = {str(i): sorted(data.draw(st.sets(st.integers(0, m - 1), min_size=1, max_size=3)))
                       for i in range(n)}
            entries.append({"demo_name": str(s_ep), "raw_dtw_dist": float(s_ep), "pairing": pairing})
        info[str(t_ep)] = entries
    sampling = PairSampling(mode="logistic", sharpness=0.5, window_size=window, no_window=no_window)
    ds = OTPairDataset(fake_dataset(tgt_lens), fake_dataset(src_lens), info, sampling=sampling, seed=seed)
    assert len(ds) == sum(tgt_lens)
    rows = episode_rows(ds.source)
    for i in range(len(ds)):
        t_ep, t_f = ds.target_frame(i)
        s_ep, s_f = ds.sample_source(i)
        assert 0 <= s_f < src_lens[s_ep]
        # the global row is inside that episode's rows (never a neighbour's frame)
        assert ds.source_row(s_ep, s_f) in set(rows[s_ep].tolist())
        if not no_window:
            aligned = next(e for e in info[str(t_ep)] if int(e["demo_name"]) == s_ep)["pairing"][str(t_f)]
            assert min(abs(s_f - a) for a in aligned) <= window


def test_window_reaches_both_clipped_ends_and_no_window_is_uniform(fakes):
    tgt, src = fakes
    info = make_info()
    ds = OTPairDataset(tgt, src, info, sampling=PairSampling(mode="uniform", window_size=3))
    i = ds.index_of(0, 0)  # aligned to source frame 0 in every episode
    seen = Counter()
    for epoch in range(400):
        ds.set_epoch(epoch)
        seen[ds.sample_source(i)] += 1
    for s_ep, m in enumerate(SRC_LENS):
        assert {f for (e, f) in seen if e == s_ep} == set(range(min(4, m)))  # 0..3 clipped to the episode
    ds = OTPairDataset(tgt, src, info, sampling=PairSampling(mode="uniform", no_window=True))
    seen = Counter()
    for epoch in range(1500):
        ds.set_epoch(epoch)
        seen[ds.sample_source(i)] += 1
    for s_ep, m in enumerate(SRC_LENS):
        assert {f for (e, f) in seen if e == s_ep} == set(range(m))


def test_deterministic_by_seed_and_epoch(fakes):
    tgt, src = fakes
    info = make_info()
    a = OTPairDataset(tgt, src, info, seed=3)
    b = OTPairDataset(tgt, src, info, seed=3)  # e.g. another worker or DDP rank
    draws_a = [a.sample_source(i) for i in range(len(a))]
    assert draws_a == [b.sample_source(i) for i in range(len(b))]
    assert draws_a == [a.sample_source(i) for i in range(len(a))]  # no hidden state
    a.set_epoch(1)
    assert draws_a != [a.sample_source(i) for i in range(len(a))]
    c = OTPairDataset(tgt, src, info, seed=4)
    assert draws_a != [c.sample_source(i) for i in range(len(c))]


class _Draws(OTPairDataset):
    """Items are the drawn (source episode, frame) next to the index: no real datasets needed."""

    def __getitem__(self, i):
        return {"src": torch.tensor(self.sample_source(int(i))), "tgt": torch.tensor(int(i))}


@pytest.mark.parametrize("workers", [0, 2])
def test_training_loader_draws_afresh_every_epoch(fakes, workers):
    """The training loop's OT loader reaches set_epoch in its workers too (persistent workers kept epoch 0's
    copy of the dataset, so every epoch repeated the first epoch's source draws)."""
    pytest.importorskip("lerobot")
    from otplug.lerobot.pair_dataset import cycle_epochs, make_pair_loader

    tgt, src = fakes
    ds = _Draws(tgt, src, make_info(), sampling=PairSampling(window_size=3), seed=3)
    loader = make_pair_loader(ds, len(ds), workers, torch.Generator().manual_seed(0))
    batches = cycle_epochs(ds, loader)
    for epoch in range(3):
        srcs, idx = next(batches)
        got = {int(i): tuple(map(int, s)) for s, i in zip(srcs, idx, strict=True)}
        ref = _Draws(tgt, src, make_info(), sampling=PairSampling(window_size=3), seed=3)
        ref.set_epoch(epoch)
        assert got == {i: ref.sample_source(i) for i in range(len(ref))}, epoch


def test_sampling_validation():
    with pytest.raises(OtplugError, match="mode"):
        PairSampling(mode="softmax")
    with pytest.raises(OtplugError, match="sharpness"):
        PairSampling(sharpness=-1)
    with pytest.raises(OtplugError, match="top_k"):
        PairSampling(top_k=0)
    with pytest.raises(OtplugError, match="window_size"):
        PairSampling(window_size=-2)


# --- with real LeRobot datasets --------------------------------------------------------------------------------

FPS = 10


@pytest.fixture(scope="module")
def real_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairds")
    tgt = make_dataset(root / "tgt", repo_id="t/tgt", episode_lengths=[6, 9, 4], image_size=8, fps=FPS,
                       open_kwargs={"delta_timestamps": {"action": [i / FPS for i in range(10)]}})
    make_dataset(root / "src", repo_id="t/src", episode_lengths=[5, 8, 7, 3], image_size=8, fps=FPS, seed=1)
    src = make_source_dataset("t/src", root / "src", like=tgt)
    return tgt, src, root


def test_items_are_lerobot_items_from_the_sampled_frames(real_pair):
    tgt, src, _ = real_pair
    ds = OTPairDataset(tgt, src, make_info(), sampling=PairSampling(window_size=1), seed=0)
    for i in (0, 7, len(ds) - 1):
        item = ds[i]
        t_ep, t_f = ds.target_frame(i)
        s_ep, s_f = ds.sample_source(i)
        assert int(item["tgt"]["episode_index"]) == t_ep and int(item["tgt"]["frame_index"]) == t_f
        assert int(item["src"]["episode_index"]) == s_ep and int(item["src"]["frame_index"]) == s_f
        # make_dataset encodes (episode, frame) in state[:2]
        assert item["src"]["observation.state"][:2].tolist() == [s_ep, s_f]
        assert item["src"]["observation.images.front"].dtype == torch.float32
        assert item["src"]["observation.images.front"].shape == (3, 8, 8)
    src_b, tgt_b = collate_pairs([ds[i] for i in range(4)])
    assert src_b["action"].shape == (4, 10, 2) and tgt_b["action"].shape == (4, 10, 2)
    assert src_b["action_is_pad"].shape == tgt_b["action_is_pad"].shape == (4, 10)


def test_source_reuses_target_delta_timestamps(real_pair):
    tgt, src, _ = real_pair
    assert src.delta_timestamps == tgt.delta_timestamps
    ds = OTPairDataset(tgt, src, make_info(), sampling=PairSampling(window_size=0))
    for i in range(len(ds)):
        s_ep, s_f = ds.sample_source(i)
        item = src[ds.source_row(s_ep, s_f)]
        want = [s_f + k >= SRC_LENS[s_ep] for k in range(10)]
        assert item["action_is_pad"].tolist() == want
        # the window never reads another episode's actions (make_dataset: action[0] = episode)
        assert set(item["action"][:, 0].tolist()) == {float(s_ep)}


def test_source_reuses_image_transforms(real_pair):
    tgt, _, root = real_pair

    def halve(img):
        return img * 0.5

    tgt2 = open_dataset("t/tgt", root / "tgt", image_transforms=halve)
    src2 = make_source_dataset("t/src", root / "src", like=tgt2)
    assert src2.image_transforms is halve


def test_source_missing_a_delta_timestamps_feature_is_an_error(real_pair):
    _, _, root = real_pair
    like = SimpleNamespace(delta_timestamps={"observation.environment_state": [0.0, 0.1]}, image_transforms=None,
                           fps=FPS)
    with pytest.raises(PairDatasetError, match="observation.environment_state"):
        make_source_dataset("t/src", root / "src", like=like)
    with pytest.raises(PairDatasetError, match="delta_timestamps"):
        make_source_dataset("t/src", root / "src", like=like, delta_timestamps={})


def test_pair_info_must_fit_the_datasets(real_pair):
    tgt, src, _ = real_pair
    info = make_info()
    info["0"][0]["pairing"]["0"] = [99]
    with pytest.raises(OtplugError, match="source frame 99 is outside source episode 0"):
        OTPairDataset(tgt, src, info)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "softmax"}, "sampling.mode: must be one of 'logistic', 'exp', 'uniform', got 'softmax'"),
    ({"sharpness": -1.0}, "sampling.sharpness: must be >= 0, got -1.0"),
    ({"sharpness": float("nan")}, "sampling.sharpness: must be a finite number, got nan"),
    ({"cutoff": float("inf")}, "sampling.cutoff: must be a finite number, got inf (or None)"),
    ({"top_k": 0}, "sampling.top_k: must be an integer >= 1, got 0 (or None)"),
    ({"top_k": True}, "sampling.top_k: expected an integer, got bool True (or None)"),
    ({"window_size": 1.5}, "sampling.window_size: expected an integer, got float 1.5"),
])
def test_sampling_options_are_checked_with_the_shared_messages(kwargs, message):
    import re

    with pytest.raises(PairDatasetError, match=re.escape(message)):
        PairSampling(**kwargs)
    assert PairSampling(cutoff=None, top_k=None).top_k is None  # the optional ones take None
