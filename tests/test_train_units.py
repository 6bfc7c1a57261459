"""Unit tests of the training pieces: batches, metric window, OT section validation, the step's finiteness guard,
the OT side's row bookkeeping. Small torch modules stand in for a policy where the piece does not need lerobot."""

from __future__ import annotations

import math
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lerobot")

from otplug.errors import OtplugError  # noqa: E402
from otplug.lerobot.train.batches import concat_batches, images_to_float, rows  # noqa: E402
from otplug.lerobot.train.config import OTSection  # noqa: E402
from otplug.lerobot.train.metrics import Window, finite_everywhere, reduce_metrics  # noqa: E402
from otplug.lerobot.train.step import NonFiniteStep, update_policy  # noqa: E402


# -- batches ---------------------------------------------------------------------------------------------------------

def test_images_to_float_converts_uint8_only():
    b = {"cam": torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), "other": torch.full((2,), 255, dtype=torch.uint8),
         "f": torch.ones(2, 3, 4, 4)}
    out = images_to_float(b, ["cam", "f", "missing"])
    assert out["cam"].dtype == torch.float32 and float(out["cam"].max()) == 1.0
    assert out["other"].dtype == torch.uint8  # not a camera key
    assert torch.equal(out["f"], torch.ones(2, 3, 4, 4))  # already float: untouched


def test_collate_rows_leaves_the_step_to_the_batch_unless_storage_differs():
    """Items are never converted: one storage -> the batch keeps uint8 (the loop's per-batch step converts it);
    a camera stored as video (uint8) in one dataset and PNG (float) in another -> its uint8 rows go through the
    step as one batch, giving the values a per-row conversion would."""
    from otplug.lerobot.datasets import collate_rows

    gen = torch.Generator().manual_seed(0)
    u8 = [torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8, generator=gen) for _ in range(3)]
    png = [torch.rand(3, 4, 4, generator=gen) for _ in range(2)]
    same = collate_rows([{"cam": x, "i": torch.tensor(k)} for k, x in enumerate(u8)], ["cam"])
    assert same["cam"].dtype == torch.uint8 and torch.equal(same["cam"], torch.stack(u8))
    items = [{"state": torch.tensor([float(k)]), "cam": x, "part": torch.tensor(k)}
             for k, x in enumerate([u8[0], png[0], u8[1], png[1], u8[2]])]
    out = collate_rows(items, ["cam"])
    assert list(out) == ["state", "cam", "part"]  # the items' key order
    assert out["cam"].dtype == torch.float32 and out["part"].tolist() == [0, 1, 2, 3, 4]
    per_row = torch.stack([images_to_float({"cam": it["cam"]}, ["cam"])["cam"] for it in items])
    assert torch.equal(out["cam"], per_row)
    assert torch.equal(images_to_float(dict(out), ["cam"])["cam"], out["cam"])  # the later step: nothing left


def test_concat_batches_rows_lists_and_errors():
    a = {"x": torch.zeros(2, 3), "task": ["a", "b"], "meta": 7, "only_a": torch.zeros(2)}
    b = {"x": torch.ones(1, 3), "task": ["c"], "meta": 8}
    out = concat_batches([a, b])
    assert out["x"].shape == (3, 3) and out["x"][2].sum() == 3
    assert out["task"] == ["a", "b", "c"] and out["meta"] == 7 and "only_a" not in out
    with pytest.raises(OtplugError, match=r"'only_a'.*missing"):
        concat_batches([a, b], required=["only_a"])
    with pytest.raises(OtplugError, match="different shapes"):
        concat_batches([a, {"x": torch.ones(1, 4)}])
    # a uint8 part beside a float part would be promoted silently (the 255x image bug): refused
    with pytest.raises(OtplugError, match="different dtypes"):
        concat_batches([{"x": torch.zeros(1, 3)}, {"x": torch.zeros(1, 3, dtype=torch.uint8)}])


def test_rows_keeps_only_present_keys():
    batch = {"a": torch.arange(6), "a_is_pad": torch.zeros(6, dtype=torch.bool)}
    got = rows(batch, ["a", "a_is_pad", "b_is_pad"], slice(2, 4))
    assert set(got) == {"a", "a_is_pad"} and got["a"].tolist() == [2, 3]


def test_resume_lists_become_json():
    from otplug.lerobot.train.cli import _json_lists

    assert _json_lists(["--ot.sinks=[console, plan-heatmap]", "--ot.sinks=[]", '--a=["x"]', "--steps=3", "[x]"]) == [
        '--ot.sinks=["console", "plan-heatmap"]', "--ot.sinks=[]", '--a=["x"]', "--steps=3", "[x]"]


