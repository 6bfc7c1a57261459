"""DTW pairing: correctness on hand-made sequences, the pair_info format, window/top-k, validation, CLI."""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otplug.cli import main as cli_main
from otplug.demo.data import ensure_demo_datasets
from otplug.lerobot.datasets import open_dataset
from otplug.lerobot.dtw import compute_pair_info, dtw
from otplug.lerobot.pair_info import PairInfoError, load_pair_info
from otplug.lerobot.synthetic import make_dataset


def brute_dtw(a: np.ndarray, b: np.ndarray) -> float:
    n, m = len(a), len(b)
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            c = float(np.linalg.norm(np.atleast_1d(a[i - 1] - b[j - 1])))
            acc[i, j] = c + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
    return float(acc[n, m])


def test_dtw_known_path_and_distance():
    d, path = dtw(np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.0, 1.0, 2.0]))
    assert d == 0.0
    assert path == [(0, 0), (0, 1), (1, 2), (2, 3)]
    d, path = dtw(np.array([0.0, 2.0]), np.array([1.0]))
    assert d == pytest.approx(2.0) and path == [(0, 0), (1, 0)]
    # 2-D points: Euclidean local cost
    d, path = dtw(np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 0.0], [0.0, 0.0]]))
    assert d == pytest.approx(5.0) and path == [(0, 0), (1, 1)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=9), st.lists(st.floats(-5, 5), min_size=1, max_size=9))
def test_dtw_matches_brute_force_and_path_is_valid(a, b):
    a, b = np.array(a), np.array(b)
    d, path = dtw(a, b)
    assert d == pytest.approx(brute_dtw(a, b), abs=1e-9)
    assert path[0] == (0, 0) and path[-1] == (len(a) - 1, len(b) - 1)
    for (i0, j0), (i1, j1) in zip(path, path[1:], strict=False):
        assert (i1 - i0, j1 - j0) in {(1, 0), (0, 1), (1, 1)}
    assert sum(abs(a[i] - b[j]) for i, j in path) == pytest.approx(d, abs=1e-9)


def test_window_constrains_the_path():
    a = np.array([0.0, 0.0, 0.0, 5.0])
    b = np.array([0.0, 5.0, 5.0, 5.0])
    free, _ = dtw(a, b)
    banded, path = dtw(a, b, window=0)
    assert path == [(i, i) for i in range(4)]
    assert banded == pytest.approx(10.0) and free == 0.0
    assert dtw(a, b, window=1)[0] == pytest.approx(5.0)
    # unequal lengths: the band widens to the length difference so a path exists
    d, path = dtw(np.arange(6.0), np.arange(3.0), window=0)
    assert np.isfinite(d) and all(abs(i - j) <= 3 for i, j in path)


@pytest.fixture(scope="module")
def pair_dsets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")

    def state(offset, scale):
        return lambda ep, t: np.array([scale * (t * (ep + 1) / 10.0) + offset, ep], dtype=np.float32)

    src = make_dataset(root / "src", repo_id="t/src", episode_lengths=[6, 8, 5], state_dim=2, cameras=(),
                       state_fn=state(0.0, 1.0))
    tgt = make_dataset(root / "tgt", repo_id="t/tgt", episode_lengths=[7, 5], state_dim=2, cameras=(),
                       state_fn=state(3.0, 2.0))
    return src, tgt


