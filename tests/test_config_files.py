"""otplug.config.files and ``otplug check-config``: parse errors with line numbers, IO errors, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from otplug.cli import main
from otplug.config import load_config
from otplug.errors import ConfigError

DATA = Path(__file__).parent / "data" / "configs"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"


def only_problem(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert len(info.value.problems) == 1
    return info.value.problems[0][1]


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("bad_syntax.json", ["not valid JSON", "line 3, column 47"]),
        ("bad_syntax.toml", ["not valid TOML", "line 4, column 11"]),
        ("bad_syntax.yaml", ["not valid YAML", "line 3, column 4"]),
    ],
)
def test_parse_errors_have_line_numbers(name, fragments):
    message = only_problem(DATA / name)
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("e.json", "", "the file is empty"),
        ("e.toml", "  \n\n", "the file is empty"),
        ("e.yaml", "# only a comment\n", "holds no settings"),
        ("l.json", "[1, 2]", "must be a table of settings, got a list"),
        ("s.yaml", "hello", "must be a table of settings, got a string"),
        ("d.json", '{\n"reg": 0.1,\n"reg": 0.2\n}', "duplicate key 'reg' (line 3)"),
        ("d.yaml", "reg: 0.1\nreg: 0.2\n", "duplicate key 'reg' (line 2, column 1)"),
        ("d.toml", "reg = 0.1\nreg = 0.2\n", "line 2"),
        ("u.toml", 'terms = [{type = "label"', "not valid TOML"),
        ("c.cfg", "reg = 1", "unsupported file type '.cfg'"),
    ],
)
def test_file_level_errors(tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    assert fragment in only_problem(path)


def test_io_errors_are_config_errors(tmp_path):
    assert only_problem(tmp_path / "missing.toml") == "file not found"
    (tmp_path / "dir.json").mkdir()
    assert "directory" in only_problem(tmp_path / "dir.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in only_problem(tmp_path / "bin.json")


def test_nan_in_files_is_rejected(tmp_path):
    (tmp_path / "n.json").write_text('{"reg": NaN, "features": [{"src_key": "a"}]}')
    (tmp_path / "n.toml").write_text('reg = nan\n[[terms]]\ntype = "label"\nsrc_key = "a"\n')
    (tmp_path / "n.yaml").write_text("reg: .inf\nterms: [{type: label, src_key: a}]\n")
    for ext in ("json", "toml", "yaml"):
        assert "finite" in only_problem(tmp_path / f"n.{ext}")


# -- CLI ------------------------------------------------------------------------------------------------
def test_check_config_ok(capsys):
    assert main(["check-config", str(EXAMPLES / "seed_three_cameras.json")]) == 0
    out = capsys.readouterr().out
    assert "img_ee" in out and "type=embedding" in out and "solver: sinkhorn" in out
    assert out.rstrip().endswith("seed_three_cameras.json: OK")


def test_check_config_quiet(capsys):
    assert main(["check-config", "-q", str(EXAMPLES / "native.toml")]) == 0
    assert capsys.readouterr().out.strip() == f"{EXAMPLES / 'native.toml'}: OK"


def test_check_config_lists_every_problem_without_traceback(capsys):
    assert main(["check-config", str(DATA / "bad_many.yaml")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert "(11 problems)" in err and "Traceback" not in err
    for path in ("reg:", "tau_src:", "heuristic:", "solver:", "terms[0].type:", "terms[1].dim_slice:",
                 "terms[2].name: duplicate term name 'dup'"):
        assert f"\n  {path}" in err, path


@pytest.mark.parametrize("name", ["bad_syntax.toml", "missing.json"])
def test_check_config_file_errors(capsys, name):
    assert main(["check-config", str(DATA / name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("otplug: error: invalid otplug config in") and "Traceback" not in err
