"""A failing sink never stops training or loses the other sinks' rows; metrics.jsonl is exact (resume, kills,
NaN) and never silently lost."""

from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import otplug
from otplug.errors import OtplugError
from otplug.sinks import SinkGroup, SinkWarning, make_sinks
from otplug.sinks.jsonl import JsonlSink, read_jsonl, truncate_jsonl


class Recorder:
    """A sink with every method, recording what it got."""

    def __init__(self, run_dir, every=1):
        self.rows, self.plans, self.closed, self.every = [], [], False, every

    def log(self, step, metrics):
        self.rows.append((step, dict(metrics)))

    def wants_plan(self, step):
        return step % self.every == 0

    def log_plan(self, step, plan, labels):
        self.plans.append(step)

    def close(self):
        self.closed = True


class LogOnly:
    """Only the required method."""

    def __init__(self, run_dir):
        self.rows = []

    def log(self, step, metrics):
        self.rows.append(step)


class PlanNoWants(LogOnly):
    """log_plan without wants_plan: gets every plan."""

    def __init__(self, run_dir):
        super().__init__(run_dir)
        self.plans = []

    def log_plan(self, step, plan, labels):
        self.plans.append(step)


def _raising(where: str):
    class Broken(Recorder):
        def __init__(self, run_dir, **options):
            if where == "init":
                raise RuntimeError("cannot reach the server")
            super().__init__(run_dir)

    def fail(self, *args, **kwargs):
        raise ValueError(f"boom in {where}")

    if where != "init":
        setattr(Broken, where, fail)
    return Broken


@pytest.fixture
def sinks(otplug_registry):
    """Register sinks by name: sinks({"name": factory, ...})."""

    def register(factories):
        class P:
            @otplug.hookimpl
            def otplug_metric_sinks(self):
                return [otplug.MetricSink(name=n, factory=f, summary="test") for n, f in factories.items()]

        otplug_registry.register(P(), name="fault-sinks")

    return register


def _one_warning(record, *needles):
    lines = [str(w.message) for w in record if issubclass(w.category, SinkWarning)]
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "\n" not in lines[0]
    return lines[0]


def _run(group, steps=3):
    for step in range(1, steps + 1):
        group.log(step, {"bc_loss": 1.0 / step})
        if group.wants_plan(step):
            group.log_plan(step, np.eye(2) / 2, {"step": step})
    group.close()


