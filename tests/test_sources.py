"""Several source datasets: the sources file, the OT pair mixture's law, `otplug pair` with several sources, and a
training run on a video and a PNG sim dataset with different camera names."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lerobot")
pytest.importorskip("accelerate")

from otplug.errors import ConfigError, OtplugError  # noqa: E402
from otplug.lerobot.synthetic import make_dataset  # noqa: E402
from otplug.lerobot.sources import read_sources_file  # noqa: E402

TOP = "observation.images.top"
HIGH = "observation.images.cam_high"
OT_CONFIG = {"reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0,
             "terms": [{"type": "image", "name": "img", "src_key": TOP, "weight": 1.0},
                       {"type": "action-slice", "name": "act", "weight": 0.5}]}


def _state(offset):
    return lambda ep, t: np.array([t / 10.0 + offset, ep, 0.0, 0.0], dtype=np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A PNG real dataset (camera `top`), a video sim dataset (camera `cam_high`) and a PNG sim dataset (`top`)."""
    root = tmp_path_factory.mktemp("sources")
    common = {"image_size": (24, 32)}  # video encoders need even sizes of some height
    make_dataset(root / "real", repo_id="test/real", episode_lengths=(10, 12, 9), cameras=(TOP,), seed=1, **common)
    make_dataset(root / "sim_vid", repo_id="test/sim_vid", episode_lengths=(11, 13), cameras=(HIGH,), seed=2,
                 use_videos=True, **common)
    make_dataset(root / "sim_png", repo_id="test/sim_png", episode_lengths=(9, 10, 12, 8), cameras=(TOP,), seed=3,
                 **common)
    (root / "ot.json").write_text(json.dumps(OT_CONFIG))
    return root


# -- the sources file ------------------------------------------------------------------------------------------------

def test_sources_file_paths_relative_to_the_file(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "a.json").write_text("{}")
    f = tmp_path / "sources.toml"
    f.write_text('[[sources]]\nroot = "data/a"\npair_info = "pairs/a.json"\nweight = 2\n'
                 '[sources.rename_map]\n"observation.images.cam_high" = "observation.images.top"\n'
                 '[[sources]]\nname = "hub"\nrepo_id = "me/sim_b"\n')
    a, b = read_sources_file(f)
    assert (a.name, a.root, a.pair_info, a.weight) == ("a", str(tmp_path / "data" / "a"),
                                                      str(tmp_path / "pairs" / "a.json"), 2.0)
    assert a.rename_map == {HIGH: TOP} and a.repo_id == "local/a"
    assert (b.name, b.repo_id, b.root, b.pair_info, b.weight) == ("hub", "me/sim_b", None, None, 1.0)


@pytest.mark.parametrize(("text", "expected"), [
    ('{"sources": [{"root": ".", "wieght": 2}]}', "sources[0].wieght: unknown key 'wieght'; did you mean 'weight'?"),
    ('{"source": [{"root": "."}]}', "did you mean 'sources'?"),
    ('{"sources": []}', "sources: must be a non-empty list"),
    ('{"sources": [{"root": ".", "weight": 0}]}', "sources[0].weight: must be a finite number > 0, got 0"),
    ('{"sources": [{"root": ".", "weight": true}]}', "sources[0].weight: must be a finite number > 0"),
    ('{"sources": [{"root": "nope"}]}', "sources[0].root: no such directory"),
    ('{"sources": [{"root": ".", "pair_info": "missing.json"}]}', "sources[0].pair_info: no such file"),
    ('{"sources": [{"weight": 1}]}', "sources[0]: needs `root` (the dataset's folder) or `repo_id`"),
    ('{"sources": [{"root": ".", "rename_map": {"a": 3}}]}', "sources[0].rename_map: must map source feature"),
    ('{"sources": [{"root": "."}, {"root": ".", "name": "x"}, {"root": ".", "name": "x"}]}',
     "name 'x' is used by more than one source"),
    ('{"sources": ["data"]}', "sources[0]: must be a table"),
])
def test_sources_file_mistakes_are_named(tmp_path, text, expected):
    f = tmp_path / "sources.json"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_sources_file(f)
    assert expected in str(err.value) and str(f) in str(err.value)