def test_pair_info_format(pair_dsets):
    src, tgt = pair_dsets
    info = compute_pair_info(src, tgt, key="observation.state", normalize="none")
    assert json.loads(json.dumps(info)) == info
    assert sorted(info) == ["0", "1"]
    for t_ep, n in (("0", 7), ("1", 5)):
        entries = info[t_ep]
        assert [e["demo_name"] for e in entries] != [] and sorted(e["demo_name"] for e in entries) == ["0", "1", "2"]
        dists = [e["raw_dtw_dist"] for e in entries]
        assert dists == sorted(dists)
        for e in entries:
            assert set(e) == {"demo_name", "raw_dtw_dist", "pairing"}
            assert sorted(e["pairing"], key=int) == [str(i) for i in range(n)]  # every target frame, relative
            src_len = {"0": 6, "1": 8, "2": 5}[e["demo_name"]]
            flat = [j for i in range(n) for j in e["pairing"][str(i)]]
            assert flat == sorted(flat) and flat[0] == 0 and flat[-1] == src_len - 1
    assert load_pair_info(info, source=src, target=tgt) == info


def test_normalisation_removes_offset_and_scale(pair_dsets):
    src, tgt = pair_dsets
    # per-episode normalisation: dim 1 is constant per episode, dim 0 a ramp whose slope, offset and scale
    # differ -> two ramps of the same length become identical (target episode 1 and source episode 2: 5 frames)
    info = compute_pair_info(src, tgt, normalize="episode")
    assert info["1"][0]["demo_name"] == "2"
    assert info["1"][0]["raw_dtw_dist"] == pytest.approx(0.0, abs=1e-5)
    raw = compute_pair_info(src, tgt, normalize="none")
    assert raw["0"][0]["raw_dtw_dist"] > 1.0
    with pytest.raises(PairInfoError, match="normalize"):
        compute_pair_info(src, tgt, normalize="bogus")


def test_top_k_and_window(pair_dsets):
    src, tgt = pair_dsets
    full = compute_pair_info(src, tgt, normalize="global")
    top = compute_pair_info(src, tgt, normalize="global", top_k=2)
    for t_ep in full:
        assert top[t_ep] == full[t_ep][:2]
    banded = compute_pair_info(src, tgt, normalize="global", window=1)
    for t_ep, entries in banded.items():
        n = len(entries[0]["pairing"])
        for e in entries:
            m = {"0": 6, "1": 8, "2": 5}[e["demo_name"]]
            band = max(1, abs(n - m))
            assert all(abs(int(i) - j) <= band for i, js in e["pairing"].items() for j in js)


def test_errors_name_the_key(pair_dsets):
    src, tgt = pair_dsets
    with pytest.raises(PairInfoError, match="observation.nothing"):
        compute_pair_info(src, tgt, key="observation.nothing")


def test_load_pair_info_validation(pair_dsets, tmp_path):
    src, tgt = pair_dsets
    good = compute_pair_info(src, tgt, normalize="none", top_k=1)
    # prefixed names are accepted and canonicalised
    renamed = {f"episode_{k}": [{**e, "demo_name": f"demo_{e['demo_name']}"} for e in v] for k, v in good.items()}
    assert load_pair_info(renamed, source=src, target=tgt) == good

    def broken(fn):
        bad = json.loads(json.dumps(good))
        fn(bad)
        return bad

    cases = [
        (lambda b: b["0"][0].pop("pairing"), r"\['0'\]\[0\]: missing key"),
        (lambda b: b["0"][0]["pairing"].__setitem__("99", [0]), r"target frame 99 is outside target episode 0"),
        (lambda b: b["1"][0]["pairing"].__setitem__("0", [42]), r"source frame 42 is outside source episode"),
        (lambda b: b["0"][0].__setitem__("demo_name", "7"), r"source episode 7 is not in the source dataset"),
        (lambda b: b.__setitem__("5", b["0"]), r"target episode 5 is not in the target dataset"),
        (lambda b: b["0"][0].__setitem__("raw_dtw_dist", "x"), r"raw_dtw_dist: expected a finite number"),
        (lambda b: b["0"][0]["pairing"].__setitem__("0", [1.5]), r"expected a list of integer source frames"),
    ]
    for fn, msg in cases:
        with pytest.raises(PairInfoError, match=msg):
            load_pair_info(broken(fn), source=src, target=tgt)
    # without datasets only the structure is checked
    load_pair_info(broken(cases[1][0]))
    p = tmp_path / "bad.json"
    p.write_text("{\n  oops")
    with pytest.raises(PairInfoError, match="line 2"):
        load_pair_info(p)
    with pytest.raises(PairInfoError, match="does not exist"):
        load_pair_info(tmp_path / "missing.json")


