"""Decode once (otplug.lerobot.frame_cache): cached rows are the dataset's rows bit for bit, transforms included,
and a cached training run is the disk run: the same batches and the same losses."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lerobot")
pytest.importorskip("accelerate")

from otplug.errors import OtplugError  # noqa: E402
from otplug.lerobot.datasets import RenamedDataset, open_dataset  # noqa: E402
from otplug.lerobot.frame_cache import FrameCache, cache_frames, fingerprint, maybe_cache, store_path  # noqa: E402
from otplug.lerobot.synthetic import make_dataset  # noqa: E402

TOP = "observation.images.top"
HIGH = "observation.images.cam_high"
OT_CONFIG = {"reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0,
             "terms": [{"type": "image", "name": "img", "src_key": TOP, "weight": 1.0},
                       {"type": "action-slice", "name": "act", "weight": 0.5}]}


def _image(key, ep, t):
    yy, xx = np.mgrid[0:24, 0:32]
    img = np.zeros((24, 32, 3), dtype=np.uint8)
    img[..., 0] = (xx * 7 + ep * 40) % 256
    img[..., 1] = (yy * 9 + t * 11) % 256
    img[..., 2] = (xx * yy) % 256
    return img


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from otplug.lerobot.dtw import compute_pair_info
    from otplug.lerobot.pair_info import save_pair_info

    root = tmp_path_factory.mktemp("cache")
    real = make_dataset(root / "real", repo_id="test/real", episode_lengths=(12, 14, 10), cameras=(TOP,),
                        image_size=(24, 32), seed=1, image_fn=_image, use_videos=False)
    sim = make_dataset(root / "sim", repo_id="test/sim", episode_lengths=(11, 13), cameras=(HIGH,),
                       image_size=(24, 32), seed=2, image_fn=_image, use_videos=True)
    save_pair_info(compute_pair_info(sim, real, key="observation.state"), root / "pair_info.json")
    (root / "ot.json").write_text(json.dumps(OT_CONFIG))
    return root


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def _transforms():
    from lerobot.transforms.transforms import ImageTransforms, ImageTransformsConfig

    return ImageTransforms(ImageTransformsConfig(enable=True, max_num_transforms=3, random_order=True))


@pytest.mark.parametrize("video", [False, True])
def test_cached_rows_are_the_dataset_rows_with_random_transforms(data, video):
    """Time windows, padding masks, uint8 video frames and random image transforms: the cached row i after
    ``torch.manual_seed(s)`` is the dataset's row i after the same seed."""
    name, cam = ("sim", HIGH) if video else ("real", TOP)
    delta = {"action": [t / 10 for t in range(6)], cam: [-0.1, 0.0]}
    ds = open_dataset(f"test/{name}", data / name, delta_timestamps=delta, image_transforms=_transforms(),
                      return_uint8=video)
    cached = cache_frames(ds)
    assert isinstance(cached, FrameCache) and len(cached) == len(ds)
    assert cached.image_transforms is ds.image_transforms  # the transforms are back on the dataset
    for i in (0, 5, 11, len(ds) - 1):
        torch.manual_seed(100 + i)
        want = ds[i]
        torch.manual_seed(100 + i)
        got = cached[i]
        _same(got, want)
    assert cached[len(ds) - 1]["action_is_pad"].any()  # the window runs past the episode's end
    assert (cached[3][cam].dtype == torch.uint8) == video


def test_renamed_dataset_keeps_its_names_on_the_cache(data):
    ds = RenamedDataset(open_dataset("test/sim", data / "sim"), {HIGH: TOP})
    cached = cache_frames(ds)
    assert isinstance(cached, RenamedDataset) and isinstance(cached.inner, FrameCache)
    assert TOP in cached[0] and HIGH not in cached[0] and cached.meta.camera_keys == [TOP]
    _same(cached[4], ds[4])


def test_auto_mode_respects_the_budget_and_says_so(data):
    ds = open_dataset("test/real", data / "real")
    said: list[str] = []
    assert maybe_cache(ds, "auto", 1e-6, say=said.append) is ds
    assert "would take" in said[0] and "--ot.frame_cache=memory" in said[0]
    said.clear()
    out = maybe_cache(ds, "auto", 1.0, say=said.append)
    assert isinstance(out, FrameCache) and "in memory, ~" in said[0] and "decoded in" in said[1]
    assert maybe_cache(ds, "disk", 1.0) is ds
    with pytest.raises(OtplugError, match="--ot.frame_cache: must be one of"):
        maybe_cache(ds, "sometimes", 1.0)


