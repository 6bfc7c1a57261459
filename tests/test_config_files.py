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


# -- bounded reading (issue 10): every hostile input ends in one clear error, fast ------------------------
def _run_with_timeout(fn, timeout: float = 10.0):
    """``fn()`` in a thread; fails the test (instead of hanging it) when it does not return in time."""
    import threading

    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 -- handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"did not return within {timeout} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _billion_laughs() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\nterms: *i\n"


def _hostile(tmp_path, kind: str) -> tuple[str, str]:
    """(path, fragment of the one problem) for each hostile input."""
    import os

    if kind == "fifo":
        path = tmp_path / "fifo.json"
        os.mkfifo(path)
        return str(path), "is a FIFO (named pipe), not a regular file"
    if kind == "dev-zero":
        return "/dev/zero", "is a character device, not a regular file"
    if kind == "directory":
        (tmp_path / "d.toml").mkdir()
        return str(tmp_path / "d.toml"), "is a directory, not a regular file"
    files = {
        "non-utf8": ("bad.yaml", b"reg: 0.1\nname: \"caf\xe9\"\n", "not UTF-8 text (invalid continuation byte at byte "
                                                                   "offset 19, line 2)"),
        "deep-json": ("deep.json", b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        "deep-json-65": ("d65.json", b'{"terms": ' + b"[" * 70 + b"]" * 70 + b"}", "nested deeper than 64 levels "
                                                                                  "(at terms[0][0]"),
        "deep-toml": ("deep.toml", b"a = " + b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        "deep-toml-tables": ("tables.toml", b"[" + b".".join([b"a"] * 100) + b"]\nx = 1\n", "nested deeper than 64"),
        "deep-yaml": ("deep.yaml", b"a: " + b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        "deep-yaml-block": ("block.yaml", "".join("  " * i + "k:\n" for i in range(100)).encode() + b"  " * 100
                            + b"k: 1\n", "nested deeper than 64"),
        "huge-int-json": ("int.json", b'{"reg": ' + b"9" * 200_000 + b"}", "integer too large: a number with 200000 "
                                                                          "digits"),
        "big-int-json": ("int2.json", b'{"reg": 99999999999999999999}', "integer too large"),
        "huge-int-toml": ("int.toml", b"reg = " + b"9" * 200_000 + b"\n", "a number with 200000 digits (line 1)"),
        "big-int-toml": ("int2.toml", b"reg = 99999999999999999999\n", "integer too large at reg"),
        "huge-int-yaml": ("int.yaml", b"reg: " + b"9" * 200_000 + b"\n", "a number with 200000 digits (line 1)"),
        "big-int-yaml": ("int2.yaml", b"reg: 0x" + b"f" * 40 + b"\n", "integer too large at reg"),
        "alias-bomb": ("lol.yaml", _billion_laughs().encode(), "aliases expand to more than 1000 values"),
        "recursive-alias": ("rec.yaml", b"terms: &t [*t]\n", "a recursive alias"),
        "huge-file": ("big.json", b'{"reg": 0.1, "pad": "' + b"x" * (2 << 20) + b'"}', "is 2.0 MiB; a config file "
                                                                                       "may be at most 1.0 MiB"),
    }
    name, data, fragment = files[kind]
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name), fragment


HOSTILE = ["fifo", "dev-zero", "directory", "non-utf8", "deep-json", "deep-json-65", "deep-toml", "deep-toml-tables",
           "deep-yaml", "deep-yaml-block", "huge-int-json", "big-int-json", "huge-int-toml", "big-int-toml",
           "huge-int-yaml", "big-int-yaml", "alias-bomb", "recursive-alias", "huge-file"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_inputs_are_one_clear_error(tmp_path, kind):
    import time

    path, fragment = _hostile(tmp_path, kind)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        _run_with_timeout(lambda: load_config(path))
    assert time.perf_counter() - start < 5.0
    assert info.value.source == path and len(info.value.problems) == 1
    message = info.value.problems[0][1]
    assert fragment in message, message
    assert len(message) < 300 and "\n" not in message


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "non-utf8", "deep-yaml", "huge-int-json",
                                  "alias-bomb", "huge-file"])
def test_check_config_on_hostile_inputs_exits_2_with_one_error_line(tmp_path, capsys, kind):
    path, fragment = _hostile(tmp_path, kind)
    assert _run_with_timeout(lambda: main(["check-config", path])) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"otplug: error: invalid otplug config in {path} (1 problem):"
    assert len(lines) == 2 and fragment in lines[1] and "Traceback" not in captured.err


def test_yaml_aliases_within_the_budget_still_work(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("terms:\n  - &base {type: label, src_key: a, name: one}\n  - <<: *base\n    name: two\n")
    cfg = load_config(path)
    assert [t.name for t in cfg.terms] == ["one", "two"]


def test_bom_and_limits_of_the_shared_reader(tmp_path):
    from otplug.config.files import PAIR_INFO_MAX_BYTES, read_json_file, read_text_file
    from otplug.errors import InputFileError

    (tmp_path / "c.json").write_bytes(b'\xef\xbb\xbf{"terms": [{"type": "label", "src_key": "a"}]}')
    assert load_config(tmp_path / "c.json").terms[0].name == "label"
    (tmp_path / "p.json").write_text('{"0": [{"pairing": {"0": [1, 2]}}]}')
    assert read_json_file(tmp_path / "p.json", what="pair_info file") == {"0": [{"pairing": {"0": [1, 2]}}]}
    assert PAIR_INFO_MAX_BYTES == 256 << 20
    with pytest.raises(InputFileError, match=r"^pair_info file .*p\.json: is 35 bytes; a pair_info file may be at "
                                             "most 10 bytes$"):
        read_text_file(tmp_path / "p.json", max_bytes=10, what="pair_info file")
    (tmp_path / "n.json").write_text('{"0": ' + "1" * 30 + "}")
    with pytest.raises(InputFileError, match="integer too large"):
        read_json_file(tmp_path / "n.json")


def test_messages_never_quote_huge_values():
    with pytest.raises(ConfigError) as info:
        load_config({"terms": [{"type": "x" * 100_000, "src_key": "a", "name": "n" * 50_000}], "y" * 10_000: 1,
                     "reg": 10**400, "solver": "s" * 20_000})
    text = str(info.value)
    assert len(text) < 2000, text[:500]
    assert "an integer with about 401 digits" in text and "(10000 characters)" in text


def test_read_json_file_hook_errors_pass_through(tmp_path):
    from otplug.config.files import read_json_file
    from otplug.errors import BatchError

    def no_dupes(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise BatchError("key listed twice in one object: " + "x" * 200)
        return dict(pairs)

    (tmp_path / "d.json").write_text('{"0": 1, "0": 2}')
    with pytest.raises(BatchError, match="x{200}"):
        read_json_file(tmp_path / "d.json", object_pairs_hook=no_dupes)
