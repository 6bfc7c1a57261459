"""Cross-dataloader alignment policies (SPEC §5)."""

from __future__ import annotations

import logging

import pytest
import torch

from otplug.errors import OtplugError
from otplug.lerobot.align import AlignmentError, RankAlignment, StrictAlignment

CPU = torch.device("cpu")


def reference(b: int = 4) -> dict:
    return {
        "observation.state": torch.zeros(b, 1, 3),
        "observation.environment_state": torch.zeros(b, 5),
        "observation.images.front": torch.zeros(b, 3, 8, 8),
        "action": torch.zeros(b, 10, 2),
        "action_is_pad": torch.zeros(b, 10, dtype=torch.bool),
        "task": ["t"] * b,
    }


def test_rank_adds_and_removes_a_size_one_time_axis():
    ot = {
        "observation.state": torch.arange(6.0).reshape(2, 3),  # (B, D) -> (B, 1, D)
        "observation.environment_state": torch.ones(2, 1, 5),  # (B, 1, D) -> (B, D)
        "observation.images.front": torch.rand(2, 3, 8, 8),
        "action": torch.zeros(2, 10, 2),
        "action_is_pad": torch.zeros(2, 10, dtype=torch.bool),
        "task": ["t", "t"],
    }
    out = RankAlignment()(ot, reference(), CPU)
    assert out["observation.state"].shape == (2, 1, 3)
    assert torch.equal(out["observation.state"][:, 0], ot["observation.state"])
    assert out["observation.environment_state"].shape == (2, 5)
    assert out["observation.images.front"] is ot["observation.images.front"]
    assert out["task"] == ["t", "t"]
    assert ot["observation.state"].shape == (2, 3)  # input not modified
    assert out is not ot


def test_rank_never_repeats_steps():
    ref = reference()
    with pytest.raises(AlignmentError, match=r"'action'.*\(2, 2\).*\(4, 10, 2\).*never repeats"):
        RankAlignment()({"action": torch.zeros(2, 2)}, ref, CPU)
    with pytest.raises(AlignmentError, match="observation.state"):
        RankAlignment()({"observation.state": torch.zeros(2, 4, 3)}, ref, CPU)


def test_images_are_never_aligned():
    ref = reference()
    with pytest.raises(AlignmentError) as err:
        RankAlignment()({"observation.images.front": torch.zeros(2, 1, 3, 8, 8)}, ref, CPU)
    msg = str(err.value)
    assert "observation.images.front" in msg and "(2, 1, 3, 8, 8)" in msg and "(4, 3, 8, 8)" in msg
    assert "image" in msg
    assert isinstance(err.value, OtplugError)


def test_only_whitelisted_keys_are_rank_aligned():
    ref = {"observation.other": torch.zeros(4, 1, 3)}
    with pytest.raises(AlignmentError, match="not a whitelisted vector key"):
        RankAlignment()({"observation.other": torch.zeros(2, 3)}, ref, CPU)
    # a custom whitelist
    out = RankAlignment(vector_keys=["observation.other"])({"observation.other": torch.zeros(2, 3)}, ref, CPU)
    assert out["observation.other"].shape == (2, 1, 3)


