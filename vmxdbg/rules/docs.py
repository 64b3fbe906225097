"""Generate the rule reference (docs/rules.md) from the registry.

`python -m vmxdbg.rules.docs` rewrites it, from a source checkout only (an
installed package has no docs/ folder to write to; `vmxdbg rule ID` shows the
same text anywhere); tests/test_rule_docs.py fails when the committed file is
stale.
"""
from __future__ import annotations

import json
import sys
from itertools import groupby
from pathlib import Path
from typing import List

from .engine import Rule, all_rules

CHECKOUT = Path(__file__).resolve().parent.parent.parent
DOCS = CHECKOUT / "docs" / "rules.md"
GROUPS = (("VMXON", "VMXON"), ("VMCLR", "VMCLEAR"), ("VMPTR", "VMPTRLD"),
          ("ENTRY", "VMLAUNCH / VMRESUME instruction checks"), ("CTL", "VM-execution, exit and entry controls"),
          ("HOST", "Host state"), ("GUEST", "Guest state"), ("MSRLD", "VM-entry MSR loading"),
          ("XCPU", "Across processors"), ("ADV", "Advice"))


def _group(r: Rule) -> str:
    prefix = r.id.rstrip("0123456789")
    return dict(GROUPS).get(prefix, prefix)


def _examples(r: Rule) -> List[str]:
    out = []
    for e in r.examples:
        patch = json.dumps(e.patch) if e.patch else "(the baseline unchanged)"
        out.append(f"- {e.expect} on `{e.baseline}`: `{patch}`")
    return out


def render_rules() -> str:
    order = [p for p, _ in GROUPS]

    def key(r: Rule) -> tuple:
        prefix = r.id.rstrip("0123456789")
        return (order.index(prefix) if prefix in order else len(order), prefix, r.id)
    rules = sorted(all_rules(), key=key)   # by group and id: independent of import order
    lines = ["# vmxdbg rule reference", "",
             "Generated from the rule registry by `python -m vmxdbg.rules.docs`; do not edit by hand.",
             f"{len(rules)} rules. Each has a failing and a passing example, run as tests "
             "(tests/test_rule_examples.py).", ""]
    index = ["| id | slug | instructions | outcome | title |", "|---|---|---|---|---|"]
    for r in rules:
        index.append(f"| [{r.id}](#{r.id.lower()}) | {r.slug} | {', '.join(r.instructions)} | "
                     f"`{r.outcome}` | {r.title} |")
    lines += index + [""]
    for group, members in groupby(rules, key=_group):
        lines += [f"## {group}", ""]
        for r in members:
            lines += [f"### {r.id}", "", f"**{r.title}** (`{r.slug}`)", "",
                      f"- SDM: {r.sdm}", f"- Instructions: {', '.join(r.instructions)}; "
                      f"outcome when broken: `{r.outcome}`" + (f"; status `{r.status}`" if r.status != "fail" else "")]
            if r.catalog:
                lines.append(f"- Catalog: {', '.join(r.catalog)}")
            lines.append(f"- Defined in: `{r.where}`")
            lines += ["", f"*What it checks.* {r.checks}", "", f"*When it is broken.* {r.broken}", "",
                      f"*How to fix it.* {r.fix}", "", "*Examples.*", ""] + _examples(r) + [""]
    return "\n".join(lines)


def main() -> int:
    if not (CHECKOUT / "pyproject.toml").is_file() or not DOCS.parent.is_dir():
        print("vmxdbg: the rule reference is generated in a source checkout (docs/rules.md there); "
              "an installed vmxdbg shows each rule with `vmxdbg rule ID`", file=sys.stderr)
        return 2
    DOCS.write_text(render_rules(), encoding="utf-8")
    print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
