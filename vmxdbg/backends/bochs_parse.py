"""Parsers of Bochs 2.7 debugger output (pure functions of the text).

Each parser takes the answer to one debugger command, as BochsProcess
returns it (no prompt, no echo), and raises BochsParseError naming the
command when the text is not what that command prints.  The forms are those
of Debian's bochs 2.7 (see tests/data/bochs/ for real captures).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..common.errors import BackendError


class BochsParseError(BackendError):
    """Bochs printed something the parser does not recognise."""

    def __init__(self, command: str, message: str, text: str) -> None:
        excerpt = text.strip().replace("\n", " | ")[:160]
        super().__init__(f"cannot read the answer to `{command}`: {message} (got: {excerpt!r})",
                         backend="bochs")


# ------------------------------------------------------------------ registers

_R_LINE = re.compile(r"^(r[a-z0-9]+)\s*:\s*([0-9a-f]{8})_([0-9a-f]{8})\s*$")
_EFLAGS = re.compile(r"^eflags 0x([0-9a-f]+):")


def parse_r(text: str) -> Dict[str, int]:
    """`r`: the 16 GPRs, rip and rflags of the current processor."""
    regs: Dict[str, int] = {}
    for line in text.splitlines():
        m = _R_LINE.match(line.strip())
        if m:
            regs[m.group(1)] = int(m.group(2) + m.group(3), 16)
            continue
        m = _EFLAGS.match(line.strip())
        if m:
            regs["rflags"] = int(m.group(1), 16)
    missing = [n for n in ("rax", "rsp", "r15", "rip", "rflags") if n not in regs]
    if missing:
        raise BochsParseError("r", f"no {', '.join(missing)}", text)
    return regs


def parse_r_cpu(text: str) -> Optional[int]:
    """The processor number `r` names on its first line ("CPU1:")."""
    m = re.match(r"\s*CPU(\d+):", text)
    return int(m.group(1)) if m else None


_CREG = [
    ("cr0", re.compile(r"^CR0=0x([0-9a-f]+)")),
    ("cr2", re.compile(r"^CR2=page fault laddr=0x([0-9a-f]+)")),
    ("cr3", re.compile(r"^CR3=0x([0-9a-f]+)")),
    ("cr4", re.compile(r"^CR4=0x([0-9a-f]+)")),
    ("cr8", re.compile(r"^CR8: 0x([0-9a-f]+)")),
    ("efer", re.compile(r"^EFER=0x([0-9a-f]+)")),
    ("xcr0", re.compile(r"^XCR0=0x([0-9a-f]+)")),
]


def parse_creg(text: str) -> Dict[str, int]:
    """`creg`: cr0 cr2 cr3 cr4 cr8 efer (and xcr0 where shown)."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        for name, rx in _CREG:
            m = rx.match(line.strip())
            if m:
                out[name] = int(m.group(1), 16)
    missing = [n for n in ("cr0", "cr3", "cr4", "efer") if n not in out]
    if missing:
        raise BochsParseError("creg", f"no {', '.join(missing)}", text)
    return out


def parse_dreg(text: str) -> Dict[str, int]:
    """`dreg`: dr0-dr3, dr6, dr7."""
    out = {f"dr{m.group(1)}": int(m.group(2), 16)
           for m in re.finditer(r"^DR([0-367])=0x([0-9a-f]+)", text, re.M)}
    if "dr7" not in out:
        raise BochsParseError("dreg", "no DR7", text)
    return out


# ------------------------------------------------------------ parameter tree

def parse_param_tree(text: str, command: str = "show") -> Dict[str, Any]:
    """`show "cpuN.GROUP"`: the tree as nested dicts of int / bool / str values.

    The result is {GROUP: {...}} for a group, {name: value} for one parameter.
    """
    root: Dict[str, Any] = {}
    stack: List[Dict[str, Any]] = [root]
    top = root
    seen = False
    for close, name, opened, hexv, decv, true, false, other, stray in _TREE_LINE.findall(text):
        if name:
            seen = True
            if opened:
                child: Dict[str, Any] = {}
                top[name] = child
                stack.append(child)
                top = child
            elif hexv:
                top[name] = int(hexv, 16)
            elif decv:
                top[name] = int(decv, 10)
            else:
                top[name] = True if true else False if false else other
        elif close:
            if len(stack) == 1:
                raise BochsParseError(command, "unbalanced }", text)
            stack.pop()
            top = stack[-1]
        elif stray:
            raise BochsParseError(command, f"unexpected line {stray!r}", text)
    if not seen or len(stack) != 1:
        raise BochsParseError(command, "not a parameter tree", text)
    return root