# -- metrics ---------------------------------------------------------------------------------------------------------

def test_window_means_sums_counters_and_skips_non_numbers():
    w = Window()
    w.add({"loss": 1.0, "skipped_steps": 1.0, "flag": True, "name": "x"})
    w.add({"loss": 3.0, "skipped_steps": 1.0})
    w.add({"ot_loss": 5.0, "skipped_steps": 0.0})
    m = w.means()
    assert m == {"loss": 2.0, "skipped_steps": 2.0, "ot_loss": 5.0}
    w.reset()
    assert w.means() == {}


def test_single_process_reduction_and_vote_are_local():
    assert reduce_metrics({"a": 1.0}, None) == {"a": 1.0}
    assert finite_everywhere(1.0, None) and not finite_everywhere(math.nan, None)


# -- the ot section --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value", "msg"), [
    ("layout", "singlepass", "--ot.layout: must be one of 'single-pass', 'separate', got 'singlepass'"),
    ("scope", "world", "--ot.scope / --ot-scope: must be one of"),
    ("capture_fallback", "maybe", "--ot.capture_fallback"),
    ("weighting", "softmax", "--ot.weighting"),
    ("on_nonfinite", "ignore", "--ot.on_nonfinite: must be one of 'stop', 'skip', got 'ignore'"),
    ("lambda_ot", -0.1, "--ot.lambda_ot: must be >= 0, got -0.1"),
    ("lambda_ot", math.inf, "--ot.lambda_ot"),
    ("batch_size", 0, "--ot.batch_size: must be an integer >= 1, got 0"),
    ("log_every", -1, "--ot.log_every: must be an integer >= 1, got -1"),
    ("plan_every", 0, "--ot.plan_every"),
    ("top_k", 0, "--ot.top_k"),
    ("window_size", -2, "--ot.window_size"),
    ("sharpness", -1.0, "--ot.sharpness"),
    ("sinks", "console", "--ot.sinks must be a list"),
    ("bc_source_weight", 1.5, "--ot.bc_source_weight: must be a number in [0, 1], got 1.5"),
    ("frame_cache", "ram", "--ot.frame_cache: must be one of 'auto', 'memory', 'disk', got 'ram'"),
    ("optimizer_impl", "adam", "--ot.optimizer_impl: must be one of 'lerobot', 'foreach', 'fused', got 'adam'"),
    ("batch_size", True, "--ot.batch_size: expected an integer, got bool True"),
    ("source_rename_map", {"observation.images.top": ""}, "--ot.source_rename_map: must map source feature names "
     "to target feature names, e.g. {\"observation.images.cam_high\": \"observation.images.top\"}, got "),
])
def test_ot_section_rejects_with_the_option_name(field, value, msg):
    sec = OTSection(enabled=False)
    setattr(sec, field, value)
    with pytest.raises(OtplugError, match=re.escape(msg)):
        sec.validate()


def test_ot_section_requires_its_inputs_and_parses_the_config_once(tmp_path):
    sec = OTSection()
    with pytest.raises(OtplugError, match="--ot.source_repo_id, --ot.pair_info, --ot.config are not set"):
        sec.validate()
    pair_info = tmp_path / "p.json"
    pair_info.write_text("{}")
    cfg = tmp_path / "ot.toml"
    cfg.write_text('[[terms]]\ntype = "label"\nsrc_key = "observation.state"\n')
    sec = OTSection(source_repo_id="s", pair_info=str(pair_info), config=str(cfg))
    sec.validate()
    assert sec.has_loss and sec.loss_config is not None and sec.loss_config.terms[0].name
    abl = OTSection(source_repo_id="s", pair_info=str(pair_info), cotrain_only=True)
    abl.validate()
    assert abl.active and not abl.has_loss and abl.loss_config is None
    with pytest.raises(OtplugError, match="--ot.cotrain_only needs --ot.layout=single-pass"):
        OTSection(source_repo_id="s", pair_info=str(pair_info), cotrain_only=True, layout="separate").validate()
    with pytest.raises(OtplugError, match="--dataset.root: no such directory"):
        OTSection(source_repo_id="s", pair_info=str(pair_info), config=str(cfg)).validate(dataset_root=tmp_path / "no")


# -- the step --------------------------------------------------------------------------------------------------------

class _Acc:
    """The part of accelerate's Accelerator the step uses, for one process."""

    num_processes = 1
    device = torch.device("cpu")

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, clip):
        return torch.nn.utils.clip_grad_norm_(params, clip)

    def unwrap_model(self, model, keep_fp32_wrapper=True):
        return model


