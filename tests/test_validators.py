"""otplug.validators (also otplug.config.validators): the shared number validators of every config class (and of plugins)."""

from __future__ import annotations

import math

import attrs
import pytest

import otplug
from otplug.config import load_config
from otplug import validators as v
from otplug.errors import ConfigError


@attrs.frozen(kw_only=True)
class Opts:
    scale: float = attrs.field(default=1.0, validator=v.positive)
    margin: float = attrs.field(default=0.0, validator=v.non_negative)
    mix: float = attrs.field(default=0.5, validator=v.in_range(0, 1))
    frac: float = attrs.field(default=0.5, validator=v.in_range(0, 1, low_open=True, high_open=True))
    steps: int = attrs.field(default=10, validator=v.positive_int)
    skip: int = attrs.field(default=0, validator=v.non_negative_int)
    shift: float = attrs.field(default=0.0, validator=v.finite)
    floor: float = attrs.field(default=2.0, validator=v.at_least(2))
    flag: bool = attrs.field(default=False, validator=v.boolean)
    mode: str = attrs.field(default="a", validator=v.one_of("a", "b"))


def test_public_import_paths():
    assert otplug.validators is v
    assert v.positive is otplug.validators.positive


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"scale": 0.0}, ValueError, "scale: must be > 0, got 0.0"),
        ({"scale": -1}, ValueError, "scale: must be > 0, got -1"),
        ({"scale": float("nan")}, ValueError, "scale: must be a finite number, got nan"),
        ({"scale": math.inf}, ValueError, "scale: must be a finite number, got inf"),
        ({"scale": "1"}, TypeError, "scale: expected a number, got str '1'"),
        ({"scale": True}, TypeError, "scale: expected a number, got bool True"),
        ({"scale": None}, TypeError, "scale: expected a number, got null"),
        ({"margin": -0.1}, ValueError, "margin: must be >= 0, got -0.1"),
        ({"mix": 1.5}, ValueError, "mix: must be a number in [0, 1], got 1.5"),
        ({"frac": 1.0}, ValueError, "frac: must be a number in (0, 1), got 1.0"),
        ({"frac": 0}, ValueError, "frac: must be a number in (0, 1), got 0"),
        ({"steps": 0}, ValueError, "steps: must be an integer >= 1, got 0"),
        ({"steps": 8.0}, TypeError, "steps: expected an integer, got float 8.0"),
        ({"steps": False}, TypeError, "steps: expected an integer, got bool False"),
        ({"skip": -1}, ValueError, "skip: must be an integer >= 0, got -1"),
        ({"shift": math.nan}, ValueError, "shift: must be a finite number, got nan"),
        ({"floor": 1.5}, ValueError, "floor: must be >= 2, got 1.5"),
        ({"flag": 1}, TypeError, "flag: expected true or false, got int 1"),
        ({"mode": "c"}, ValueError, "mode: must be one of 'a', 'b', got 'c'"),
    ],
)
def test_messages_name_the_field(kwargs, error, message):
    with pytest.raises(error) as info:
        Opts(**kwargs)
    assert str(info.value) == message
    # the config loader prefixes its own path: args[0] is the message alone
    assert info.value.args[0] == message.split(": ", 1)[1]


def test_accepted_values():
    Opts(scale=1e-300, margin=0, mix=0, frac=0.999, steps=1, skip=0, shift=-1e300, floor=2, flag=True, mode="b")
    assert v.in_range(0, 1)(None, None, 1) is None


def test_values_are_shown_truncated():
    with pytest.raises(TypeError) as info:
        Opts(scale="x" * 100_000)
    assert len(str(info.value)) < 200 and "(100000 characters)" in str(info.value)
    with pytest.raises(ValueError) as info:
        Opts(scale=-(10**5000))
    assert len(str(info.value)) < 200 and "digits" in str(info.value)
    with pytest.raises(ValueError, match="finite"):
        Opts(scale=10**400)  # does not fit a float


def test_readable_reprs_and_hints():
    assert repr(v.positive) == "<otplug validator positive: a finite number > 0>"
    assert repr(v.in_range(0, 1, high_open=True)) == "<otplug validator in_range: a finite number in [0, 1)>"
    assert repr(v.positive_int) == "<otplug validator positive_int: an integer >= 1>"
    assert "one_of('x', 'y')" in repr(v.one_of("x", "y"))
    hinted = v.positive.with_hint("use 10 for nearly fixed marginals")
    with pytest.raises(ValueError, match=r"must be > 0, got 0 \(use 10 for nearly fixed marginals\)"):
        hinted(None, None, 0)
    assert not hasattr(v.positive, "__dict__")  # slotted


def test_core_configs_use_them_with_paths():
    with pytest.raises(ConfigError) as info:
        load_config({"terms": [{"type": "label", "src_key": "a", "weight_label": -1}], "tau_src": 0,
                     "solver_options": {"tol": "1e-3", "eps_scaling_factor": 1.0}})
    got = dict(info.value.problems)
    assert got["terms[0].weight_label"] == "must be >= 0, got -1.0"
    assert got["tau_src"].startswith("must be > 0, got 0.0 (the marginal relaxation")
    assert got["solver_options.tol"] == "expected a number, got str '1e-3'"
    assert got["solver_options.eps_scaling_factor"] == "must be a number in (0, 1), got 1.0"


def test_reg_has_a_floor():
    with pytest.raises(ConfigError) as info:
        load_config({"terms": [{"type": "label", "src_key": "a"}], "reg": 1e-300})
    (path, message), = info.value.problems
    assert path == "reg" and message.startswith("must be >= 1e-10, got 1e-300") and "cost_normalization" in message
    assert load_config({"terms": [{"type": "label", "src_key": "a"}], "reg": 1e-10}).reg == 1e-10


def test_the_docs_example_of_validating_plugin_options(tmp_path):
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    code = re.search(r"<!-- validators-example -->\n```python\n(.*?)\n```", page, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md <validators-example>", "exec"), namespace)  # noqa: S102
    cls = namespace["MarginConfig"]
    assert cls(src_key="a").mix == 0.5
    with pytest.raises(ValueError) as info:
        cls(src_key="a", scale=0)
    assert str(info.value) == "scale: must be > 0, got 0 (the cost's unit)"
    for bad in ({"mix": 1.0}, {"steps": 8.0}, {"mode": "avg"}, {"margin": -1}, {"src_key": ""}):
        with pytest.raises((TypeError, ValueError)):
            cls(**{"src_key": "a", **bad})