# One line of a parameter tree: a closing brace, `name = VALUE` (a group's opening brace, hex,
# decimal, true, false or any other text), the header `show param name: <...>`, or anything else
# (stray: refused unless blank).
_TREE_LINE = re.compile(r"^[ \t]*(?:(\})|([A-Za-z0-9_]+) = (?:(\{)|0x([0-9a-fA-F]+)|(-?[0-9]+)|(true)|(false)|"
                        r"([^\n]*?))|show param name:[^\n]*|([^\n]*?))[ \t\r]*$", re.M)


def segment_from_param(group: Dict[str, Any], name: str = "segment") -> Tuple[int, int, int, int]:
    """(selector, base, limit, attributes) from a segment group of the tree.

    Attributes are in the VMCS access-rights format: type 3:0, S 4, DPL 6:5,
    P 7, AVL 12, L 13, D/B 14, G 15, unusable 16 (Vol.3C 25.4.1, SDM
    325462-080US, 2023); a cache Bochs marks not valid is unusable.
    """
    try:
        ar = (group["type"] & 0xF) | (int(group["segment"]) << 4) | ((group["dpl"] & 3) << 5) \
            | (int(group["p"]) << 7) | (int(group["avl"]) << 12) | (int(group.get("l", False)) << 13) \
            | (int(group["d_b"]) << 14) | (int(group["granularity"]) << 15) \
            | ((0 if group["valid"] & 1 else 1) << 16)
        return group["selector"], group["base"], group["limit_scaled"], ar
    except (KeyError, TypeError) as e:
        raise BochsParseError(f'show "{name}"', f"segment group lacks {e}", repr(group)) from None


def vmx_state_from_param(group: Dict[str, Any]) -> Dict[str, Any]:
    """vmx ("off"/"root"/"non-root"), vmxon_pointer, vmcs_pointer from `show "cpuN.VMX"`."""
    try:
        in_vmx, guest = bool(group["in_vmx"]), bool(group["in_vmx_guest"])
        return {"vmx": "non-root" if guest else "root" if in_vmx else "off",
                "vmxon_pointer": group["vmxonptr"], "vmcs_pointer": group["vmcsptr"]}
    except KeyError as e:
        raise BochsParseError('show "cpuN.VMX"', f"no {e}", repr(group)) from None


# Names `show "cpuN.MSR"` prints -> MSR index (Vol.4, SDM 325462-080US, 2023).
MSR_PARAM_NAMES: Dict[str, int] = {
    "apicbase": 0x1B, "EFER": 0xC0000080, "star": 0xC0000081, "lstar": 0xC0000082, "cstar": 0xC0000083,
    "fmask": 0xC0000084, "kernelgsbase": 0xC0000102, "tsc_aux": 0xC0000103,
    "sysenter_cs_msr": 0x174, "sysenter_esp_msr": 0x175, "sysenter_eip_msr": 0x176,
    "mtrrfix64k": 0x250, "mtrrfix16k_80000": 0x258, "mtrrfix16k_a0000": 0x259,
    "mtrrfix4k_c0000": 0x268, "mtrrfix4k_c8000": 0x269, "mtrrfix4k_d0000": 0x26A,
    "mtrrfix4k_d8000": 0x26B, "mtrrfix4k_e0000": 0x26C, "mtrrfix4k_e8000": 0x26D,
    "mtrrfix4k_f0000": 0x26E, "mtrrfix4k_f8000": 0x26F, "pat": 0x277, "mtrr_deftype": 0x2FF,
    "ia32_xss": 0xDA0, "ia32_feature_ctrl": 0x3A,
    **{f"mtrrphysbase{i}": 0x200 + 2 * i for i in range(8)},
    **{f"mtrrphysmask{i}": 0x201 + 2 * i for i in range(8)},
}


def msrs_from_param(group: Dict[str, Any]) -> Dict[int, int]:
    """{MSR index: value} for the MSRs `show "cpuN.MSR"` prints."""
    return {MSR_PARAM_NAMES[k]: v for k, v in group.items() if k in MSR_PARAM_NAMES and isinstance(v, int)}


# ------------------------------------------------------------------- memory