def test_sources_file_excludes_the_single_source_options(data, tmp_path, capsys):
    from otplug.cli import main as cli

    f = tmp_path / "s.json"
    f.write_text(json.dumps({"sources": [{"root": str(data / "sim_png")}]}))
    rc = cli(["train", *_args(data, tmp_path / "out", [f"--ot.sources_file={f}", "--ot.source_repo_id=x"])])
    err = capsys.readouterr().err
    assert rc == 2 and "--ot.sources_file lists the source datasets; drop --ot.source_repo_id" in err
    rc = cli(["train", *_args(data, tmp_path / "out", [f"--ot.sources_file={f}"])])  # OT on, no pair_info
    err = capsys.readouterr().err
    assert rc == 2 and "source(s) ['sim_png'] have no pair_info" in err and "Traceback" not in err


# -- the pair mixture ------------------------------------------------------------------------------------------------

def _pair_info(target_eps, source_eps, length=6):
    """Every target episode paired with every listed source episode, frame f <-> f."""
    return {str(t): [{"demo_name": str(s), "raw_dtw_dist": 1.0 + s,
                      "pairing": {str(f): [f] for f in range(length)}} for s in source_eps] for t in target_eps}


def test_pair_mixture_draws_sources_by_weight(data):
    from otplug.lerobot.datasets import open_dataset
    from otplug.lerobot.pair_dataset import PairSampling
    from otplug.lerobot.pair_mixture import PairMixture

    real = open_dataset("test/real", data / "real")
    a, b = open_dataset("test/sim_png", data / "sim_png"), open_dataset("test/sim_png", data / "sim_png")
    # source a pairs target episodes 0 and 1, source b pairs 1 and 2: frames of episode 0 can only come from a
    mix = PairMixture(real, [a, b], [_pair_info([0, 1], [0, 1]), _pair_info([1, 2], [2, 3])], [3.0, 1.0],
                      PairSampling(window_size=0), seed=5, names=["a", "b"])
    assert len(mix) == 18  # 3 target episodes x 6 paired frames, each once
    shared = [i for i in range(len(mix)) if mix.target_frame(i)[0] == 1]
    only_a = [i for i in range(len(mix)) if mix.target_frame(i)[0] == 0]
    assert mix.source_probabilities(shared[0]) == {"a": 0.75, "b": 0.25}
    draws = []
    for epoch in range(200):
        mix.set_epoch(epoch)
        draws += [mix.sample(i)[0] for i in shared]
        assert all(mix.sample(i)[0] == 0 for i in only_a)
    share_a = 1 - np.mean(draws)
    assert abs(share_a - 0.75) < 4 * (0.75 * 0.25 / len(draws)) ** 0.5
    # a's partners are a's episodes 0/1, b's are b's 2/3; the same (seed, epoch, i) draws the same partner
    mix.set_epoch(3)
    k, ep, f = mix.sample(shared[2])
    assert ep in ((0, 1) if k == 0 else (2, 3)) and f == mix.target_frame(shared[2])[1]
    assert mix.sample(shared[2]) == (k, ep, f)
    item = mix[shared[2]]
    assert set(item) == {"src", "tgt"} and int(item["tgt"]["episode_index"]) == 1


def test_pair_mixture_names_the_source_at_fault(data):
    from otplug.lerobot.datasets import open_dataset
    from otplug.lerobot.pair_mixture import PairMixture

    real = open_dataset("test/real", data / "real")
    a = open_dataset("test/sim_png", data / "sim_png")
    with pytest.raises(OtplugError, match="source 'b'"):
        PairMixture(real, [a, a], [_pair_info([0], [0]), _pair_info([0], [9])], [1.0, 1.0], names=["a", "b"])
    with pytest.raises(OtplugError, match="weights must be finite and > 0"):
        PairMixture(real, [a, a], [_pair_info([0], [0])] * 2, [1.0, 0.0])


# -- otplug pair with several sources, then training with the written sources file ----------------------------------

def _args(root, out, extra, steps=2):
    return [
        "--dataset.repo_id=test/real", f"--dataset.root={root / 'real'}", "--dataset.video_backend=pyav",
        "--policy.type=act", "--policy.device=cpu", "--policy.pretrained_backbone_weights=null",
        "--policy.dim_model=32", "--policy.n_heads=2", "--policy.dim_feedforward=64", "--policy.n_encoder_layers=1",
        "--policy.n_vae_encoder_layers=1", "--policy.chunk_size=4", "--policy.n_action_steps=4", "--num_workers=0",
        "--batch_size=8", "--log_freq=1", "--save_freq=100", "--seed=3", "--wandb.enable=false",
        f"--output_dir={out}", f"--steps={steps}", f"--ot.config={root / 'ot.json'}", "--ot.batch_size=4",
        "--ot.sinks=[]", *extra,
    ]


