"""otplug.config: the seed and native formats, strict validation with paths, dump/describe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import otplug
from otplug.config import OTConfig, TermSpec, describe_config, dump_config, load_config
from otplug.errors import ConfigError
from otplug.terms.configs import ActionSliceConfig, EmbeddingConfig, ImageConfig, LabelConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "configs"
EXAMPLES = ROOT / "examples" / "configs"


def camera(name: str) -> dict:
    key = f"observation.images.{name}"
    return {"src_key": key, "tgt_key": key, "use_learned_embed": True, "weight_embed": 1.0, "weight_label": 0.0,
            "term_weight": 0.3333, "term_name": f"img_{name}"}


SEED = {
    "features": [
        camera("ee_cam_color"),
        camera("left_cam_color"),
        camera("right_cam_color"),
        {"src_key": "action", "tgt_key": "action", "dim_slice": [0, 8], "use_learned_embed": False,
         "weight_label": 0.1, "term_weight": 0.1, "term_name": "action"},
    ],
    "reg": 0.01,
    "tau_src": 0.01,
    "tau_tgt": 0.01,
    "heuristic": False,
}


def problems(config) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(config)
    return dict(info.value.problems)


def native(*terms: dict, **top) -> dict:
    return {"terms": list(terms), **top}


# -- seed format -----------------------------------------------------------------------------------------
def test_seed_three_camera_example_maps_to_native_terms():
    cfg = load_config(SEED)
    assert [t.name for t in cfg.terms] == ["img_ee_cam_color", "img_left_cam_color", "img_right_cam_color", "action"]
    cam = cfg.terms[0]
    assert cam.type == "embedding" and cam.weight == 0.3333
    assert cam.options == EmbeddingConfig(src_key="observation.images.ee_cam_color",
                                          tgt_key="observation.images.ee_cam_color", weight_embed=1.0, weight_label=0.0)
    act = cfg.terms[3]
    assert act.type == "label" and act.weight == 0.1
    assert act.options == LabelConfig(src_key="action", tgt_key="action", dim_slice=(0, 8), weight_label=0.1)
    assert (cfg.reg, cfg.tau_src, cfg.tau_tgt, cfg.heuristic) == (0.01, 0.01, 0.01, False)
    assert cfg.solver == "sinkhorn" and cfg.solver_options is not None


def test_seed_example_file_validates():
    cfg = load_config(EXAMPLES / "seed_three_cameras.json")
    assert len(cfg.terms) == 4 and cfg.source.endswith("seed_three_cameras.json")
    assert sum(t.weight for t in cfg.terms[:3]) == pytest.approx(0.9999)


def test_seed_defaults():
    cfg = load_config({"features": [{"src_key": "observation.state"}]})
    (term,) = cfg.terms
    assert term.name == "observation.state" and term.weight == 1.0 and term.type == "label"
    assert term.options == LabelConfig(src_key="observation.state", weight_label=1.0)
    assert term.options.target_key == "observation.state"
    assert (cfg.reg, cfg.tau_src, cfg.tau_tgt, cfg.heuristic) == (0.01, 0.01, 0.01, False)
    # the seed's embedding default weight_label is 1 (not the native EmbeddingConfig default 0)
    cfg = load_config({"features": [{"src_key": "x", "use_learned_embed": True}]})
    assert cfg.terms[0].options == EmbeddingConfig(src_key="x", weight_embed=1.0, weight_label=1.0)


def test_seed_term_weight_is_read():
    cfg = load_config({"features": [{"src_key": "a", "term_weight": 2.5}, {"src_key": "b", "term_weight": 3}]})
    assert [t.weight for t in cfg.terms] == [2.5, 3.0]
    assert isinstance(cfg.terms[1].weight, float)


def test_seed_weight_embed_ignored_without_learned_embed():
    cfg = load_config({"features": [{"src_key": "a", "weight_embed": 7.0, "embed_name": "e", "weight_label": 2.0}]})
    assert cfg.terms[0].options == LabelConfig(src_key="a", weight_label=2.0)


def test_seed_errors_have_feature_paths():
    got = problems({"features": [
        {"src_key": "a", "dim_slice": [8, 0]},
        {"src_key": "b", "term_weight": -1},
        {"src_key": "c", "weight_label": 0},
        {"src_key": "d", "use_learned_embed": True, "weight_embed": 0, "weight_label": 0},
        {"src_key": "e", "term_weigth": 1},
        {"tgt_key": "f"},
        {"src_key": "g", "term_weight": 0},
        {"src_key": "h", "use_learned_embed": "true"},
    ]})
    assert "start < stop" in got["features[0].dim_slice"]
    assert "must be > 0" in got["features[1].term_weight"]
    assert "contributes nothing" in got["features[2]"] and "weight_label is 0" in got["features[2]"]
    assert "contributes nothing" in got["features[3]"]
    assert "did you mean 'term_weight'" in got["features[4].term_weigth"]
    assert got["features[5].src_key"] == "missing required key"
    assert "contributes nothing" in got["features[6].term_weight"]
    assert "expected true or false" in got["features[7].use_learned_embed"]


def test_seed_duplicate_term_names_rejected():
    got = problems({"features": [{"src_key": "a"}, {"src_key": "b", "term_name": "a"}, {"src_key": "a"}]})
    assert "duplicate term name 'a' (also features[0])" in got["features[1].term_name"]
    assert "term_name defaults to src_key" in got["features[2].term_name"]


def test_features_and_terms_together_is_an_error():
    got = problems({"features": [{"src_key": "a"}], "terms": [{"type": "label", "src_key": "a"}]})
    assert "not both" in got[""]


def test_seed_accepts_native_top_level_keys():
    cfg = load_config({"features": [{"src_key": "a"}], "solver": "pot", "solver_options": {"max_iter": 10}})
    assert cfg.solver == "pot" and cfg.solver_options.max_iter == 10


# -- native format ---------------------------------------------------------------------------------------
def test_native_all_fields_toml():
    cfg = load_config(DATA / "native_all_fields.toml")
    assert (cfg.reg, cfg.tau_src, cfg.tau_tgt, cfg.heuristic) == (0.05, 0.2, 0.3, True)
    assert (cfg.solver, cfg.time_reduce, cfg.cost_normalization, cfg.on_collapse) == ("pot", "mean", "max", "raise")
    assert (cfg.solver_options.max_iter, cfg.solver_options.tol) == (200, 1e-5)
    state, emb = cfg.terms
    assert state == TermSpec(type="label", name="state", weight=2.0, time_reduce="last",
                             options=LabelConfig(src_key="observation.state", tgt_key="observation.state_real",
                                                 dim_slice=(1, 4), weight_label=0.5))
    assert emb.name == "embedding" and emb.weight == 1.0 and emb.time_reduce is None
    assert emb.options == EmbeddingConfig(src_key="observation.images.front", embed_name="front", weight_embed=1.5)
    assert cfg.time_reduce_for(state) == "last" and cfg.time_reduce_for(emb) == "mean"


@pytest.mark.parametrize("name", ["native.toml", "native.yaml", "seed_three_cameras.json"])
def test_examples_validate(name):
    cfg = load_config(EXAMPLES / name)
    assert cfg.terms and load_config(dump_config(cfg)) == cfg


def test_same_config_in_json_toml_yaml(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(native(
        {"type": "image", "name": "cam", "src_key": "observation.images.top", "weight": 0.5},
        {"type": "action-slice", "dim_slice": [0, 8]}, reg=0.1)))
    (tmp_path / "c.toml").write_text(
        'reg = 0.1\n[[terms]]\ntype = "image"\nname = "cam"\nsrc_key = "observation.images.top"\nweight = 0.5\n'
        '[[terms]]\ntype = "action-slice"\ndim_slice = [0, 8]\n')
    (tmp_path / "c.yaml").write_text(
        "reg: 0.1\nterms:\n  - {type: image, name: cam, src_key: observation.images.top, weight: 0.5}\n"
        "  - type: action-slice\n    dim_slice: [0, 8]\n")
    cfgs = [load_config(tmp_path / f"c.{ext}") for ext in ("json", "toml", "yaml")]
    assert cfgs[0] == cfgs[1] == cfgs[2]
    assert cfgs[0].terms[0].options == ImageConfig(src_key="observation.images.top")
    assert cfgs[0].terms[1].options == ActionSliceConfig(dim_slice=(0, 8))


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("reg: 1e-3\nterms:\n  - {type: label, src_key: a}\n")
    assert load_config(path).reg == 1e-3


def test_native_term_name_defaults_to_type_and_must_be_unique():
    cfg = load_config(native({"type": "label", "src_key": "a"}))
    assert cfg.terms[0].name == "label"
    got = problems(native({"type": "label", "src_key": "a"}, {"type": "label", "src_key": "b"}))
    assert "duplicate term name 'label'" in got["terms[1].name"]
    assert "own `name`" in got["terms[1].name"]


def test_every_problem_is_listed_with_its_path():
    got = problems(DATA / "bad_many.yaml")
    assert set(got) == {
        "cost_normalisation", "reg", "tau_src", "heuristic", "solver", "terms[0].type", "terms[1].weight_lable",
        "terms[1].src_key", "terms[1].dim_slice", "terms[2].weight_label", "terms[2].name",
    }
    assert "did you mean 'cost_normalization'" in got["cost_normalisation"]
    assert got["reg"] == "must be > 0, got 0.0"
    assert "did you mean 'sinkhorn'" in got["solver"]
    assert "did you mean 'label'" in got["terms[0].type"]
    assert "did you mean 'weight_label'" in got["terms[1].weight_lable"]
    assert got["terms[1].src_key"] == "expected a string, got int 3"
    assert "needs start < stop" in got["terms[1].dim_slice"]
    assert "finite" in got["terms[2].weight_label"]


@pytest.mark.parametrize(
    ("top", "path", "fragment"),
    [
        ({"reg": "0.01"}, "reg", "expected a number, got str '0.01'"),
        ({"reg": True}, "reg", "expected a number, got bool True"),
        ({"reg": float("inf")}, "reg", "finite"),
        ({"reg": -0.5}, "reg", "must be > 0"),
        ({"tau_src": 0}, "tau_src", "must be > 0"),
        ({"tau_tgt": None}, "tau_tgt", "expected a number, got null"),
        ({"heuristic": 1}, "heuristic", "expected true or false"),
        ({"heuristic": "false"}, "heuristic", "expected true or false"),
        ({"solver": "pott"}, "solver", "did you mean 'pot'"),
        ({"time_reduce": "flaten"}, "time_reduce", "did you mean 'flatten'"),
        ({"cost_normalization": "sum"}, "cost_normalization", "must be one of 'none', 'mean', 'max'"),
        ({"on_collapse": "ignore"}, "on_collapse", "must be one of 'warn', 'raise', 'uniform'"),
        ({"solver_options": {"max_iter": 1.5}}, "solver_options.max_iter", "expected an integer"),
        ({"solver_options": {"max_itr": 5}}, "solver_options.max_itr", "did you mean 'max_iter'"),
        ({"solver_options": 3}, "solver_options", "expected a table"),
        ({"solver": "pot", "solver_options": {"tol": -1}}, "solver_options.tol", "> 0"),
        ({"regg": 1}, "regg", "did you mean 'reg'"),
    ],
)
def test_top_level_errors(top, path, fragment):
    got = problems(native({"type": "label", "src_key": "a"}, **top))
    assert fragment in got[path], got


@pytest.mark.parametrize(
    ("term", "path", "fragment"),
    [
        ({"type": "label", "src_key": "a", "dim_slice": [0]}, "dim_slice", "must be [start, stop]"),
        ({"type": "label", "src_key": "a", "dim_slice": [2, 2]}, "dim_slice", "start < stop"),
        ({"type": "label", "src_key": "a", "dim_slice": [-1, 2]}, "dim_slice", "no negative indices"),
        ({"type": "label", "src_key": "a", "dim_slice": [0.0, 2]}, "dim_slice[0]", "expected an integer"),
        ({"type": "label", "src_key": "a", "dim_slice": [True, 2]}, "dim_slice[0]", "expected an integer"),
        ({"type": "label", "src_key": "a", "dim_slice": "0:8"}, "dim_slice", "expected a list"),
        ({"type": "label", "src_key": "a", "weight_label": -1}, "weight_label", ">= 0"),
        ({"type": "label", "src_key": "a", "weight_label": "1"}, "weight_label", "got str '1'"),
        ({"type": "label", "src_key": "a", "weight": 0}, "weight", "contributes nothing"),
        ({"type": "label", "src_key": "a", "weight": -2}, "weight", "must be > 0"),
        ({"type": "label", "src_key": "a", "name": ""}, "name", "non-empty"),
        ({"type": "label", "src_key": ""}, "src_key", "non-empty batch key"),
        ({"type": "label"}, "src_key", "missing required key"),
        ({"src_key": "a"}, "type", "missing required key"),
        ({"type": 3, "src_key": "a"}, "type", "expected a string"),
        ({"type": "lable", "src_key": "a"}, "type", "did you mean 'label'"),
        ({"type": "label", "src_key": "a", "time_reduce": "lats"}, "time_reduce", "did you mean 'last'"),
        ({"type": "label", "src_key": "a", "embed_name": "x"}, "embed_name", "unknown key 'embed_name'"),
        ({"type": "embedding", "src_key": "a", "weight_embed": 0}, "", "contributes nothing"),
        ({"type": "image", "src_key": "observation.images.a", "use_learned_embed": False}, "",
         "use_learned_embed = false"),
        ({"type": "image", "src_key": "observation.state"}, "src_key", "must be a camera key"),
        ({"type": "image", "src_key": "observation.images.a", "tgt_key": "a"}, "tgt_key", "must be a camera key"),
    ],
)
def test_term_errors(term, path, fragment):
    got = problems(native({"type": "label", "name": "ok", "src_key": "b"}, term))
    key = "terms[1]" + (f".{path}" if path and not path.startswith("[") else path)
    assert fragment in got[key], got
    assert not any(p.startswith("terms[0]") for p in got)


@pytest.mark.parametrize(
    ("config", "path", "fragment"),
    [
        ({}, "terms", "at least one cost term"),
        ({"terms": []}, "terms", "is empty"),
        ({"terms": {"type": "label"}}, "terms", "expected a list"),
        ({"terms": ["label"]}, "terms[0]", "expected a term table"),
        ({"features": []}, "features", "is empty"),
        ({"features": [3]}, "features[0]", "expected a table"),
    ],
)
def test_structure_errors(config, path, fragment):
    assert fragment in problems(config)[path]


def test_load_config_passes_otconfig_through_and_rejects_other_types():
    cfg = load_config(SEED)
    assert load_config(cfg) is cfg
    with pytest.raises(TypeError):
        load_config(42)
    assert otplug.load_config is load_config


def test_configerror_is_readable():
    with pytest.raises(ConfigError) as info:
        load_config(native({"type": "label", "src_key": "a", "weight": 0}, reg=0))
    text = str(info.value)
    assert text.startswith("invalid otplug config (2 problems):")
    assert "\n  reg: must be > 0, got 0.0" in text and "\n  terms[0].weight: is 0" in text


# -- a third-party term brings its own config class -----------------------------------------------------
@attrs.frozen(kw_only=True)
class Window:
    start: int = 0
    stop: int = attrs.field(default=1)

    @stop.validator
    def _check(self, attribute, value):
        if value <= self.start:
            raise ValueError(f"must be > start ({self.start}), got {value}")


def _scale(instance, attribute, value):
    if value > 10:
        raise ValueError(f"is too large: at most 10, got {value}")


@attrs.frozen(kw_only=True)
class FancyConfig:
    key: str
    scale: float = attrs.field(default=1.0, validator=_scale)
    mode: Literal["fast", "exact"] = "fast"
    channels: tuple[int, ...] = ()
    window: Window = Window()
    extra: dict[str, float] = attrs.field(factory=dict)

    def contributes(self) -> bool:
        return self.scale > 0


class FancyPlugin:
    @otplug.hookimpl
    def otplug_cost_terms(self):
        return [otplug.CostTerm(name="fancy", factory="nowhere:Fancy", config_cls=FancyConfig, summary="test term")]


def test_third_party_term_config_structures_strictly(otplug_registry):
    otplug_registry.register(FancyPlugin(), name="fancy-plugin")
    cfg = load_config(native({"type": "fancy", "key": "observation.state", "scale": 2, "mode": "exact",
                              "channels": [1, 2], "window": {"start": 1, "stop": 3}, "extra": {"a": 1}}))
    opts = cfg.terms[0].options
    assert opts == FancyConfig(key="observation.state", scale=2.0, mode="exact", channels=(1, 2),
                               window=Window(start=1, stop=3), extra={"a": 1.0})
    assert isinstance(opts.scale, float)
    assert load_config(dump_config(cfg)) == cfg

    got = problems(native({"type": "fancy", "key": 1, "scale": 11, "mode": "fats", "channels": ["1"],
                           "window": {"start": 2, "stop": 1, "end": 3}, "extra": {"a": "x"}, "kye": "k"}))
    assert got["terms[0].key"] == "expected a string, got int 1"
    assert got["terms[0].scale"] == "is too large: at most 10, got 11.0"  # the validator's own message
    assert "did you mean 'fast'" in got["terms[0].mode"]
    assert got["terms[0].channels[0]"] == "expected an integer, got str '1'"
    assert "did you mean 'key'" in got["terms[0].kye"]
    assert "unknown key 'end'" in got["terms[0].window.end"]
    assert "got str 'x'" in got["terms[0].extra.a"]
    got = problems(native({"type": "fancy", "key": "k", "window": {"start": 2, "stop": 1}}))
    assert got == {"terms[0].window.stop": "must be > start (2), got 1"}  # cross-field validator, with instance
    got = problems(native({"type": "fancy", "key": "k", "scale": 0}))
    assert "contributes nothing" in got["terms[0]"]
    got = problems(native({"type": "fanyc", "key": "k"}))
    assert "did you mean 'fancy'" in got["terms[0].type"]


def test_third_party_term_without_options_and_broken_config_class(otplug_registry):
    class Plugin:
        @otplug.hookimpl
        def otplug_cost_terms(self):
            return [otplug.CostTerm(name="bare", factory="x:y"),
                    otplug.CostTerm(name="broken", factory="x:y", config_cls="no_such_module_xyz:Config")]

    otplug_registry.register(Plugin(), name="p")
    cfg = load_config(native({"type": "bare", "weight": 2}))
    assert cfg.terms[0].options is None and load_config(dump_config(cfg)) == cfg
    got = problems(native({"type": "bare", "src_key": "a"}))
    assert "takes no options" in got["terms[0].src_key"]
    got = problems(native({"type": "broken", "a": 1}))
    assert "term 'broken'" in got["terms[0].type"] and "no_such_module_xyz" in got["terms[0].type"]


def test_third_party_config_with_reserved_keys_is_reported(otplug_registry):
    @attrs.frozen
    class Clash:
        weight: float = 1.0

    class Plugin:
        @otplug.hookimpl
        def otplug_cost_terms(self):
            return [otplug.CostTerm(name="clash", factory="x:y", config_cls=Clash)]

    otplug_registry.register(Plugin(), name="p")
    assert "reserved key(s) weight" in problems(native({"type": "clash"}))["terms[0].type"]


# -- OTConfig in Python, dump, describe -----------------------------------------------------------------
def test_otconfig_validates_in_python():
    term = TermSpec(type="label", name="a", weight=1, options=LabelConfig(src_key="a"))
    assert term.weight == 1.0 and isinstance(term.weight, float)
    with pytest.raises(ValueError, match="duplicate term name"):
        OTConfig(terms=(term, term))
    with pytest.raises(ValueError, match="at least one"):
        OTConfig(terms=())
    with pytest.raises(ValueError, match="must be > 0"):
        OTConfig(terms=(term,), reg=0)
    with pytest.raises(ValueError, match="contributes nothing"):
        TermSpec(type="label", name="a", weight=0)
    assert OTConfig(terms=[term]).terms == (term,)


def test_dump_round_trip_and_json():
    for cfg in (load_config(SEED), load_config(DATA / "native_all_fields.toml")):
        dumped = dump_config(cfg)
        assert json.loads(json.dumps(dumped)) == dumped
        assert load_config(dumped) == cfg
        assert "terms" in dumped and "features" not in dumped


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"src_key": st.sampled_from(["a", "b", "observation.state"]),
             "use_learned_embed": st.booleans(),
             "weight_embed": st.floats(0, 5),
             "weight_label": st.floats(0.01, 5),
             "term_weight": st.floats(0.01, 5)},
            optional={"dim_slice": st.tuples(st.integers(0, 5), st.integers(1, 5)).filter(lambda s: s[0] < s[1])
                      .map(list),
                      "tgt_key": st.sampled_from(["x", "y"])},
        ),
        min_size=1, max_size=4,
    ),
    st.floats(1e-4, 10), st.booleans(),
)
def test_seed_round_trip_property(features, reg, heuristic):
    features = [dict(f, term_name=f"t{i}") for i, f in enumerate(features)]
    cfg = load_config({"features": features, "reg": reg, "heuristic": heuristic})
    assert load_config(dump_config(cfg)) == cfg
    for f, t in zip(features, cfg.terms, strict=True):
        assert t.weight == f["term_weight"]
        assert t.type == ("embedding" if f["use_learned_embed"] else "label")
        assert t.options.weight_label == f["weight_label"]
        if f["use_learned_embed"]:
            assert t.options.weight_embed == f["weight_embed"]


def test_describe_config():
    text = describe_config(load_config(EXAMPLES / "seed_three_cameras.json"))
    for fragment in ("img_ee", "type=embedding", "weight=0.3333", "dim_slice=[0, 8]", "ot_cost/img_ee",
                     "reg (entropic epsilon): 0.01", "0.01 / 0.01", "heuristic: false", "solver: sinkhorn",
                     "time_reduce=flatten"):
        assert fragment in text, fragment
    text = describe_config(load_config(DATA / "native_all_fields.toml"))
    assert "forced onto the given pairing" in text and "square batches only" in text
    assert "solver: pot (max_iter=200" in text and "time_reduce=last" in text


def test_config_loading_imports_no_torch_or_pot():
    code = (
        "import sys, otplug\n"
        f"otplug.load_config({str(EXAMPLES / 'native.toml')!r})\n"
        f"otplug.load_config({str(EXAMPLES / 'native.yaml')!r})\n"
        "bad = [m for m in ('torch', 'ot', 'numpy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_docs_examples_load_and_agree():
    import re

    text = (ROOT / "docs" / "config.md").read_text()
    blocks = re.findall(r"```(toml|yaml|json)\n(.*?)```", text, flags=re.S)
    from otplug.config.files import parse_text

    loaded = [load_config(parse_text(body, fmt)) for fmt, body in blocks]
    assert len(loaded) == 4  # native TOML, YAML, JSON and the seed example
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[3] == load_config(EXAMPLES / "seed_three_cameras.json")


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.floats(allow_nan=True),
                     st.sampled_from(["label", "embedding", "a", "", "flatten", "x y"]))
_keys = st.sampled_from(["type", "name", "weight", "src_key", "dim_slice", "weight_label", "weight_embed",
                         "use_learned_embed", "term_weight", "term_name", "time_reduce", "zzz"])
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
                     max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["terms", "features", "reg", "heuristic", "solver", "solver_options",
                                        "time_reduce", "on_collapse", "regg"]), _json, max_size=4))
def test_arbitrary_input_gives_a_config_or_a_configerror(data):
    try:
        cfg = load_config(data)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and isinstance(m, str) and m for p, m in exc.problems)
    else:
        assert load_config(dump_config(cfg)) == cfg


# -- the loader's settings come from the schema -----------------------------------------------------------------------

def test_every_otconfig_field_is_read_and_dumped_or_a_named_exception():
    """The loader's settings are OTConfig's fields (otplug.config.load.scalar_fields) but one explicit list of
    exceptions: every other field is accepted as a key, checked, and written back by dump_config."""
    from otplug.config import load as cl

    fields = [a.name for a in attrs.fields(OTConfig)]
    assert set(cl.NOT_SCALAR) <= set(fields), "an exception names a field OTConfig no longer has"
    assert sorted(cl._SCALARS) == sorted(set(fields) - set(cl.NOT_SCALAR))
    base = {"terms": [{"type": "action-slice"}]}
    dumped = dump_config(load_config(base))
    for name in cl._SCALARS:
        assert name in dumped, f"dump_config does not write {name}"
        cfg = load_config({**base, name: dumped[name]})  # accepted as a key of the file
        assert getattr(cfg, name) == dumped[name]
        with pytest.raises(ConfigError, match=name):
            load_config({**base, name: [1, 2]})  # and checked (no scalar setting is a list)


def test_a_new_otconfig_field_cannot_be_forgotten():
    """A field added to OTConfig is a setting with no other list to edit; a field that is not a scalar must be
    named in NOT_SCALAR (with the code that reads it) or the loader does not import."""
    from otplug.config.load import scalar_fields

    @attrs.frozen(kw_only=True)
    class Extended(OTConfig):
        new_knob: float = 1.0
        new_flag: bool = False

    got = scalar_fields(Extended)
    assert got["new_knob"] is float and got["new_flag"] is bool
    assert list(got)[:len(scalar_fields())] == list(scalar_fields())

    @attrs.frozen(kw_only=True)
    class WithTable(OTConfig):
        new_table: tuple[int, ...] = ()

    with pytest.raises(TypeError, match=r"WithTable.new_table.*NOT_SCALAR"):
        scalar_fields(WithTable)