def test_cli_end_to_end_on_demo(tmp_path, capsys):
    d = ensure_demo_datasets(tmp_path / "cache", n_episodes=4, max_steps=12, image_size=8)
    out = tmp_path / "pair_info.json"
    rc = cli_main(["pair", "--source", d.sim_repo_id, "--source-root", str(d.sim_root), "--target",
                   str(d.real_root), "--key", "observation.state", "--out", str(out), "--top-k", "2",
                   "--window", "5", "--normalize", "none"])
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    src, tgt = open_dataset(d.sim_repo_id, d.sim_root), open_dataset(d.real_repo_id, d.real_root)
    info = load_pair_info(out, source=src, target=tgt)
    assert len(info) == 4 and all(len(v) == 2 for v in info.values())
    # episode i of both sides starts from the same scene: the closest sim episode is the true partner
    assert [info[str(i)][0]["demo_name"] for i in range(4)] == ["0", "1", "2", "3"]

    # the same file through `otplug check-config --pair-info`, before any training
    cfg = tmp_path / "ot.json"
    cfg.write_text(json.dumps({"terms": [{"type": "label", "name": "s", "src_key": "observation.state"}]}))
    check = ["check-config", "-q", str(cfg), "--pair-info"]
    datasets = ["--dataset", str(d.real_root), "--source", str(d.sim_root)]
    capsys.readouterr()
    assert cli_main(check + [str(out)] + datasets) == 0
    assert "OK against" in capsys.readouterr().out
    assert cli_main(check + [str(out)]) == 0
    assert "structure only" in capsys.readouterr().out
    raw = json.loads(out.read_text())
    bad = tmp_path / "bad.json"
    for broken, needle in ((dict(raw, **{"99": raw["0"]}), "target episode 99 is not in the target dataset"),
                           ({"3.0": raw["0"]}, "write it as '3'")):
        bad.write_text(json.dumps(broken))
        assert cli_main(check + [str(bad)] + (datasets if "99" in broken else [])) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert cli_main(check + [str(out), "--dataset", str(d.real_root)]) == 2
    assert "against both datasets" in capsys.readouterr().err


def test_cli_errors_without_traceback(tmp_path, capsys):
    d = ensure_demo_datasets(tmp_path / "cache", n_episodes=1, max_steps=4, image_size=8)
    base = ["pair", "--source", str(d.sim_root), "--target", str(d.real_root), "--out", str(tmp_path / "o.json")]
    assert cli_main(base + ["--key", "observation.bogus"]) == 2
    err = capsys.readouterr().err
    assert "observation.bogus" in err and "Traceback" not in err
    assert cli_main(base + ["--key", "observation.images.front"]) == 2
    assert "is an image" in capsys.readouterr().err
    assert cli_main(["pair", "--source", "a/b", "--source-root", str(tmp_path / "nope"), "--target",
                     str(d.real_root), "--out", "x.json"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_dtw_speed_on_demo_sizes():
    rng = np.random.default_rng(0)
    from otplug.lerobot.dtw import _cost_matrices, dtw_batch

    # the demo's pair: 20 x 20 episodes of 40 frames, 2-D states (longer, wider sequences here for margin)
    srcs = [rng.standard_normal((50, 4)) for _ in range(20)]
    t0 = time.perf_counter()
    for _ in range(20):
        cost, lens = _cost_matrices(rng.standard_normal((50, 4)), srcs)
        dtw_batch(cost, lens)
    assert time.perf_counter() - t0 < 5.0  # ~0.15 s measured on 2 shared cores