# --- decode once per grid: the store (--ot.frame_cache_dir)


@pytest.mark.parametrize("video", [False, True])
def test_stored_rows_are_the_decoded_rows(data, tmp_path, video):
    """A second cache of the same dataset loads the rows the first decoded (and says so): bit for bit, time
    windows, padding and uint8 video frames included, with the random transforms applied per draw as before."""
    name, cam = ("sim", HIGH) if video else ("real", TOP)
    delta = {"action": [t / 10 for t in range(6)], cam: [-0.1, 0.0]}

    def fresh():
        return open_dataset(f"test/{name}", data / name, delta_timestamps=delta, image_transforms=_transforms(),
                            return_uint8=video)

    said: list[str] = []
    first = cache_frames(fresh(), say=said.append, store=tmp_path / "store")
    files = sorted((tmp_path / "store").iterdir())
    assert "decoded in" in said[-1] and sorted(f.suffix for f in files) == [".lock", ".pt"]  # the store + its lock
    store_file = next(f for f in files if f.suffix == ".pt")
    ds = fresh()
    second = cache_frames(ds, say=said.append, store=tmp_path / "store")
    assert f"loaded from {store_file}" in said[-1]
    assert sorted((tmp_path / "store").iterdir()) == files  # nothing new written
    for i in (0, 7, len(ds) - 1):
        _same(second.items[i], first.items[i])
        torch.manual_seed(7 + i)
        want = ds[i]
        torch.manual_seed(7 + i)
        _same(second[i], want)


def test_a_changed_dataset_or_option_is_never_read_from_an_old_store(data, tmp_path):
    base = open_dataset("test/real", data / "real")
    key = fingerprint(base)
    assert key == fingerprint(open_dataset("test/real", data / "real"))
    assert fingerprint(open_dataset("test/real", data / "real", delta_timestamps={"action": [0.0, 0.1]})) != key
    assert fingerprint(open_dataset("test/real", data / "real", episodes=[0, 1])) != key
    copy = tmp_path / "real"
    import shutil

    shutil.copytree(data / "real", copy)
    moved = fingerprint(open_dataset("test/real", copy))
    assert moved != key  # another folder is another dataset
    info = copy / "meta" / "info.json"
    info.write_text(info.read_text() + " ")  # the same dataset, one file rewritten
    assert fingerprint(open_dataset("test/real", copy)) != moved


def test_a_store_inside_the_dataset_folder_is_not_part_of_the_dataset(data, tmp_path):
    import shutil

    shutil.copytree(data / "real", tmp_path / "real")
    said: list[str] = []
    cache_frames(open_dataset("test/real", tmp_path / "real"), say=said.append, store=tmp_path / "real" / ".frames")
    cache_frames(open_dataset("test/real", tmp_path / "real"), say=said.append, store=tmp_path / "real" / ".frames")
    assert "decoded in" in said[0] and "loaded from" in said[1]


def test_an_unreadable_store_is_decoded_again_and_an_unwritable_one_warns(data, tmp_path):
    ds = open_dataset("test/real", data / "real")
    path = store_path(tmp_path / "store", ds, fingerprint(ds))
    path.parent.mkdir()
    path.write_bytes(b"half a file")
    said: list[str] = []
    cached = cache_frames(ds, say=said.append, store=tmp_path / "store")
    assert "cannot be used" in said[0] and "decoded in" in said[1]
    _same(cached.items[3], ds[3])
    assert cache_frames(open_dataset("test/real", data / "real"), store=tmp_path / "store").items[3]["index"] == 3
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store folder should be")
    with pytest.warns(UserWarning, match="could not keep the decoded rows"):
        again = cache_frames(open_dataset("test/real", data / "real"), store=blocked / "store")
    assert len(again) == len(ds)


