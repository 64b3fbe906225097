"""`vmxdbg decode`: a register, MSR, VMX control or VMCS field, field by field, for a person.

    vmxdbg decode msr 0x480 00da0400`00000004
    vmxdbg decode cr4 0x3726f8
    vmxdbg decode primary 0x8401e172          (any control: pin_based, secondary, exit, entry ...)
    vmxdbg decode vmcs-field 0x6800
    vmxdbg decode --list
Values are accepted in WinDbg's forms (0x1f, bare hex, 00000000`0000001f, 0n31).
On a live target (`!vmxcheck decode msr 0x480`) a register or MSR given
without a value is read from the target (--cpu N, default the current one).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from ..decode import defs
from ..decode.model import ControlDef, RegisterDef, bit_range, reserved_label
from ..common.errors import InputError
from .live import current_cpu, is_live, live_backend, parse_cpu
from ..common.numbers import parse_int, windbg_hex

NAME = "decode"
HELP = "decode an MSR, register, VMX control or VMCS field by name"
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("what", nargs="?", metavar="WHAT",
                        help="msr, vmcs-field, a register (cr0, cr4, rflags, dr7, efer, IA32_VMX_BASIC ...) "
                             "or a control (pin_based, primary, secondary, tertiary, exit, secondary_exit, entry)")
    parser.add_argument("args", nargs="*", metavar="ARG",
                        help="msr: INDEX [VALUE]; vmcs-field: ENCODING|NAME [VALUE]; otherwise: [VALUE]")
    parser.add_argument("--list", action="store_true", help="list everything that can be decoded")
    if is_live(parser):
        parser.add_argument("--cpu", default=None, metavar="N",
                            help="the processor to read a register or MSR from (default: the current one)")


def run(args: argparse.Namespace) -> int:
    if args.list:
        sys.stdout.write(listing())
        return 0
    if not args.what:
        raise InputError("decode what? e.g. `vmxdbg decode msr 0x480 0xda040000000004` (see --list)")
    what = args.what.strip().lower().replace("_", "-")
    rest: List[str] = list(args.args)
    if what == "msr":
        if not rest:
            raise InputError("decode msr: give the MSR index, e.g. `decode msr 0x480 VALUE`")
        reg = defs.msr(parse_int(rest[0], what="MSR index"))
        out = describe_register(reg, _value(rest[1:], f"{reg.name} value", args, reg))
    elif what in ("vmcs-field", "vmcs"):
        if not rest:
            raise InputError("decode vmcs-field: give an encoding or a name, e.g. `decode vmcs-field 0x6800`")
        out = describe_vmcs_field(rest[0], _value(rest[1:], "VMCS field value"))
    else:
        ctl = _control_or_none(args.what)
        if ctl is not None:
            out = describe_control(ctl, _value(rest, f"{ctl.name} controls value"))
        else:
            reg = _register(args.what)
            out = describe_register(reg, _value(rest, f"{reg.name} value", args, reg))
    sys.stdout.write(out)
    return 0


def _value(rest: Sequence[str], what: str, args: Optional[argparse.Namespace] = None,
           reg: Optional[RegisterDef] = None) -> Optional[int]:
    if len(rest) > 1:
        raise InputError(f"{what}: one value expected, got {len(rest)} ({' '.join(rest)})")
    if rest:
        return parse_int(rest[0], what=what)
    backend = live_backend(args) if args is not None else None
    if backend is None or reg is None:
        return None
    cpu = parse_cpu(args.cpu, backend.processors()) if getattr(args, "cpu", None) is not None \
        else current_cpu(backend)
    value = backend.read_msr(cpu, reg.msr) if reg.msr is not None else backend.read_register(cpu, reg.name.lower())
    print(f"{reg.name} read from cpu {cpu}", file=sys.stderr)
    return value


def _register(name: str) -> RegisterDef:
    """A register by name, with or without the IA32_ prefix ("efer", "pat", "vmx_basic")."""
    for candidate in (name, f"IA32_{name}", f"IA32_VMX_{name}"):
        try:
            return defs.register(candidate)
        except InputError:
            continue
    raise InputError(f"unknown register, MSR or control {name!r} (see `vmxdbg decode --list`)")


def _control_or_none(name: str) -> Optional[ControlDef]:
    """A control field by its name or by the name/encoding of the VMCS field holding it."""
    try:
        return defs.control(name)
    except InputError:
        pass
    try:
        return defs.control_for_vmcs(defs.vmcs_field(name).encoding)
    except InputError:
        return None


def _hex(value: int, width: int) -> str:
    return windbg_hex(value) if width > 32 else f"0x{value:0{width // 4}x}"


def describe_register(reg: RegisterDef, value: Optional[int]) -> str:
    """The register's fields; with a value, each field's value and meaning."""
    where = f"MSR {reg.msr:#x}" if reg.msr is not None else f"{reg.width}-bit"
    head = f"{reg.name} ({where})"
    lines = [f"{head} = {_hex(reg.check_value(value), reg.width)}" if value is not None else head,
             f"  {reg.doc}", f"  {reg.sdm}"]
    if value is None:
        lines.append(f"  {'bits':<7} {'field':<28} description")
        for f in reg.fields:
            lines.append(f"  {bit_range(f.hi, f.lo):<7} {f.name:<28} {f.doc}")
        return "\n".join(lines) + "\n"
    lines.append(f"  {'bits':<7} {'field':<28} {'value':<12} meaning")
    for d in reg.decode(value):
        number = f"{d.value}" if d.hi == d.lo else f"0x{d.value:x}"
        meaning = "" if d.meaning in (number, f"{number} ({d.value})") else d.meaning
        detail = " - ".join(x for x in (meaning, d.doc) if x)
        lines.append(f"  {d.bits:<7} {d.name:<28} {number:<12} {detail}".rstrip())
    return "\n".join(lines) + "\n"


def describe_control(ctl: ControlDef, value: Optional[int]) -> str:
    """A control field's bits; with a value, the bits it sets by name."""
    field = defs.vmcs_field(ctl.vmcs)
    head = f"{ctl.doc or ctl.name} ({ctl.name}, VMCS {ctl.vmcs:#06x} {field.name})"
    if value is not None:
        if value >> ctl.width:
            raise InputError(f"{ctl.name} controls value: {value:#x} does not fit in {ctl.width} bits")
        head += f" = {_hex(value, ctl.width)}"
    caps = f"capability MSR {ctl.capability_msr:#x}" + (f", TRUE MSR {ctl.true_msr:#x}" if ctl.true_msr else "")
    lines = [head, f"  {ctl.sdm}; {caps}"]
    bits = sorted(set(ctl.bits) | set(ctl.default1)) if value is None else \
        [b for b in range(ctl.width) if value >> b & 1]
    for b in bits:
        name = ctl.bits.get(b, reserved_label(b in ctl.default1))
        flag = " default1" if b in ctl.default1 and b in ctl.bits else ""
        lines.append(f"  {b:>3}  {name}{flag}")
    if value is not None and not bits:
        lines.append("  no bit set")
    clear = [b for b in ctl.default1 if value is not None and not value >> b & 1]
    if clear:
        lines.append(f"  default1 bits clear: {', '.join(map(str, clear))} (allowed only where "
                     f"IA32_VMX_BASIC[55]=1 and the TRUE MSR {ctl.true_msr:#x} allows a 0)")
    return "\n".join(lines) + "\n"


