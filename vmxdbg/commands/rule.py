"""`vmxdbg rule ID`: what one rule checks, when it is broken, how to fix it, and its SDM section.

The detail a finding's link runs in WinDbg (`!vmxcheck rule ID`); the same
text as the rule's entry in docs/rules.md, for a terminal. IDs or slugs are
accepted, in any case; `--list` lists every rule.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from typing import List

from ..common.errors import InputError
from ..rules.engine import Rule, all_rules

NAME = "rule"
HELP = "explain one rule (by id or slug): what it checks, its SDM section and the fix"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", nargs="?", metavar="ID", help="rule id (VMXON002) or slug")
    parser.add_argument("--list", action="store_true", help="list every rule")


def find_rule(key: str) -> Rule:
    """The rule with this id or slug (case-insensitive); InputError naming near ones otherwise."""
    k = key.strip().lower()
    rules = all_rules()
    for r in rules:
        if k in (r.id.lower(), r.slug.lower()):
            return r
    near = [r.id for r in rules if r.id.lower().startswith(k.rstrip("0123456789")) and k[:3]][:8]
    hint = f" (rules starting so: {', '.join(near)})" if near else " (`vmxdbg rule --list` lists them)"
    raise InputError(f"no rule {key!r}{hint}")


def _para(label: str, text: str) -> List[str]:
    return textwrap.wrap(f"{label} {text}", width=100, initial_indent="  ", subsequent_indent="    ")


def describe(r: Rule) -> str:
    """The rule's documentation as plain text."""
    lines = [f"{r.id} {r.title} ({r.slug})",
             f"  SDM: {r.sdm}",
             f"  instructions: {', '.join(r.instructions)}; outcome when broken: {r.outcome}"
             + (f"; status {r.status}" if r.status != "fail" else "")]
    if r.catalog:
        lines.append(f"  catalog: {', '.join(r.catalog)}")
    lines.append(f"  defined in: {r.where}")
    lines += _para("What it checks:", r.checks) + _para("When it is broken:", r.broken) + _para("Fix:", r.fix)
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.list:
        sys.stdout.write("".join(f"{r.id:<10} {r.slug:<40} {r.title}\n" for r in all_rules()))
        return 0
    if not args.id:
        raise InputError("which rule? give its id, e.g. `vmxdbg rule VMXON002` (or --list)")
    sys.stdout.write(describe(find_rule(args.id)))
    return 0