@pytest.mark.parametrize("video", [False, True])
def test_worker_processes_decode_the_serial_rows(data, monkeypatch, video):
    """The parallel decode (blocks of rows in worker processes, back in order) gives the serial decode's rows bit
    for bit: several blocks and a short last one, time windows, padding, uint8 video frames."""
    from otplug.lerobot import frame_cache

    name, cam = ("sim", HIGH) if video else ("real", TOP)
    ds = open_dataset(f"test/{name}", data / name, delta_timestamps={"action": [t / 10 for t in range(6)],
                                                                        cam: [-0.1, 0.0]}, return_uint8=video)
    monkeypatch.setattr(frame_cache, "DECODE_BLOCK_ROWS", 7)  # 24 or 36 rows: 4 or 6 blocks, the last one short
    serial = frame_cache.decode_rows(ds, 0)
    rng = torch.get_rng_state()
    parallel = frame_cache.decode_rows(ds, 2)
    assert torch.equal(torch.get_rng_state(), rng)  # the training's random draws are those of the serial decode
    assert len(parallel) == len(serial) == len(ds)
    for a, b in zip(parallel, serial, strict=True):
        _same(a, b)


def test_how_many_decode_workers(monkeypatch):
    from otplug.lerobot import frame_cache

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(frame_cache.os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert frame_cache.decode_workers(frame_cache.PARALLEL_MIN_ROWS - 1) == 0  # small: not worth the processes
    assert frame_cache.decode_workers(frame_cache.PARALLEL_MIN_ROWS) == frame_cache.MAX_DECODE_WORKERS
    monkeypatch.setattr(frame_cache.os, "sched_getaffinity", lambda _pid: {3})  # a process pinned to one core
    assert frame_cache.decode_workers(10**6) == 0
    monkeypatch.setattr(frame_cache.os, "sched_getaffinity", lambda _pid: {0, 1})
    assert frame_cache.decode_workers(10**6) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes on these two cores
    assert frame_cache.decode_workers(10**6) == 0


def _cache_in_a_thread_that_waits(data, store):
    """``cache_frames`` of the real dataset in a thread, checked to be waiting for the store's lock after 3 s."""
    import threading

    said: list[str] = []
    out: dict = {}
    waiter = threading.Thread(target=lambda: out.setdefault("cache", cache_frames(
        open_dataset("test/real", data / "real"), say=said.append, store=store)))
    waiter.start()
    waiter.join(timeout=3)
    assert waiter.is_alive() and any("another run is decoding" in m for m in said)
    return waiter, said, out


def test_a_run_that_finds_the_store_locked_waits_and_loads_the_rows(data, tmp_path):
    """Two runs starting on one dataset: the second waits for the first's lock and loads what it stored, instead
    of decoding the same rows again."""
    import fcntl
    import os

    from otplug.atomic import save_file
    from otplug.lerobot.frame_cache import _pack

    ds = open_dataset("test/real", data / "real")
    path = store_path(tmp_path / "store", ds, fingerprint(ds))
    path.parent.mkdir()
    fd = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "the first run" holds the lock while it decodes
    waiter, said, out = _cache_in_a_thread_that_waits(data, tmp_path / "store")
    rows = [ds[i] for i in range(len(ds))]
    save_file(path, lambda tmp: torch.save(_pack(rows), tmp), "the frame cache store")
    os.close(fd)  # the first run is done
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    assert f"loaded from {path}" in said[-1]
    for i in (0, 9, len(ds) - 1):
        _same(out["cache"].items[i], rows[i])


@pytest.mark.slow
def test_a_run_killed_while_decoding_leaves_the_lock_to_the_next(data, tmp_path):
    """A run killed (SIGKILL) while it holds the store's lock: the waiting run goes on and decodes itself, and the
    store it writes is whole."""
    import signal
    import subprocess
    import sys

    ds = open_dataset("test/real", data / "real")
    path = store_path(tmp_path / "store", ds, fingerprint(ds))
    path.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)"),
        str(path.with_name(path.name + ".lock"))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        waiter, said, out = _cache_in_a_thread_that_waits(data, tmp_path / "store")
        holder.send_signal(signal.SIGKILL)
        waiter.join(timeout=60)
        assert not waiter.is_alive() and "decoded in" in said[-1]
    finally:
        holder.kill()
        holder.wait()
    again: list[str] = []
    cached = cache_frames(open_dataset("test/real", data / "real"), say=again.append, store=tmp_path / "store")
    assert f"loaded from {path}" in again[-1]
    _same(cached.items[5], out["cache"].items[5])