class _Policy(torch.nn.Module):
    def __init__(self, poison: bool = False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.poison = poison

    def forward(self, batch):
        x = batch["x"]
        if self.poison:  # finite loss, NaN gradient: sqrt at 0
            return (self.w * 0).abs().sqrt().sum() * 0 + (x * self.w).sum() * torch.sqrt(torch.zeros(())), {}
        return (x * self.w).sum(), {"extra": 1.5}


def _step(policy, on_nonfinite):
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    return opt, update_policy(policy, {"x": torch.ones(2, 3)}, 0, optimizer=opt, lr_scheduler=None,
                              accelerator=_Acc(), grad_clip_norm=0.0, ot_side=None, lambda_ot=0.1,
                              on_nonfinite=on_nonfinite, step=7)


def test_step_updates_and_reports():
    pol = _Policy()
    _, res = _step(pol, "stop")
    assert not res.skipped and res.metrics["skipped_steps"] == 0 and res.metrics["extra"] == 1.5
    assert res.metrics["grad_norm"] == pytest.approx(math.sqrt(3 * 4))
    assert torch.allclose(pol.w.detach(), torch.full((3,), 0.8))


def test_nonfinite_gradient_never_reaches_the_weights():
    pol = _Policy(poison=True)
    with pytest.raises(NonFiniteStep, match="step 7: non-finite loss or gradient"):
        _step(pol, "stop")
    assert torch.equal(pol.w.detach(), torch.ones(3)) and (pol.w.grad is None or not pol.w.grad.abs().sum())
    _, res = _step(pol, "skip")
    assert res.skipped and res.metrics["skipped_steps"] == 1
    assert torch.equal(pol.w.detach(), torch.ones(3))


# -- --ot.optimizer_impl ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_optimizer_impl_is_the_same_update_up_to_rounding(impl):
    """foreach/fused AdamW (lerobot's optimizer, two param groups) follow the per-parameter loop to float32 rounding
    over 20 steps; ``lerobot`` restores torch's defaults (what lerobot-train builds), also over a loaded state."""
    import torch

    from otplug.lerobot.train.setup import set_optimizer_impl

    def run(impl_name):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        opt = torch.optim.AdamW([{"params": net[0].parameters(), "lr": 1e-3},
                                 {"params": net[2].parameters(), "lr": 3e-4}], weight_decay=1e-2)
        set_optimizer_impl(opt, impl_name)
        x, y = torch.randn(32, 6), torch.randn(32, 3)
        start = torch.cat([p.detach().flatten() for p in net.parameters()])
        for _ in range(20):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        end = torch.cat([p.detach().flatten() for p in net.parameters()])
        assert (end - start).abs().max() > 1e-3  # 20 steps moved the weights
        return opt, end

    ref_opt, ref = run("lerobot")
    opt, got = run(impl)
    assert {(g["foreach"], g["fused"]) for g in opt.param_groups} == {(True, None) if impl == "foreach" else (None, True)}
    assert {(g["foreach"], g["fused"]) for g in ref_opt.param_groups} == {(None, None)}
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    ref_opt.load_state_dict(opt.state_dict())  # a checkpoint written by a fused run ...
    set_optimizer_impl(ref_opt, "lerobot")     # ... resumed without the flag trains as lerobot-train does
    assert {(g["foreach"], g["fused"]) for g in ref_opt.param_groups} == {(None, None)}


def test_optimizer_impl_refuses_an_optimizer_without_the_flags():
    from otplug.errors import OtplugError
    from otplug.lerobot.train.setup import set_optimizer_impl

    class Custom:
        param_groups = [{"lr": 1.0, "params": []}]

    set_optimizer_impl(Custom(), "lerobot")  # nothing to do
    with pytest.raises(OtplugError, match="--ot.optimizer_impl=fused: Custom has no foreach/fused"):
        set_optimizer_impl(Custom(), "fused")


def test_rename_map_mistake_reads_the_same_in_a_sources_file(tmp_path):
    """One validator (otplug.validators.rename_map) for the option and for a sources file's entries."""
    import json

    from otplug.lerobot.sources import read_sources_file
    from otplug.validators import rename_map

    bad = {"observation.images.top": 3}
    path = tmp_path / "sources.json"
    path.write_text(json.dumps({"sources": [{"root": str(tmp_path), "rename_map": bad}]}))
    with pytest.raises(OtplugError) as err:
        read_sources_file(str(path))
    with pytest.raises(ValueError) as direct:
        rename_map(None, None, bad)
    assert direct.value.args[0] in str(err.value) and "rename_map" in str(err.value)
