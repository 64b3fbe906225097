"""`vmxdbg layout`: list the known VMCS layouts, learn one from a probe dump.

    vmxdbg layout list
    vmxdbg layout learn DUMP -o layout.yaml [--name NAME]
    vmxdbg layout fields [--c | --nasm]      the encodings the probe writes

DUMP is what the layout probe printed (docs/vmcs-layouts.md), or the raw
region bytes. The learned file is used with `vmxdbg vmcs ADDR --layout FILE`,
or found by revision id when its directory is in $VMXDBG_LAYOUT_PATH.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import List

from ..decode import defs
from ..decode.layouts import PATH_ENV, Layout, dump_layout, known_layouts, layout_for_revision
from ..decode.probe import Learned, field_table, learn, read_dump
from ..common.errors import InputError, refuse_existing

NAME = "layout"
HELP = "list the known VMCS memory layouts, or learn one from a layout-probe dump"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="layout_command", metavar="ACTION")
    sub.add_parser("list", help="the known layouts: name, revision id, fields, where the facts come from")
    p = sub.add_parser("learn", help="turn a layout-probe dump into a layout file")
    p.add_argument("dump", type=Path, help="the probe's output (text) or the raw region bytes")
    p.add_argument("-o", "--output", type=Path, required=True, help="the layout YAML file to write")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.add_argument("--name", default=None, help="the layout's name (default learned-0xREVISION)")
    p.add_argument("--block", default=None, metavar="PREFIX",
                   help='use the probe block whose lines start with PREFIX, e.g. "[cpu0]" (default: the first)')
    f = sub.add_parser("fields", help="the field encodings the probe writes, as a C array or a nasm table")
    lang = f.add_mutually_exclusive_group()
    lang.add_argument("--c", dest="language", action="store_const", const="c", default="c")
    lang.add_argument("--nasm", dest="language", action="store_const", const="nasm")


def describe_differences(learned: Layout, builtin: Layout, unsupported: object = ()) -> List[str]:
    """Lines naming every field placed differently, missing or extra (empty = equal).

    A built-in field missing from `learned` is not a difference when it is in
    `unsupported` (the probed CPU has no such field).
    """
    out = []
    a, b = learned.field_map(), builtin.field_map()
    for enc in sorted(set(a) | set(b)):
        name = (learned.by_encoding.get(enc) or builtin.by_encoding[enc]).name
        if enc not in b:
            out.append(f"{name} (0x{enc:04x}): learned at {_slot(a[enc])}, not in {builtin.name}")
        elif enc not in a:
            if enc not in unsupported:  # type: ignore[operator]
                out.append(f"{name} (0x{enc:04x}): {builtin.name} has it at {_slot(b[enc])}, not learned")
        elif a[enc] != b[enc]:
            out.append(f"{name} (0x{enc:04x}): learned at {_slot(a[enc])}, {builtin.name} says {_slot(b[enc])}")
    return out


def _slot(key: tuple) -> str:
    off, size, transform = key
    return f"0x{off:x} ({size} bytes{', ' + transform if transform else ''})"


def _learn(args: argparse.Namespace) -> int:
    dump = read_dump(args.dump, args.block)
    fields = [(f.encoding, f.name) for f in defs.vmcs_fields()]
    stamp = datetime.date.today().isoformat()
    got: Learned = learn(dump, fields, name=args.name,
                         sources=(f"vmxdbg layout learn {args.dump.name} ({stamp})",))
    lay = got.layout
    if not lay.slots:
        raise InputError(f"no field tag found in the region (revision 0x{lay.revision_id:x}): "
                         "is this the region the probe wrote, dumped after its VMCLEAR?", source=str(args.dump))
    comment = [f"VMCS layout of revision id 0x{lay.revision_id:x}, learned by `vmxdbg layout learn` "
               f"from {args.dump.name} on {stamp}.",
               f"{len(lay.slots)} fields placed; {len(got.unsupported)} unsupported (VMWRITE failed); "
               f"{len(got.not_found)} written but not found; {len(got.ambiguous)} ambiguous."]
    if got.not_found:
        comment.append("not found: " + " ".join(f"0x{e:04x}" for e in sorted(got.not_found)))
    for enc, hits in sorted(got.ambiguous.items()):
        comment.append(f"ambiguous 0x{enc:04x}: tag at " + ", ".join(f"0x{h:x}" for h in hits))
    if dump.blocks > 1:
        comment.append(f"the dump holds {dump.blocks} probe blocks; the first begun ({dump.stream or 'no prefix'}) "
                       "was used")
    refuse_existing(args.output, "the output file", args.force)
    try:
        args.output.write_text(dump_layout(lay, comment))
    except OSError as exc:
        raise InputError(exc.strerror or str(exc), source=str(args.output)) from None
    print(f"{args.output}: {comment[1]}")
    builtin = layout_for_revision(lay.revision_id)
    if builtin is not None and builtin.path != str(args.output.resolve()):
        diffs = describe_differences(lay, builtin, got.unsupported)
        if diffs:
            print(f"differs from the known layout {builtin.name} ({builtin.path}):")
            for line in diffs:
                print(f"  {line}")
        else:
            print(f"same as the known layout {builtin.name} on every field this CPU has")
    else:
        print(f"use it: vmxdbg vmcs ADDRESS --layout {args.output}  (or put it in a directory of ${PATH_ENV})")
    return 0


def _list() -> int:
    for lay in known_layouts():
        print(f"{lay.name:<14} revision 0x{lay.revision_id:<9x} {len(lay.slots):>3} fields  {lay.doc}")
        print(f"{'':14} {lay.path}")
        for src in lay.sources:
            print(f"{'':14} from {src}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.layout_command == "learn":
        return _learn(args)
    if args.layout_command == "list":
        return _list()
    if args.layout_command == "fields":
        sys.stdout.write(field_table(args.language))
        return 0
    print("vmxdbg layout: say `list`, `learn DUMP -o FILE` or `fields [--c|--nasm]`", file=sys.stderr)
    return 2