def test_store_options_are_checked(tmp_path):
    from otplug.lerobot.train.config import OTSection

    (tmp_path / "f").write_text("x")
    with pytest.raises(OtplugError, match="--ot.frame_cache=disk decodes none"):
        OTSection(frame_cache="disk", frame_cache_dir=str(tmp_path)).validate()
    with pytest.raises(OtplugError, match="--ot.frame_cache_dir: .* is not a folder"):
        OTSection(frame_cache_dir=str(tmp_path / "f")).validate()


def _args(root, out, extra=()):
    return [
        "--dataset.repo_id=test/real", f"--dataset.root={root / 'real'}", "--dataset.video_backend=pyav",
        "--policy.type=act", "--policy.device=cpu", "--policy.pretrained_backbone_weights=null",
        "--policy.dim_model=32", "--policy.n_heads=2", "--policy.dim_feedforward=64", "--policy.n_encoder_layers=1",
        "--policy.n_vae_encoder_layers=1", "--policy.chunk_size=4", "--policy.n_action_steps=4", "--num_workers=0",
        "--batch_size=4", "--log_freq=1", "--save_freq=100", "--seed=3", "--wandb.enable=false",
        f"--output_dir={out}", "--steps=20", "--ot.source_repo_id=test/sim", f"--ot.source_root={root / 'sim'}",
        f"--ot.pair_info={root / 'pair_info.json'}", f"--ot.config={root / 'ot.json'}", "--ot.batch_size=3",
        f'--ot.source_rename_map={{"{HIGH}": "{TOP}"}}', "--ot.bc_source_weight=0.5", "--ot.sinks=[]",
        "--ot.diag_every=0", *extra,
    ]


def _run(root, out, mode, monkeypatch, extra=()):
    """Train 20 steps; return (the digest of every batch the policy saw, the metric rows)."""
    import otplug.lerobot.train.loop as loop
    from otplug.lerobot.train import main

    from otplug.lerobot.train.step import update_policy as real_update

    digests: list[str] = []

    def spy(policy, batch, *a, **k):
        h = hashlib.sha256()
        for key in sorted(batch):
            v = batch[key]
            if isinstance(v, torch.Tensor):
                h.update(key.encode() + str(v.dtype).encode() + v.detach().cpu().contiguous().numpy().tobytes())
        digests.append(h.hexdigest())
        return real_update(policy, batch, *a, **k)

    monkeypatch.setattr(loop, "update_policy", spy)
    assert main(_args(root, out, [f"--ot.frame_cache={mode}", *extra])) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return digests, [r for r in rows if r["step"] > 0]


@pytest.mark.slow
def test_cached_run_is_the_disk_run(data, tmp_path, monkeypatch, capsys):
    """PNG target + video source with another camera name, BC mixture and OT pairs: 20 steps give identical
    batches and identical losses (CPU, deterministic) from the cache and from disk."""
    disk_batches, disk = _run(data, tmp_path / "disk", "disk", monkeypatch)
    assert "frame cache" not in capsys.readouterr().out
    mem_batches, mem = _run(data, tmp_path / "mem", "memory", monkeypatch)
    assert capsys.readouterr().out.count("decoded in") == 2
    assert len(disk_batches) == 20 and disk_batches == mem_batches
    keys = ("loss", "bc_loss", "ot_loss", "ot_pi_sum", "grad_norm")
    assert [[r[k] for k in keys] for r in disk] == [[r[k] for k in keys] for r in mem]
    info = json.loads((tmp_path / "mem" / "run_info.json").read_text())
    assert info["ot"]["frame_cache"] == "memory"


@pytest.mark.slow
def test_a_run_from_the_store_is_the_run_that_decoded(data, tmp_path, monkeypatch, capsys):
    """The second cell of a grid loads both datasets from the store the first wrote, and trains on the same
    batches with the same losses."""
    store = [f"--ot.frame_cache_dir={tmp_path / 'store'}"]
    first_batches, first = _run(data, tmp_path / "a", "memory", monkeypatch, store)
    assert capsys.readouterr().out.count("decoded in") == 2
    second_batches, second = _run(data, tmp_path / "b", "memory", monkeypatch, store)
    assert capsys.readouterr().out.count("loaded from") == 2
    assert first_batches == second_batches
    keys = ("loss", "bc_loss", "ot_loss", "grad_norm")
    assert [[r[k] for k in keys] for r in first] == [[r[k] for k in keys] for r in second]