def test_pair_cli_with_several_sources(data, tmp_path, capsys):
    from otplug.cli import main as cli

    out = tmp_path / "pairs"
    rc = cli(["pair", "--target", str(data / "real"), "--source", str(data / "sim_vid"), "--source",
              str(data / "sim_png"), "--out", str(out), "-q"])
    assert rc == 0
    listing = json.loads((out / "sources.json").read_text())["sources"]
    assert [s["name"] for s in listing] == ["sim_vid", "sim_png"]
    assert all(s["weight"] == 1.0 and (out / f"pair_info.{s['name']}.json").is_file() for s in listing)
    specs = read_sources_file(out / "sources.json")
    assert [s.root for s in specs] == [str((data / n).resolve()) for n in ("sim_vid", "sim_png")]
    # mistakes: roots not one per source, duplicate names, --out a file
    assert cli(["pair", "--target", str(data / "real"), "--source", "a", "--source", "b", "--source-root",
                str(data), "--out", str(out)]) == 2
    assert "2 --source but 1 --source-root" in capsys.readouterr().err
    assert cli(["pair", "--target", str(data / "real"), "--source", str(data / "sim_png"), "--source",
                str(data / "sim_png"), "--out", str(out)]) == 2
    assert "both named 'sim_png'" in capsys.readouterr().err

    # check-config --sources-file: every source's keys and pair_info against the data, before training
    check = ["check-config", "-q", str(data / "ot.json"), "--dataset", str(data / "real"), "--sources-file",
             str(out / "sources.json")]
    assert cli(check) == 2  # the video sim names its camera cam_high: no rename map yet
    err = capsys.readouterr().err
    assert "source 'sim_vid'" in err and HIGH in err and err.count("\n") == 1
    listing[0]["rename_map"] = {HIGH: TOP}
    (out / "sources.json").write_text(json.dumps({"sources": listing}))
    assert cli(check) == 0
    printed = capsys.readouterr().out
    assert "source 'sim_vid'" in printed and "source 'sim_png'" in printed and "OK against" in printed
    assert cli(check + ["--pair-info", str(out / "pair_info.sim_png.json")]) == 2
    assert "drop ['--pair-info']" in capsys.readouterr().err


@pytest.mark.slow
def test_train_with_two_sources(data, tmp_path):
    """Two sim datasets (video with another camera name and a rename map; PNG) against a PNG real one: BC mixture
    and OT pairs from both, the shares logged per source, run_info listing each with its fps and weight; then a
    resume continues the metrics."""
    from otplug.cli import main as cli

    pairs = tmp_path / "pairs"
    assert cli(["pair", "--target", str(data / "real"), "--source", str(data / "sim_vid"), "--source",
                str(data / "sim_png"), "--out", str(pairs), "-q"]) == 0
    listing = json.loads((pairs / "sources.json").read_text())
    listing["sources"][0].update(weight=3.0, rename_map={HIGH: TOP})
    (pairs / "sources.json").write_text(json.dumps(listing))
    out = tmp_path / "run"
    extra = [f"--ot.sources_file={pairs / 'sources.json'}", "--ot.bc_source_weight=0.5", "--log_freq=30",
             "--save_freq=30"]
    assert cli(["train", *_args(data, out, extra, steps=30)]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["step"] == 30)
    # BC rows: 30 steps x 8 rows (+ the 4 + 4 OT rows, not counted): half from the sources, split 3:1
    assert abs(row["bc_source_fraction"] - 0.5) < 0.13
    assert abs(row["bc_source_fraction/sim_vid"] - 0.375) < 0.12
    assert abs(row["bc_source_fraction/sim_png"] - 0.125) < 0.09
    assert np.isfinite(row["ot_loss"]) and row["ot_pi_sum"] > 0
    info = json.loads((out / "run_info.json").read_text())
    assert [(s["name"], s["weight"], s["fps"]) for s in info["sources"]] == [("sim_vid", 3.0, 10), ("sim_png", 1.0, 10)]
    assert info["sources"][0]["rename_map"] == {HIGH: TOP} and info["source"]["name"] == "sim_vid"
    # resume to step 32: the log continues without repeating a step
    assert cli(["train", "--resume", "--output-dir", str(out), "--steps=32", "--log_freq=1"]) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-2:] == [31, 32] and len(steps) == len(set(steps))
