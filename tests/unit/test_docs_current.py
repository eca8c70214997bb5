"""The generated reference docs match the code (run `make docs` when this fails)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _gen() -> object:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_docs"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("rel", ["docs/cli.md", "docs/openapi.json"])
def test_generated_doc_is_current(rel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    gen = _gen()
    expected = gen.OUTPUTS[rel]()  # type: ignore[attr-defined]
    committed = (ROOT / rel).read_text()
    assert committed == expected, f"{rel} is stale: run `make docs` and commit the result"