def test_missing_action_is_pad_is_filled_with_false():
    ref = reference()
    out = RankAlignment()({"action": torch.ones(3, 10, 2)}, ref, CPU)
    assert out["action_is_pad"].dtype == torch.bool and out["action_is_pad"].shape == (3, 10)
    assert not out["action_is_pad"].any()
    # without a reference mask: from a (B, S, D) action
    out = RankAlignment()({"action": torch.ones(3, 7, 2)}, {}, CPU)
    assert out["action_is_pad"].shape == (3, 7)
    # a 2-D action without a reference mask gets none
    assert "action_is_pad" not in RankAlignment()({"action": torch.ones(3, 2)}, {}, CPU)
    # an existing mask is kept
    pad = torch.ones(3, 10, dtype=torch.bool)
    assert RankAlignment()({"action": torch.ones(3, 10, 2), "action_is_pad": pad}, ref, CPU)["action_is_pad"] is pad
    # a 1-step action with a (B,) mask: both get the time axis
    ref1 = {"action": torch.zeros(4, 1, 2), "action_is_pad": torch.zeros(4, 1, dtype=torch.bool)}
    out = RankAlignment()({"action": torch.ones(3, 2), "action_is_pad": torch.zeros(3, dtype=torch.bool)}, ref1, CPU)
    assert out["action"].shape == (3, 1, 2) and out["action_is_pad"].shape == (3, 1)
    with pytest.raises(AlignmentError, match="action_is_pad"):
        RankAlignment()({"action": torch.ones(3, 5, 2)}, {"action_is_pad": torch.zeros(4, 10, dtype=torch.bool)}, CPU)


def test_tensors_move_to_the_device():
    # "meta" is a device every machine has; it proves a move happened without needing a GPU
    meta = torch.device("meta")
    out = RankAlignment()({"observation.state": torch.zeros(2, 3), "action": torch.zeros(2, 10, 2)},
                          reference(), meta)
    assert all(v.device == meta for v in out.values())
    out = StrictAlignment()({"observation.images.front": torch.zeros(2, 3, 8, 8)}, reference(), meta)
    assert out["observation.images.front"].device == meta


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_move():
    out = RankAlignment()({"observation.state": torch.zeros(2, 3)}, reference(), torch.device("cuda"))
    assert out["observation.state"].is_cuda


def test_at_most_eight_debug_lines_the_first_time(caplog):
    keys = ["action", "observation.state", "observation.environment_state"]
    policy = RankAlignment(vector_keys=keys + [f"k{i}" for i in range(12)])
    ref = {f"k{i}": torch.zeros(4, 1, 2) for i in range(12)}
    ot = {f"k{i}": torch.zeros(2, 2) for i in range(12)}
    ot["action"] = torch.zeros(2, 3, 2)
    with caplog.at_level(logging.DEBUG, logger="otplug.align"):
        policy(ot, ref, torch.device("meta"))
        first = [r for r in caplog.records if r.name == "otplug.align"]
        assert 1 <= len(first) <= 8
        assert "more" in first[-1].getMessage()
        policy(ot, ref, torch.device("meta"))
        assert len([r for r in caplog.records if r.name == "otplug.align"]) == len(first)


def test_nothing_to_do_logs_nothing(caplog):
    policy = RankAlignment()
    ref = reference()
    with caplog.at_level(logging.DEBUG, logger="otplug.align"):
        policy({"action": torch.zeros(2, 10, 2), "action_is_pad": torch.zeros(2, 10, dtype=torch.bool)}, ref, CPU)
    assert not [r for r in caplog.records if r.name == "otplug.align"]


def test_strict_rejects_any_mismatch():
    ref = reference()
    ok = StrictAlignment()({"action": torch.zeros(2, 10, 2), "action_is_pad": torch.zeros(2, 10, dtype=torch.bool),
                            "observation.state": torch.zeros(7, 1, 3)}, ref, CPU)
    assert ok["observation.state"].shape == (7, 1, 3)
    with pytest.raises(AlignmentError, match=r"'observation.state'.*\(2, 3\).*\(4, 1, 3\)"):
        StrictAlignment()({"observation.state": torch.zeros(2, 3)}, ref, CPU)
    with pytest.raises(AlignmentError, match="action_is_pad"):
        StrictAlignment()({"action": torch.zeros(2, 10, 2)}, ref, CPU)


def test_registered_factories_resolve():
    from otplug.builtin.alignment import otplug_alignment_policies
    from importlib import import_module

    for rec in otplug_alignment_policies():
        mod, _, attr = rec.factory.partition(":")
        policy = getattr(import_module(mod), attr)()
        assert callable(policy)
    names = {r.name for r in otplug_alignment_policies()}
    assert names == {"rank", "strict"}
