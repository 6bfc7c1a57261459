"""Docs stay in step with the code: every hook has a section headed by its exact signature."""

from __future__ import annotations

import inspect
from pathlib import Path

from otplug.plugins import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def hook_signatures() -> dict[str, str]:
    out = {}
    for name in dir(hookspecs):
        fn = getattr(hookspecs, name)
        if callable(fn) and hasattr(fn, hookspecs.PROJECT + "_spec"):
            ret = inspect.signature(fn).return_annotation
            out[name] = f"{name}() -> {ret}"
    return out


def test_every_hook_is_documented_with_its_signature():
    text = (DOCS / "plugins.md").read_text()
    sigs = hook_signatures()
    assert len(sigs) == 6
    for name, sig in sigs.items():
        assert f"### `{sig}`" in text, f"docs/plugins.md lacks a section headed `{sig}`"


def test_example_plugin_in_docs_exists():
    root = DOCS.parent / "plugins" / "otplug-cosine"
    assert (root / "pyproject.toml").read_text().count("[project.entry-points.otplug]") == 1