_XP_LINE = re.compile(r"^0x([0-9a-f]+) <[^>]*>:((?:\s+0x[0-9a-f]+)+)\s*$")
XP_UNITS = {"b": 1, "h": 2, "w": 4, "g": 8}


def parse_xp(text: str, address: int, size: int, unit: str = "b", command: str = "xp") -> bytes:
    """`xp /N<unit>x ADDR` (or `x`): `size` bytes, little-endian, checked to start at ADDR
    and be contiguous.  Bochs prints each item as 0x + at least 8 digits for h/w/g."""
    width = XP_UNITS[unit]
    out = bytearray()
    for line in text.splitlines():
        m = _XP_LINE.match(line.strip())
        if not m:
            continue
        at = int(m.group(1), 16)
        if at != address + len(out):
            raise BochsParseError(command, f"line at 0x{at:x}, expected 0x{address + len(out):x}", text)
        for token in m.group(2).split():
            value = int(token, 16)
            if value >> (8 * width):
                raise BochsParseError(command, f"{token} does not fit {width} bytes", text)
            out += value.to_bytes(width, "little")
    if len(out) != size:
        raise BochsParseError(command, f"{len(out)} bytes, expected {size}", text)
    return bytes(out)


def parse_xp_bytes(text: str, address: int, size: int, command: str = "xp") -> bytes:
    """`xp /Nbx ADDR`: the N bytes."""
    return parse_xp(text, address, size, "b", command)


def parse_page(text: str) -> Optional[int]:
    """`page LADDR`: the physical page the linear page maps to, None if not mapped."""
    m = re.search(r"linear page 0x([0-9a-f]+) maps to physical page 0x([0-9a-f]+)", text)
    if m:
        return int(m.group(2), 16)
    if "physical address not available" in text:
        return None
    raise BochsParseError("page", "no translation line", text)


@dataclass(frozen=True)
class Instruction:
    """One line of `u`: where, the bytes, the text."""

    address: int
    data: bytes
    text: str


def parse_disasm(text: str) -> List[Instruction]:
    """`u /N ADDR`: the decoded instructions with their bytes."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^([0-9a-f]+): \([^)]*\): (.*?)\s*; ([0-9a-f]+)\s*$", line.strip())
        if m:
            out.append(Instruction(int(m.group(1), 16), bytes.fromhex(m.group(3)), m.group(2).strip()))
    if not out:
        raise BochsParseError("u", "no instruction lines", text)
    return out


# --------------------------------------------------------------- breakpoints

@dataclass(frozen=True)
class BochsBreakpoint:
    """One row of `blist`."""

    number: int
    kind: str          # "lbreakpoint", "pbreakpoint", "vbreakpoint"
    enabled: bool
    address: int


def parse_blist(text: str) -> List[BochsBreakpoint]:
    """`blist`: every breakpoint Bochs holds (an empty list when none)."""
    if "Num Type" not in text:
        raise BochsParseError("blist", "no header", text)
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s*(\d+)\s+([lpv]breakpoint)\s+\S+\s+([yn])\s+0x([0-9a-f]+)", line)
        if m:
            out.append(BochsBreakpoint(int(m.group(1)), m.group(2), m.group(3) == "y", int(m.group(4), 16)))
    return out


# ----------------------------------------------------------- stops and output

@dataclass
class StopReport:
    """What the debugger printed when the target stopped after `c` or `s`."""

    kind: str                        # "breakpoint", "magic", "vmexit", "none" (no reason line)
    cpu: Optional[int] = None        # the processor the reason line names
    breakpoint: Optional[int] = None # Bochs' breakpoint number
    rips: Dict[int, int] = field(default_factory=dict)        # RIP of each processor
    physical: Dict[int, int] = field(default_factory=dict)    # physical address of its next instruction
    instructions: Dict[int, bytes] = field(default_factory=dict)  # bytes of that instruction
    tick: Optional[int] = None


_REASONS = [
    ("breakpoint", re.compile(r"^\((\d+)\) Breakpoint (\d+), ")),
    ("magic", re.compile(r"^\((\d+)\) Magic breakpoint")),
    ("vmexit", re.compile(r"^\((\d+)\) Caught VMEXIT")),
]
_WHERE = re.compile(r"^\((\d+)\)(?:\.\[\d+\])? \[0x([0-9a-f]+)\] [0-9a-f]{4}:([0-9a-f]+) .*; ([0-9a-f]+)\s*$")


def parse_stop(text: str) -> StopReport:
    """The reason line "(N) Breakpoint K" / "(N) Magic breakpoint" / "(N) Caught VMEXIT"
    and the per-processor "(N) [addr] ..." lines after "Next at t=".

    The stopping processor comes only from the reason line (the address
    lines list every processor).
    """
    report = StopReport("none")
    for line in text.splitlines():
        s = line.strip()
        for kind, rx in _REASONS:
            m = rx.match(s)
            if m and report.kind == "none":
                report.kind, report.cpu = kind, int(m.group(1))
                if kind == "breakpoint":
                    report.breakpoint = int(m.group(2))
        m = re.match(r"^Next at t=(\d+)", s)
        if m:
            report.tick = int(m.group(1))
        m = _WHERE.match(s)
        if m:
            cpu = int(m.group(1))
            report.physical[cpu] = int(m.group(2), 16)
            report.rips[cpu] = int(m.group(3), 16)
            report.instructions[cpu] = bytes.fromhex(m.group(4))
    return report


E9_TAG = re.compile(r"\[(cpu(\d+)|all)\] ")
_DEBUGGER_START = re.compile(r"(\(\d+\) (Breakpoint|Magic breakpoint|Caught)|Next at t=|\(\d+\)(\.\[\d+\])? \[0x)")


@dataclass
class GuestOutput:
    """The guest's port 0xE9 lines in one debugger answer, and the rest."""

    lines: List[Tuple[Optional[int], str]]   # (cpu, or None for "[all]", text after the tag)
    debugger: str                            # what the debugger itself printed
    partial: str = ""                        # a guest line the stop cut short (tag included)