# -- optional methods -------------------------------------------------------------------------------------
def test_sink_group_takes_any_subset_of_the_optional_methods(tmp_path, sinks):
    sinks({"log-only": LogOnly, "plan-no-wants": PlanNoWants, "recorder": lambda d: Recorder(d, every=2)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is reported: none of them failed
        group = make_sinks(tmp_path, ["log-only", "plan-no-wants", "recorder"])
        _run(group, steps=4)
    by_name = {e.name: e.sink for e in group.entries}
    assert by_name["log-only"].rows == [1, 2, 3, 4]
    assert by_name["plan-no-wants"].plans == [1, 2, 3, 4]  # no wants_plan: every plan
    assert by_name["recorder"].plans == [2, 4]
    assert not group.disabled


def test_wants_plan_is_false_when_no_sink_takes_plans(tmp_path, sinks):
    sinks({"log-only": LogOnly})
    group = make_sinks(tmp_path, ["log-only"])
    assert not group.wants_plan(1)
    group.log_plan(1, np.eye(2))  # harmless
    group.close()


# -- a failing sink is disabled, the others go on ----------------------------------------------------------
@pytest.mark.parametrize("where", ["init", "log", "wants_plan", "log_plan", "close"])
def test_failing_sink_is_disabled_with_one_warning(tmp_path, sinks, where):
    sinks({"broken": _raising(where), "recorder": Recorder})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        group = make_sinks(tmp_path, ["broken", "recorder"])
        _run(group)
    method = "start-up" if where == "init" else where
    error = "RuntimeError: cannot reach the server" if where == "init" else f"ValueError: boom in {where}"
    line = _one_warning(record, "sink 'broken' (plugin 'fault-sinks')", f"failed in {method}:", error,
                        "disabled for the rest of the run")
    assert group.failures == [line]
    recorder = next(e.sink for e in group.entries if e.name == "recorder")
    assert [s for s, _ in recorder.rows] == [1, 2, 3] and recorder.plans == [1, 2, 3] and recorder.closed
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    if where != "init":
        assert "broken" in group.disabled
    if where in ("log", "wants_plan", "log_plan"):
        assert next(e.sink for e in group.entries if e.name == "broken").closed  # still closed (files, sockets)


def test_disabled_sink_gets_nothing_more(tmp_path, sinks):
    calls = []

    class FailsOnce(LogOnly):
        def log(self, step, metrics):
            calls.append(step)
            raise OSError("connection reset")

    sinks({"flaky": FailsOnce})
    with pytest.warns(SinkWarning, match="sink 'flaky'.*failed in log: OSError: connection reset"):
        group = make_sinks(tmp_path, ["flaky"])
        _run(group)
    assert calls == [1]


def test_factory_that_cannot_be_imported_is_disabled(tmp_path, sinks):
    sinks({"ghost": "no_such_module_for_otplug:Sink", "recorder": Recorder})
    with pytest.warns(SinkWarning, match=r"sink 'ghost' \(plugin 'fault-sinks'\) failed in start-up: PluginLoadError"):
        group = make_sinks(tmp_path, ["ghost", "recorder"])
    assert [e.name for e in group.entries] == ["jsonl", "recorder"]
    group.close()


def test_strict_plugins_make_a_broken_sink_fatal(tmp_path, sinks, otplug_registry):
    sinks({"broken": _raising("init")})
    otplug_registry.strict = True
    with pytest.raises(RuntimeError, match="cannot reach the server"):
        make_sinks(tmp_path, ["broken"])


def test_a_sinks_own_otplug_error_at_start_up_is_fatal(tmp_path, sinks):
    class NeedsPackage(LogOnly):
        def __init__(self, run_dir):
            raise OtplugError("the 'x' sink needs the x package: pip install x")

    sinks({"x": NeedsPackage})
    with pytest.raises(OtplugError, match="pip install x"):
        make_sinks(tmp_path, ["x"])


def test_warning_names_the_distribution(tmp_path, otplug_registry):
    class P:
        @otplug.hookimpl
        def otplug_metric_sinks(self):
            return [otplug.MetricSink(name="broken", factory=_raising("log"), summary="test")]

    otplug_registry.register(P(), name="ep", dist="otplug-broken", version="1.0")
    with pytest.warns(SinkWarning, match=r"^sink 'broken' \(dist otplug-broken 1.0\) failed in log: ValueError: "
                                         r"boom in log; disabled for the rest of the run$"):
        with make_sinks(tmp_path, ["broken"]) as group:
            group.log(1, {"a": 1.0})


def test_plain_sink_group_isolates_too(tmp_path):
    good = Recorder(tmp_path)
    group = SinkGroup([_raising("log")(tmp_path), good])
    with pytest.warns(SinkWarning, match="sink 'Broken' failed in log"):
        group.log(1, {"a": 1.0})
    group.log(2, {"a": 2.0})
    assert [s for s, _ in good.rows] == [1, 2]


# -- the jsonl sink is never silently disabled -------------------------------------------------------------
class FullDisk:
    """A file object whose writes fail as on a full disk."""

    closed = False

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass

    def close(self):
        self.closed = True
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # the buffered bytes cannot go either


def test_jsonl_full_disk_is_one_otplug_error_after_the_other_sinks(tmp_path, sinks):
    sinks({"recorder": Recorder})
    group = make_sinks(tmp_path, ["recorder"])
    group.entries[0].sink._fh = FullDisk()
    with pytest.raises(OtplugError) as info:
        group.log(1, {"bc_loss": 1.0})
    assert str(info.value) == (f"the disk is full: cannot write {tmp_path / 'metrics.jsonl'}: No space left on "
                               "device; free some space, then run again")
    recorder = group.entries[1].sink
    assert [s for s, _ in recorder.rows] == [1]  # the other sinks got the row first
    group.close()  # the failure was reported once: closing does not raise it again
    assert recorder.closed


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_jsonl_on_dev_full(tmp_path):
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    group = make_sinks(tmp_path, [])
    with pytest.raises(OtplugError, match=r"^the disk is full: cannot write .*metrics.jsonl: No space left on device;"):
        group.log(1, {"bc_loss": 1.0})
    group.close()


def test_jsonl_in_an_unwritable_folder_is_one_otplug_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    run_dir = tmp_path / "file" / "run"
    with pytest.raises(OtplugError) as info:
        make_sinks(run_dir, ["console"])
    assert str(info.value) == f"cannot write {run_dir / 'metrics.jsonl'}: Not a directory"


def test_jsonl_read_only_folder(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("builtins.open", read_only)
    with pytest.raises(OtplugError, match=r"cannot write .*metrics.jsonl: Read-only file system$"):
        JsonlSink(tmp_path)


# -- exact across resume and kills ---------------------------------------------------------------------------
def _rows(n):
    return "".join(json.dumps({"step": s, "bc_loss": 1.0 / s}) + "\n" for s in range(1, n + 1))


def test_resume_keeps_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_rows(7) + '{"step": 8, "bc_lo')  # killed at step 8, checkpoint at step 4
    group = make_sinks(tmp_path, [], start_step=4)
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 4]
    for step in range(5, 7):
        group.log(step, {"bc_loss": 0.5})
    group.close()
    lines = path.read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5, 6]


