"""docs/coverage-entry-guest.md agrees with the rule registry (SDM 27.3 / 27.4 coverage)."""
from __future__ import annotations

import re
from pathlib import Path

from vmxdbg.rules.engine import all_rules

DOC = Path(__file__).resolve().parent.parent / "docs" / "coverage-entry-guest.md"
ROW = re.compile(r"^\| `((?:GUEST|MSRLOAD)\.[A-Z0-9_.]+)` \| \[([A-Z]+[0-9]{3})\]")


def test_catalog_table_matches_the_registry():
    text = DOC.read_text(encoding="utf-8")
    rows = dict(m.groups() for m in map(ROW.match, text.splitlines()) if m)
    registry = {c: r.id for r in all_rules() for c in r.catalog if c.split(".")[0] in ("GUEST", "MSRLOAD")}
    assert rows == registry
    assert len(rows) == 180  # the catalog's 174 GUEST + 6 MSRLOAD rows


def test_every_guest_and_msr_load_rule_is_in_the_doc_and_every_id_there_exists():
    text = DOC.read_text(encoding="utf-8")
    ids = {r.id for r in all_rules()}
    mine = {i for i in ids if i.startswith(("GUEST", "MSRLD"))}
    named = set(re.findall(r"\b(?:GUEST|MSRLD)[0-9]{3}\b", text))
    assert mine <= named and named <= ids