def split_guest_output(text: str) -> GuestOutput:
    """Separate the guest's lines ("[cpuN] ...", "[all] ...") from debugger text.

    A guest line cut short by the stop (the debugger's "Next at t=" or
    "(N) ..." on the same line) is returned as `partial`; pass it back in
    front of the next answer to complete it.
    """
    out = GuestOutput([], "")
    rest: List[str] = []
    for line in text.split("\n"):
        m = E9_TAG.search(line)
        if not m:
            d = _DEBUGGER_START.search(line)
            if d and d.start() and line[:d.start()].strip():
                # the guest had printed the start of a line (even part of its tag, "[cp")
                # when the debugger stopped: keep it to complete with the next answer
                out.partial = line[:d.start()]
                rest.append(line[d.start():])
            else:
                rest.append(line)
            continue
        if m.start():
            rest.append(line[:m.start()])
        body = line[m.end():]
        d = _DEBUGGER_START.search(body)
        if d:
            rest.append(body[d.start():])
            out.partial = line[m.start():m.end()] + body[:d.start()]
            continue
        out.lines.append((int(m.group(2)) if m.group(2) else None, body.rstrip("\r")))
    kept = [x for x in rest if x.strip()]
    out.debugger = "\n".join(kept) + ("\n" if kept else "")
    return out


@dataclass(frozen=True)
class LogLine:
    """One line of Bochs' log file."""

    tick: int
    level: str            # "i" info, "e" error, "p" panic, "d" debug
    component: str        # "CPU1", "APIC0", "BIOS", ...
    cpu: Optional[int]    # for CPUn components
    message: str


_LOG = re.compile(r"^(\d+)([ieldp])\[([A-Za-z0-9_ ]*)\] (.*)$")


def parse_log_line(line: str) -> Optional[LogLine]:
    """A Bochs log line ("00014499281e[CPU1  ] VMXON: ..."), None for other text."""
    m = _LOG.match(line.rstrip())
    if not m:
        return None
    comp = m.group(3).strip()
    cm = re.fullmatch(r"CPU(\d+)", comp)
    return LogLine(int(m.group(1)), m.group(2), comp, int(cm.group(1)) if cm else None, m.group(4).strip())


VMX_LOG = re.compile(r"^(VMFAIL|VMXON|VMEXIT|VMENTER|VMLAUNCH|VMRESUME|VMPTRLD|VMCLEAR|VMREAD|VMWRITE|VMX)\b")


def is_vmx_log(line: LogLine) -> bool:
    """A log line worth showing beside a finding: errors and panics, and every VMX message."""
    return line.level in ("e", "p") or bool(VMX_LOG.match(line.message))
