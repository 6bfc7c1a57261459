"""The CLI: listing (without torch), plugins, errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from otplug.cli import main

from plugin_fixtures import make_dist


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otplug", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_list_terms_table(capsys):
    assert main(["list-terms"]) == 0
    out = capsys.readouterr().out
    for name in ("embedding", "label", "image", "action-slice", "cosine"):
        assert name in out
    assert "otplug-cosine 0.1.0" in out and "otplug 0.1.0" in out


def test_list_terms_json(capsys):
    assert main(["list-terms", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert {"name", "plugin", "summary"} <= set(by_name["label"])
    assert by_name["cosine"]["plugin"] == "otplug-cosine"
    assert by_name["label"]["plugin"] == "otplug"


@pytest.mark.parametrize("kind,expected", [("solvers", "sinkhorn"), ("reducers", "flatten"),
                                           ("alignments", "rank"), ("sinks", "jsonl"), ("encoders", "act")])
def test_list_other_kinds(capsys, kind, expected):
    assert main(["list", kind]) == 0
    assert expected in capsys.readouterr().out
    assert main([f"list-{kind}", "--json"]) == 0
    assert expected in {r["name"] for r in json.loads(capsys.readouterr().out)}


def test_plugins_json(capsys):
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["cosine"]["distribution"] == "otplug-cosine"
    assert by_name["cosine"]["hooks"] == ["otplug_cost_terms"]
    assert by_name["builtin-terms"]["builtin"] is True
    assert data["failures"] == []


def test_listing_does_not_import_torch_or_pot():
    code = ("import sys; from otplug.cli import main; main(['list-terms']); main(['plugins']); "
            "bad = [m for m in ('torch', 'ot', 'lerobot') if m in sys.modules]; print('IMPORTED', bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "IMPORTED []" in out


def test_python_dash_m_and_broken_plugin_line(tmp_path):
    make_dist(tmp_path, "fake-broken", "0.1", {"fake-broken": "fake_otplug_broken"},
              {"fake_otplug_broken": "import not_a_real_module_xyz\n"})
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_cli("list-terms", env=env)
    assert proc.returncode == 0 and "label" in proc.stdout
    assert "fake-broken" in proc.stderr and "not_a_real_module_xyz" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("plugins", env=env)
    assert "failed to load" in proc.stdout and "fake-broken" in proc.stdout
    strict = run_cli("list-terms", env={**env, "OTPLUG_STRICT_PLUGINS": "1"})
    assert strict.returncode == 2 and "fake-broken" in strict.stderr and "Traceback" not in strict.stderr


def test_unknown_command_exits_nonzero():
    proc = run_cli("list-termz")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_train_without_lerobot_is_one_clear_message(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lerobot" else real(name, *a))
    assert main(["train", "--policy.type=act"]) == 2
    assert "otplug[lerobot]" in capsys.readouterr().err