def test_resume_twice_keeps_the_last_row_of_each_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_rows(7) + "".join(json.dumps({"step": s, "run": 2}) + "\n" for s in range(5, 10)))
    assert truncate_jsonl(path, 8) == (8, 4)
    rows = read_jsonl(path)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(r.get("run") == 2 for r in rows[4:]) and all("run" not in r for r in rows[:4])


def test_resume_keeps_the_file_mode_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_rows(5))
    path.chmod(0o644)
    truncate_jsonl(path, 2)
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_resume_without_a_file_and_fresh_start(tmp_path):
    make_sinks(tmp_path, [], start_step=3).close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    (tmp_path / "metrics.jsonl").write_text(_rows(3))
    with make_sinks(tmp_path, []) as group:  # start_step 0: a fresh run, a fresh file
        group.log(1, {"bc_loss": 2.0})
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "bc_loss": 2.0}]


def test_start_step_must_be_a_step(tmp_path):
    with pytest.raises(OtplugError, match="start_step"):
        make_sinks(tmp_path, [], start_step=-1)


def test_each_row_is_one_write(tmp_path):
    sink = JsonlSink(tmp_path)
    writes = []

    class Spy:
        closed = False

        def write(self, data):
            writes.append(bytes(data))
            return len(data)

        def flush(self):
            pass

        def close(self):
            pass

    sink._fh = Spy()
    sink.log(3, {f"m{i}": float(i) for i in range(2000)})  # a long row
    assert len(writes) == 1 and writes[0].endswith(b"\n") and writes[0].count(b"\n") == 1


def test_torn_last_line_is_skipped_by_read_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_rows(2) + '{"step": 3, "bc')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]


# -- strict JSON -----------------------------------------------------------------------------------------------
def test_nonfinite_values_are_null_and_listed(tmp_path):
    with make_sinks(tmp_path, []) as group:
        group.log(1, {"bc_loss": float("nan"), "ot_loss": float("inf"), "grad_norm": -float("inf"), "lr": 1e-4})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text

    def strict(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    row = json.loads(text, parse_constant=strict)
    assert row == {"step": 1, "bc_loss": None, "ot_loss": None, "grad_norm": None, "lr": 1e-4,
                   "nonfinite": ["bc_loss", "ot_loss", "grad_norm"]}
