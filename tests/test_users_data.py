"""Users' own data: video and PNG datasets behave alike, camera names mapped, fps, the weighted BC mixture."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lerobot")
pytest.importorskip("accelerate")

from otplug.errors import OtplugError  # noqa: E402
from otplug.lerobot.synthetic import make_dataset  # noqa: E402
from otplug.lerobot.mixture import (  # noqa: E402
    PART_KEY,
    MixtureDataset,
    WeightedFrameSampler,
    mixture_probabilities,
    source_fraction,
)

TOP = "observation.images.top"
HIGH = "observation.images.cam_high"
OT_CONFIG = {"reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0,
             "terms": [{"type": "image", "name": "img", "src_key": TOP, "weight": 1.0},
                       {"type": "action-slice", "name": "act", "weight": 0.5}]}


def _image(key, ep, t):  # a picture with structure (not a flat fill), identical in both storages
    yy, xx = np.mgrid[0:24, 0:32]
    img = np.zeros((24, 32, 3), dtype=np.uint8)
    img[..., 0] = (xx * 7 + ep * 40) % 256
    img[..., 1] = (yy * 9 + t * 11) % 256
    img[..., 2] = 128
    return img


def _write(root, name, *, camera, video, fps=10, lengths=(12, 14, 10), seed=0):
    return make_dataset(root / name, repo_id=f"test/{name}", episode_lengths=lengths, cameras=(camera,),
                        image_size=(24, 32), fps=fps, seed=seed, image_fn=_image, use_videos=video)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from otplug.lerobot.dtw import compute_pair_info
    from otplug.lerobot.pair_info import save_pair_info

    root = tmp_path_factory.mktemp("users")
    real_png = _write(root, "real_png", camera=TOP, video=False, seed=1)
    _write(root, "real_vid", camera=TOP, video=True, seed=1)
    sim = _write(root, "sim_high", camera=HIGH, video=True, lengths=(11, 13), seed=2)
    _write(root, "sim_top_png", camera=TOP, video=False, lengths=(11, 13), seed=2)
    _write(root, "sim_fps20", camera=TOP, video=False, fps=20, lengths=(22, 26), seed=2)
    save_pair_info(compute_pair_info(sim, real_png, key="observation.state"), root / "pair_info.json")
    (root / "ot.json").write_text(json.dumps(OT_CONFIG))
    return root


def _args(root, out, *, real, sim, steps=2, extra=()):
    return [
        f"--dataset.repo_id=test/{real}", f"--dataset.root={root / real}", "--dataset.video_backend=pyav",
        "--policy.type=act", "--policy.device=cpu", "--policy.pretrained_backbone_weights=null",
        "--policy.dim_model=32", "--policy.n_heads=2", "--policy.dim_feedforward=64", "--policy.n_encoder_layers=1",
        "--policy.n_vae_encoder_layers=1", "--policy.chunk_size=4", "--policy.n_action_steps=4", "--num_workers=0",
        "--batch_size=4", "--log_freq=1", "--save_freq=100", "--seed=3", "--wandb.enable=false",
        f"--output_dir={out}", f"--steps={steps}", f"--ot.source_repo_id=test/{sim}", f"--ot.source_root={root / sim}",
        f"--ot.pair_info={root / 'pair_info.json'}", f"--ot.config={root / 'ot.json'}", "--ot.batch_size=3",
        "--ot.sinks=[]", *extra,
    ]


def _rows(out, with_probe=False):
    """metrics.jsonl rows; the step-0 row of the alignment diagnostics (diag/*) only when asked."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return rows if with_probe else [r for r in rows if r["step"] > 0]


# -- the sampling law ------------------------------------------------------------------------------------------------

class _Fake:
    """Enough of a LeRobotDataset for the mixture: episodes of given lengths, items carrying their row."""

    def __init__(self, lengths, base=0):
        import types

        self.lengths = list(lengths)
        eps = np.repeat(np.arange(len(lengths)), lengths)
        idx = np.arange(len(eps)) + base
        col = types.SimpleNamespace
        table = col(column=lambda name: col(to_numpy=lambda: {"episode_index": eps, "index": idx}[name]))
        self.hf_dataset = col(data=table)
        self.meta = col(camera_keys=[], features={"observation.state": {}, "action": {}})
        self.repo_id, self.root = "fake", "/fake"

    def __len__(self):
        return sum(self.lengths)

    def __getitem__(self, i):
        return {"row": torch.tensor(i), "observation.state": torch.zeros(2), "action": torch.zeros(2)}


@pytest.mark.parametrize(("normalize", "expected"), [(True, 0.3), (False, 0.3 * 300 / (0.3 * 300 + 0.7 * 100))])
def test_mixture_law_matches_bc_source_weight(normalize, expected):
    mix = MixtureDataset([_Fake([50, 50]), _Fake([100, 100, 100])])
    probs = mixture_probabilities(mix.sizes, 0.3, [1.0], normalize)
    sampler = WeightedFrameSampler(mix, probs, seed=1)
    draws = torch.cat([sampler.draws(e) for e in range(20)])
    share = float((draws >= 100).double().mean())
    n = len(draws)
    assert abs(share - expected) < 4 * (expected * (1 - expected) / n) ** 0.5  # 4 sigma


def test_mixture_drops_last_frames_and_is_deterministic_and_resumable():
    mix = MixtureDataset([_Fake([5, 6]), _Fake([4])])
    sampler = WeightedFrameSampler(mix, mixture_probabilities(mix.sizes, 0.5, [1.0]), drop_n_last_frames=2, seed=7)
    allowed = {0, 1, 2, 5, 6, 7, 8, 11, 12}  # every episode but its last 2 frames
    draws = torch.cat([sampler.draws(e) for e in range(30)])
    assert set(draws.tolist()) == allowed
    assert torch.equal(sampler.draws(3), WeightedFrameSampler(mix, sampler.probabilities.numpy(),
                                                              drop_n_last_frames=2, seed=7).draws(3))
    full = list(iter(sampler)) + list(iter(sampler))  # epochs 0, 1
    again = WeightedFrameSampler(mix, sampler.probabilities.numpy(), drop_n_last_frames=2, seed=7)
    again.load_state_dict({"epoch": 0, "start_index": 4})
    assert list(iter(again)) + list(iter(again)) == full[4:]
    item = mix[12]
    assert int(item[PART_KEY]) == 1 and int(item["row"]) == 1
    batch = {PART_KEY: torch.tensor([0, 1, 1, 0]), "x": torch.zeros(4)}
    assert source_fraction(batch) == 0.5 and PART_KEY not in batch


def test_mixture_rejects_bad_weights():
    with pytest.raises(OtplugError, match=r"bc_source_weight must be in \[0, 1\]"):
        mixture_probabilities([10, 10], 1.5, [1.0])
    with pytest.raises(OtplugError, match="source weights"):
        mixture_probabilities([10, 10], 0.5, [-1.0])


# -- end to end: video vs PNG, rename map, fps, mixture --------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("layout", ["single-pass", "separate"])
def test_video_and_png_give_the_same_embedding_scale(data, tmp_path, layout):
    """The same pictures stored as video (uint8 decode) and PNG (float decode) reach the policy alike: the
    image embedding scale at step 1 agrees (the 255x bug made it ~1e5 times larger)."""
    from otplug.lerobot.train import main

    rename = f'--ot.source_rename_map={{"{HIGH}": "{TOP}"}}'
    scales = {}
    for real in ("real_png", "real_vid"):
        out = tmp_path / f"{layout}-{real}"
        assert main(_args(data, out, real=real, sim="sim_high", steps=1,
                          extra=[rename, f"--ot.layout={layout}"])) == 0
        scales[real] = _rows(out)[0]["ot_embed_scale/img"]
    ratio = scales["real_vid"] / scales["real_png"]
    assert 0.5 < ratio < 2.0, scales


@pytest.mark.slow
def test_camera_names_differ_needs_a_rename_map(data, tmp_path, capsys):
    from otplug.cli import main as cli

    rc = cli(["train", *_args(data, tmp_path / "norename", real="real_png", sim="sim_high", steps=1)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "test/sim_high" in err and TOP in err and f'--ot.source_rename_map=\'{{"{HIGH}": "{TOP}"}}\'' in err, err
    rc = cli(["train", *_args(data, tmp_path / "typo", real="real_png", sim="sim_high", steps=1,
                              extra=['--ot.source_rename_map={"observation.images.cam_hihg": "x"}'])])
    err = capsys.readouterr().err
    assert rc == 2 and "cam_hihg" in err and "not a feature of" in err


@pytest.mark.slow
def test_fps_resampled_or_refused(data, tmp_path, capsys):
    from otplug.cli import main as cli

    # sim at 20 fps, real at 10: the target's time offsets are whole source frames (every 2nd) -> trains
    out = tmp_path / "fps"
    extra = ["--ot.enabled=false", "--ot.bc_source_weight=0.5"]
    assert cli(["train", *_args(data, out, real="real_png", sim="sim_fps20", steps=1, extra=extra)]) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["dataset"]["fps"] == 10 and info["source"]["fps"] == 20
    # the other way round: real at 20 fps, source at 10 -> offsets of 1/20 s are not source frames
    rc = cli(["train", *_args(data, tmp_path / "fps2", real="sim_fps20", sim="real_png", steps=1, extra=extra)])
    err = capsys.readouterr().err
    assert rc == 2 and "runs at 10 fps but the target at 20" in err


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["single-pass", "separate"])
def test_bc_source_fraction_tracks_the_weight(data, tmp_path, layout):
    from otplug.lerobot.train import main

    out = tmp_path / f"mix-{layout}"
    extra = ["--ot.bc_source_weight=0.75", f"--ot.layout={layout}", "--batch_size=8", "--log_freq=40"]
    assert main(_args(data, out, real="real_png", sim="sim_top_png", steps=40, extra=extra)) == 0
    rows = _rows(out)
    assert len(rows) == 1 and rows[0]["step"] == 40
    frac = rows[0]["bc_source_fraction"]  # 320 rows: sd 0.024
    assert abs(frac - 0.75) < 0.1, frac
    # target only: exactly 0 source rows, and the metric is absent (no mixture)
    out0 = tmp_path / f"nomix-{layout}"
    assert main(_args(data, out0, real="real_png", sim="sim_top_png", steps=1,
                      extra=[f"--ot.layout={layout}"])) == 0
    assert "bc_source_fraction" not in _rows(out0)[0]


# -- check-config against the datasets -------------------------------------------------------------------------------

def test_check_config_against_datasets(tmp_path, capsys):
    from otplug.cli import main as cli

    _write(tmp_path, "real", camera=TOP, video=False, lengths=(3,))
    _write(tmp_path, "sim", camera=HIGH, video=False, lengths=(3,), fps=15)
    cfg = tmp_path / "ot.json"
    cfg.write_text(json.dumps(OT_CONFIG))
    base = ["check-config", str(cfg), "-q", "--dataset", str(tmp_path / "real")]
    assert cli(base) == 0
    assert "OK against" in capsys.readouterr().out
    assert cli([*base, "--source", str(tmp_path / "sim")]) == 2
    err = capsys.readouterr().err
    assert f"terms read '{TOP}' on the source side" in err and f"(it has {HIGH})" in err and "15 fps" in err
    assert err.count("\n") == 1 and err.startswith("otplug: error:")
    rename = json.dumps({HIGH: TOP})
    assert cli([*base, "--source", str(tmp_path / "sim"), "--source-rename-map", rename]) == 2  # still the fps
    assert "runs at 15 fps and the target at 10" in capsys.readouterr().err
    assert cli([*base, "--source", str(tmp_path / "nope")]) == 2
    assert "not a LeRobot dataset" in capsys.readouterr().err
