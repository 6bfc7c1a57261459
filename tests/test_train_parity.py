"""With OT off, `otplug train` is `lerobot-train`: same losses and gradient norms, step by step."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("lerobot")
pytest.importorskip("accelerate")

from otplug.lerobot.synthetic import make_dataset  # noqa: E402

STEPS = 4


def _common(root):
    return [
        "--dataset.repo_id=test/parity", f"--dataset.root={root}", "--policy.type=act", "--policy.device=cpu",
        "--policy.pretrained_backbone_weights=null", "--policy.push_to_hub=false", "--policy.dim_model=32",
        "--policy.n_heads=2", "--policy.dim_feedforward=64", "--policy.n_encoder_layers=1",
        "--policy.n_vae_encoder_layers=1", "--policy.chunk_size=5", "--policy.n_action_steps=5", "--num_workers=0",
        "--batch_size=4", f"--steps={STEPS}", "--log_freq=1", "--save_freq=1000", "--seed=3", "--wandb.enable=false",
    ]


def _run_lerobot_train(args, monkeypatch):
    from lerobot.scripts import lerobot_train

    seen = []
    original = lerobot_train.update_policy

    def recording(train_metrics, *a, **kw):
        out = original(train_metrics, *a, **kw)
        seen.append((train_metrics.loss.val, train_metrics.grad_norm.val))
        return out

    monkeypatch.setattr(lerobot_train, "update_policy", recording)
    monkeypatch.setattr(sys, "argv", ["lerobot-train", *args])
    lerobot_train.train()
    return seen


@pytest.mark.slow
def test_ot_off_reproduces_lerobot_train(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "ds"
    make_dataset(root, repo_id="test/parity", episode_lengths=(12, 14, 10), image_size=32)
    args = _common(root)

    from otplug.lerobot.train import main

    assert main([*args, f"--output_dir={tmp_path / 'ours'}", "--ot.enabled=false", "--ot.sinks=[]"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "ours" / "metrics.jsonl").read_text().splitlines()]
    ours = [(r["bc_loss"], r["grad_norm"]) for r in rows]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert "ot_loss" not in rows[0]

    theirs = _run_lerobot_train([*args, f"--output_dir={tmp_path / 'lerobot'}"], monkeypatch)
    assert len(theirs) == STEPS
    for step, ((l1, g1), (l2, g2)) in enumerate(zip(ours, theirs, strict=True), 1):
        assert l1 == l2, f"loss differs at step {step}: {l1!r} vs {l2!r}"
        assert g1 == g2, f"grad norm differs at step {step}: {g1!r} vs {g2!r}"
    # the checkpoints are lerobot's format
    assert (tmp_path / "ours" / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").exists()