def describe_vmcs_field(key: str, value: Optional[int]) -> str:
    """A VMCS field: encoding, SDM name, width, type; a control field's value by bit name."""
    f = defs.vmcs_field(key)
    enc = f.encoding
    access = "high" if f.high else "full"
    lines = [f"{f.name} = VMCS encoding {enc:#06x}" + (f" (aliases: {', '.join(f.aliases)})" if f.aliases else ""),
             f"  SDM name: {f.sdm_name}",
             f"  width: {f.width}{' (HIGH access: bits 63:32)' if f.high else ''}; type: {f.type}; "
             f"index: {f.index}; access: {access}",
             f"  {f.sdm}"]
    if value is not None:
        if value >> f.bits:
            raise InputError(f"{f.name} value: {value:#x} does not fit in {f.bits} bits")
        ctl = defs.control_for_vmcs(enc) if not f.high else None
        if ctl is not None:
            lines.append(describe_control(ctl, value).rstrip("\n"))
        else:
            lines.append(f"  value: {_hex(value, f.bits)}")
    return "\n".join(lines) + "\n"


def listing() -> str:
    """Everything `decode` knows, one line each."""
    lines = ["Registers and MSRs (vmxdbg decode NAME VALUE, or decode msr INDEX VALUE):"]
    for r in defs.registers():
        where = f"MSR {r.msr:#x}" if r.msr is not None else f"{r.width}-bit"
        lines.append(f"  {r.name:<30} {where:<16} {r.doc}")
    lines.append("VMX controls (vmxdbg decode NAME VALUE):")
    for c in defs.controls().values():
        lines.append(f"  {c.name:<30} VMCS {c.vmcs:#06x}      {c.doc}")
    lines.append(f"VMCS fields (vmxdbg decode vmcs-field ENCODING|NAME): {len(defs.vmcs_fields())} fields, "
                 "e.g. 0x6800 or GUEST_CR0")
    return "\n".join(lines) + "\n"
