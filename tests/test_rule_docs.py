"""The committed rule reference is generated from the registry and must be fresh."""
from __future__ import annotations

from vmxdbg.rules.docs import DOCS, render_rules
from vmxdbg.rules.engine import all_rules


def test_docs_are_fresh():
    assert DOCS.read_text(encoding="utf-8") == render_rules(), \
        "docs/rules.md is stale: run `python -m vmxdbg.rules.docs` and commit it"


def test_every_rule_is_documented():
    text = render_rules()
    for r in all_rules():
        assert f"### {r.id}" in text and r.sdm in text
        assert r.checks and r.broken and r.fix


def test_duplicate_id_fails_at_import():
    import pytest
    from vmxdbg.rules.engine import bad, good, rule
    with pytest.raises(ValueError, match="duplicate rule id"):
        rule(id="VMXON001", slug="another-slug", title="t", sdm="x (SDM 325462-080US, 2023)",
             instructions=("vmxon",), tier=10, outcome="#UD", checks="c", broken="b", fix="f",
             examples=[bad({}), good({})])(lambda ctx: None)


def test_every_rule_names_where_it_is_defined_and_the_place_exists():
    import re
    from pathlib import Path
    from vmxdbg.rules.engine import all_rules
    root = Path(__file__).resolve().parent.parent
    for r in all_rules():
        where = r.where
        path = where.split(",")[0]
        assert (root / path).is_file(), f"{r.id}: {where}"
        assert "<lambda>" not in where and not where.endswith(" check()"), f"{r.id}: {where}"
        if path.startswith("structs/"):
            assert re.search(rf"\bid: {r.id}\b|\bid: \"?{r.id}\b", (root / path).read_text()), f"{r.id}: {where}"
