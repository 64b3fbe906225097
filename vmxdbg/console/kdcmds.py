"""kd-style commands over any Backend, shared by the replay console and WinDbg's `!vmxcheck`.

    state = KdState(backend)
    print(execute(state, "rdmsr 480"), end="")      # msr[480] = 00da0400`00000004

`execute(state, line)` runs one command line and returns its output text
(every line ends in a newline); bad input raises a VmxdbgError with one line.
Output mimics WinDbg: `cr0=0000000080050033`, `msr[480] = 00da0400`00000004`,
`#1a2b3000 00000000`00000004 ...` for physical dumps. Values are typed as
WinDbg accepts them (hex by default, `0n` decimal, backtick halves).

Commands: `~` `~N` `~Ns` (processors), `r [names]`, `rdmsr MSR`, `!dq` `!dd`
`!db ADDR [L count]` (physical memory), `!vmread FIELD`, `!vmxcheck`, and on
a backend with recorded stops (a replay): `t` `p` `g` forward, `t-` `p-` `g-`
(also `tb` `pb` `gb`) back, `!tt N` to a stop, `!stops`; `help`, `q`.
Stopping backends expose `stop_count()`, `stop_event(k)`, `seek(k)` and
`position` (see vmxdbg.record.replay).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..backends.base import SEGMENT_NAMES, TABLE_NAMES, VIRTUAL, Backend, StopEvent
from ..common.errors import BackendError, InputError, NotAvailable, VmxdbgError, one_line
from ..state.snapshot import Snapshot
from ..common.numbers import parse_count, parse_int, windbg_hex

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rip", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
CONTROL = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "dr7")
OTHER = ("rflags", "dr0", "dr1", "dr2", "dr3", "dr6", "cpl")
#: WinDbg spellings -> the Backend's register names
ALIASES = {"efl": "rflags", "gdtl": "gdtr.limit", "idtl": "idtr.limit", "gdtr": "gdtr.base", "idtr": "idtr.base"}
DUMP_LINES = 8           # !db / !dq without a range: 8 lines of 16 bytes, as WinDbg
MAX_DUMP = 0x10000       # bytes one dump may show
NOT_STOPPING = ("step",)  # stop kinds that `g` runs past
MAX_COMMAND = 4096       # characters of one command line (a paste of a whole log is refused, not echoed)


def register_names() -> List[str]:
    """Every register name `r` accepts (Backend names and WinDbg aliases)."""
    names = list(GPRS + CONTROL + OTHER)
    names += [f"{s}.{p}" for s in SEGMENT_NAMES for p in ("selector", "base", "limit", "attributes")]
    names += list(SEGMENT_NAMES)
    names += [f"{t}.{p}" for t in TABLE_NAMES for p in ("base", "limit")]
    return names + list(ALIASES)


@functools.lru_cache(maxsize=1)
def msr_names() -> Dict[str, int]:
    """MSR names from structs/ (upper case) -> index; empty if the definitions cannot load."""
    try:
        from ..decode import defs
        return {r.name: r.msr for r in defs.registers() if r.msr is not None}
    except VmxdbgError:
        return {}


@functools.lru_cache(maxsize=1)
def vmcs_names() -> Dict[str, int]:
    """VMCS field names from structs/ -> encoding; empty if the definitions cannot load."""
    try:
        from ..decode import defs
        return {f.name: f.encoding for f in defs.vmcs_fields()}
    except VmxdbgError:
        return {}


# ------------------------------------------------------------------ state

@dataclass
class KdState:
    """What commands act on: a backend, the current processor, and how to get a Snapshot.

    `snapshot_of(state)` gives the Snapshot `!vmxcheck` checks; the default
    collects it from the backend with `vmxon_pointers`.
    """

    backend: Backend
    cpu: int = 0
    vmxon_pointers: Dict[int, int] = field(default_factory=dict)
    snapshot_of: Optional[Callable[["KdState"], Snapshot]] = None
    source: str = ""
    done: bool = False

    def __post_init__(self) -> None:
        try:
            cpus = self.backend.processors()
        except BackendError:
            cpus = []
        if cpus and self.cpu not in cpus:
            self.cpu = cpus[0]

    @property
    def prompt(self) -> str:
        """The kd prompt: `0: kd> ` names the current processor."""
        return f"{self.cpu}: kd> "

    def snapshot(self) -> Snapshot:
        if self.snapshot_of is not None:
            return self.snapshot_of(self)
        from ..state.collect import collect
        return collect(self.backend, vmxon_pointers=self.vmxon_pointers, source=self.source)

    @property
    def stops(self) -> bool:
        """True when the backend has recorded stops to move between."""
        return bool(self.backend.stop_count())


# ------------------------------------------------------------------ formatting

def reg_width(name: str) -> int:
    """Hex digits WinDbg prints for a register."""
    if name in SEGMENT_NAMES or name.endswith(".selector"):
        return 4
    if name in ("rflags", "efl", "cpl") or name.endswith((".limit", ".attributes")) or name in ("gdtl", "idtl"):
        return 8
    return 16


def format_reg(name: str, value: Optional[int]) -> str:
    """`cr0=0000000080050033`; an unknown value prints as question marks."""
    w = reg_width(name)
    return f"{name}=" + ("?" * w if value is None else f"{value & (1 << 4 * w) - 1:0{w}x}")


def format_msr(index: int, value: int) -> str:
    """`msr[480] = 00da0400`00000004` as WinDbg's rdmsr prints it."""
    return f"msr[{index:x}] = {windbg_hex(value)}"


def format_dump(address: int, data: Sequence[Optional[int]], unit: int, virtual: bool = False) -> List[str]:
    """!db/!dd/!dq lines: `#1a2b3000 00000000`00000004 ...`; db/dd/dq lines (`virtual`):
    `00000000`002cfd40  42424242`42424242 ...`; None bytes print as `?`."""
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        cells = []
        for u in range(0, len(chunk), unit):
            b = chunk[u:u + unit]
            if any(x is None for x in b):
                text = "?" * (2 * unit)
            else:
                text = f"{int.from_bytes(bytes(b), 'little'):0{2 * unit}x}"  # type: ignore[arg-type]
            if unit == 8:
                text = f"{text[:8]}`{text[8:]}"
            cells.append(text)
        if unit == 1:
            hexpart = " ".join(cells[:8]) + ("-" + " ".join(cells[8:]) if len(cells) > 8 else "")
            ascii_ = "".join("." if x is None or not 0x20 <= x < 0x7F else chr(x) for x in chunk)
            row = f"{hexpart:<47} {ascii_}"
        else:
            row = " ".join(cells)
        if virtual:
            a = f"{address + off:016x}"
            lines.append(f"{a[:8]}`{a[8:]}  {row}")
        else:
            lines.append(f"#{address + off:8x} {row}")
    return lines


def describe_stop(k: int, total: int, ev: Optional[StopEvent]) -> str:
    """One line for arriving at stop k: `stop 2/5: breakpoint 0 hit on cpu 1 at 00000000`00004000`."""
    if ev is None:
        return f"stop 0/{total}: start of the recording"
    what = ev.kind
    if ev.kind == "breakpoint" and ev.breakpoint is not None:
        what = f"breakpoint {ev.breakpoint} hit"
    where = "" if ev.cpu is None else f" on cpu {ev.cpu}"
    at = "" if ev.address is None else f" at {windbg_hex(ev.address)}"
    detail = f" ({ev.detail})" if ev.detail else ""
    return one_line(f"stop {k}/{total}: {what}{where}{at}{detail}")   # kind and detail come from the recording


# ------------------------------------------------------------------ parsing helpers

def _int(text: str, what: str) -> int:
    return parse_int(text, what=what)


def _msr_index(text: str) -> int:
    named = msr_names().get(text.strip().upper())
    return named if named is not None else _int(text, "MSR")


def _dump_range(args: List[str], unit: int) -> Tuple[int, int]:
    """ADDR [L count] (count in units) -> (address, bytes)."""
    if not args:
        raise InputError("usage: ADDRESS [L count]")
    address = _int(args[0], "address")
    count = DUMP_LINES * 16 // unit
    rest = " ".join(args[1:]).replace(" ", "")
    if rest:
        if rest[0] not in "lL":
            raise InputError(f"range {rest!r}: use L followed by a count (L10, L0n16)")
        count = _int(rest[1:], "count")
    size = count * unit
    if not 0 < size <= MAX_DUMP:
        raise InputError(f"range of {size} bytes: a dump shows 1 to {MAX_DUMP} bytes")
    return address, size


def _read_bytes(read: Callable[[int, int], bytes], address: int, size: int, unit: int) -> List[Optional[int]]:
    """The bytes at [address, address+size), unit by unit where the whole range is not known."""
    try:
        return list(read(address, size))
    except NotAvailable:
        pass
    out: List[Optional[int]] = []
    for a in range(address, address + size, unit):
        try:
            out += list(read(a, unit))
        except NotAvailable:
            out += [None] * unit
    return out


def _reg_name(text: str) -> str:
    name = text.strip().lower()
    name = ALIASES.get(name, name)
    if name not in register_names():
        raise InputError(f"Bad register error in 'r {text.strip()}'")
    return name


# ------------------------------------------------------------------ commands

Handler = Callable[[KdState, List[str]], List[str]]


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    help: str
    run: Handler
    needs_stops: bool = False


def cmd_processors(state: KdState, args: List[str]) -> List[str]:
    cpus = state.backend.processors()
    return [f"{'.' if c == state.cpu else ' '}{c:3d}  processor {c}" for c in cpus]


def _tilde(state: KdState, arg: str) -> List[str]:
    """`~N` shows processor N; `~Ns` makes it current."""
    switch = arg.endswith("s")
    number = arg[:-1].strip() if switch else arg
    if not number:
        raise InputError(f"~{arg}: name the processor, e.g. ~1s (~ lists them)")
    if number.isascii() and number.isdigit():
        number = f"0n{number}"          # WinDbg reads a processor number in decimal
    elif not number.lower().startswith(("0x", "0n")):
        raise InputError(f"~{arg}: {number!r} is not a processor number (e.g. ~1s)")
    cpu = _int(number, "processor")
    cpus = state.backend.processors()
    if cpu not in cpus:
        raise InputError(f"~{arg}: no processor {cpu} (the target has {', '.join(map(str, cpus)) or 'none'})")
    if switch:
        state.cpu = cpu
        return []
    regs = state.backend.read_registers(cpu, ["rip", "cr0", "cr4", "rflags"])
    return [f"processor {cpu}: " + " ".join(format_reg(n, regs.get(n)) for n in ("rip", "cr0", "cr4", "rflags"))]


def cmd_r(state: KdState, args: List[str]) -> List[str]:
    """`r` shows the registers; `r cr0` or `r cr0, cr4` the ones named."""
    wanted = [a for a in " ".join(args).replace(",", " ").split() if a]
    if wanted:
        out = []
        for text in wanted:
            name = _reg_name(text)
            if name in SEGMENT_NAMES:
                name = f"{name}.selector"
            value = state.backend.read_register(state.cpu, name)
            out.append(format_reg(text.strip().lower(), value))
        return [" ".join(out)]
    names = list(GPRS + CONTROL) + ["rflags"] + [f"{s}.selector" for s in SEGMENT_NAMES[:6]]
    regs = state.backend.read_registers(state.cpu, names)
    lines = []
    known_gprs = [n for n in GPRS if n in regs]
    if known_gprs:
        for row in (GPRS[0:3], GPRS[3:6], GPRS[6:9], GPRS[9:12], GPRS[12:15], GPRS[15:17]):
            lines.append(" ".join(format_reg(n, regs.get(n)).rjust(20) for n in row).rstrip())
    segs = "  ".join(format_reg(s, regs.get(f"{s}.selector")) for s in ("cs", "ss", "ds", "es", "fs", "gs"))
    lines.append(f"{segs}             {format_reg('efl', regs.get('rflags'))}")
    lines.append(" ".join(format_reg(n, regs.get(n)) for n in CONTROL if n in regs) or "(no control registers known)")
    return lines


def cmd_rdmsr(state: KdState, args: List[str]) -> List[str]:
    if len(args) != 1:
        raise InputError("usage: rdmsr MSR (an index like 480 or 0x3a, or a name like IA32_VMX_BASIC)")
    index = _msr_index(args[0])
    return [format_msr(index, state.backend.read_msr(state.cpu, index))]


def _dump(unit: int, virtual: bool = False) -> Handler:
    """`!db`/`!dd`/`!dq` (physical memory) or `db`/`dd`/`dq` (the current processor's
    virtual memory, as far as the source shows it: a kd log's own dumps)."""
    def run(state: KdState, args: List[str]) -> List[str]:
        address, size = _dump_range(args, unit)
        if virtual:
            if VIRTUAL not in state.backend.capabilities():
                raise NotAvailable("this source shows no virtual memory", backend=state.backend.name,
                                   cpu=state.cpu, what=f"virtual 0x{address:x}+0x{size:x}")
            cpu = state.cpu
            data = _read_bytes(lambda a, n: state.backend.read_virtual(cpu, a, n), address, size, unit)
        else:
            data = _read_bytes(state.backend.read_physical, address, size, unit)
        if all(x is None for x in data):
            raise NotAvailable(f"{'virtual' if virtual else 'physical'} memory not available",
                               backend=state.backend.name, what=f"0x{address:x}+0x{size:x}")
        return format_dump(address, data, unit, virtual)
    return run


def cmd_vmread(state: KdState, args: List[str]) -> List[str]:
    if len(args) != 1:
        raise InputError("usage: !vmread FIELD (an encoding like 6800 or a name like GUEST_CR0)")
    from ..decode import defs
    f = defs.vmcs_field(args[0] if not args[0][:1].isdigit() else f"0x{args[0].lower().replace('0x', '')}")
    value = state.backend.read_vmcs(state.cpu, f.encoding)
    return [f"{f.name} ({f.encoding:04x}) = {windbg_hex(value)}"]


def cmd_vmxcheck(state: KdState, args: List[str]) -> List[str]:
    """`!vmxcheck [-v] [cpu N] [rule ID]`: the report of the current state, or one rule's documentation."""
    from ..report.render import render_text
    from ..rules import check_snapshot
    verbose = "-v" in args
    rest = [a for a in args if a != "-v"]
    if rest[:1] == ["rule"] and len(rest) == 2:
        return rule_doc(rest[1])
    cpus: Optional[List[int]] = None
    if rest[:1] == ["cpu"] and len(rest) == 2:
        cpus = [parse_count(rest[1], what="processor")]
    elif rest:
        raise InputError("usage: !vmxcheck [-v] [cpu N] [rule ID]")
    snap = state.snapshot()
    if cpus and cpus[0] not in snap.processors:
        raise InputError(f"!vmxcheck: no processor {cpus[0]}")
    report = check_snapshot(snap, cpus)
    return render_text(report, snap, verbose=verbose).rstrip("\n").split("\n")


def rule_doc(rule_id: str) -> List[str]:
    from ..rules.engine import all_rules
    rules = {r.id: r for r in all_rules()}
    r = rules.get(rule_id.upper())
    if r is None:
        raise InputError(f"no rule {rule_id!r}")
    return [f"{r.id} {r.title}", f"  SDM: {r.sdm}", f"  checks: {r.checks}", f"  when broken: {r.broken}",
            f"  fix: {r.fix}"]


# -- moving between recorded stops --------------------------------------------

def _arrive(state: KdState, k: int) -> List[str]:
    b = state.backend
    b.seek(k)  # type: ignore[attr-defined]
    ev = b.stop_event(k) if k else None  # type: ignore[attr-defined]
    if ev is not None and ev.cpu is not None:
        state.cpu = ev.cpu
    return [describe_stop(k, b.stop_count(), ev)]  # type: ignore[attr-defined]


def _count(args: List[str]) -> int:
    if not args:
        return 1
    return _int(args[0] if args[0].startswith(("0x", "0n")) else f"0n{args[0]}", "count")


def _move(direction: int, matches: Callable[[KdState, StopEvent], bool]) -> Handler:
    def run(state: KdState, args: List[str]) -> List[str]:
        b = state.backend
        total = b.stop_count()  # type: ignore[attr-defined]
        k = b.position  # type: ignore[attr-defined]
        out: List[str] = []
        for _ in range(_count(args)):
            j = k + direction
            while 0 < j <= total and not matches(state, b.stop_event(j)):  # type: ignore[attr-defined]
                j += direction
            if j > total:
                out.append(f"no further recorded stop (at stop {k}/{total}, the end)")
                break
            if j < 0 or (j == 0 and k == 0):
                out.append(f"no earlier recorded stop (at stop {k}/{total}, the start)")
                break
            j = max(j, 0)
            out = _arrive(state, j)
            k = j
        return out
    return run


def _any(state: KdState, ev: StopEvent) -> bool:
    return True


def _this_cpu(state: KdState, ev: StopEvent) -> bool:
    return ev.cpu is None or ev.cpu == state.cpu


def _not_a_step(state: KdState, ev: StopEvent) -> bool:
    return ev.kind not in NOT_STOPPING


def cmd_tt(state: KdState, args: List[str]) -> List[str]:
    if len(args) != 1:
        raise InputError("usage: !tt N (a stop number; 0 is the start)")
    k = parse_count(args[0], what="stop")
    total = state.backend.stop_count()  # type: ignore[attr-defined]
    if k > total:
        raise InputError(f"!tt {args[0]}: the recording has stops 0 to {total}")
    return _arrive(state, k)


def cmd_stops(state: KdState, args: List[str]) -> List[str]:
    b = state.backend
    total = b.stop_count()  # type: ignore[attr-defined]
    lines = [("> " if b.position == 0 else "  ") + describe_stop(0, total, None)]  # type: ignore[attr-defined]
    for k in range(1, total + 1):
        lines.append(("> " if b.position == k else "  ") + describe_stop(k, total, b.stop_event(k)))  # type: ignore[attr-defined]
    return lines


def cmd_help(state: KdState, args: List[str]) -> List[str]:
    rows = [c for c in COMMANDS if state.stops or not c.needs_stops]
    width = max(len(c.usage) for c in rows)
    return [f"{c.usage.ljust(width)}  {c.help}" for c in rows]


def cmd_quit(state: KdState, args: List[str]) -> List[str]:
    state.done = True
    return []


COMMANDS: Tuple[Command, ...] = (
    Command("~", "~ | ~N | ~Ns", "list processors | show processor N | make N the current processor",
            cmd_processors),
    Command("r", "r [reg[, reg...]]", "registers of the current processor (r cr0, r cs, r efl, r gdtr)", cmd_r),
    Command("rdmsr", "rdmsr MSR", "read an MSR (rdmsr 480, rdmsr IA32_FEATURE_CONTROL)", cmd_rdmsr),
    Command("!db", "!db ADDR [L n]", "physical memory as bytes", _dump(1)),
    Command("!dd", "!dd ADDR [L n]", "physical memory as dwords", _dump(4)),
    Command("!dq", "!dq ADDR [L n]", "physical memory as qwords", _dump(8)),
    Command("db", "db ADDR [L n]", "virtual memory of the current processor as bytes", _dump(1, True)),
    Command("dd", "dd ADDR [L n]", "virtual memory of the current processor as dwords", _dump(4, True)),
    Command("dq", "dq ADDR [L n]", "virtual memory of the current processor as qwords", _dump(8, True)),
    Command("!vmread", "!vmread FIELD", "a field of the current VMCS (!vmread GUEST_CR0, !vmread 6800)", cmd_vmread),
    Command("!vmxcheck", "!vmxcheck [-v] [cpu N] [rule ID]", "check the current state: why VMXON / VM entry fails",
            cmd_vmxcheck),
    Command("t", "t [n]", "forward one recorded stop (n stops)", _move(1, _any), True),
    Command("p", "p [n]", "forward to the next stop on the current processor", _move(1, _this_cpu), True),
    Command("g", "g", "forward to the next stop that is not a single step (breakpoint, VM exit...)",
            _move(1, _not_a_step), True),
    Command("t-", "t- [n] | tb", "back one recorded stop", _move(-1, _any), True),
    Command("p-", "p- [n] | pb", "back to the previous stop on the current processor", _move(-1, _this_cpu), True),
    Command("g-", "g- | gb", "back to the previous stop that is not a single step, or the start",
            _move(-1, _not_a_step), True),
    Command("!tt", "!tt N", "travel to stop N (0 is the start)", cmd_tt, True),
    Command("!stops", "!stops", "list the recorded stops, > marks the current one", cmd_stops, True),
    Command("help", "help | ?", "this list", cmd_help),
    Command("q", "q", "quit", cmd_quit),
)
_BY_NAME: Dict[str, Command] = {c.name: c for c in COMMANDS}
_BY_NAME.update({"tb": _BY_NAME["t-"], "pb": _BY_NAME["p-"], "gb": _BY_NAME["g-"], "?": _BY_NAME["help"],
                 "qq": _BY_NAME["q"], "exit": _BY_NAME["q"]})


def command_names() -> List[str]:
    return sorted(_BY_NAME)


def execute(state: KdState, line: str) -> str:
    """Run one command line; returns its output (each line newline-terminated).

    Bad input raises InputError; a backend that cannot answer raises its BackendError.
    """
    text = line.strip()
    if not text:
        return ""
    if len(text) > MAX_COMMAND:
        raise InputError(f"a command line of {len(text)} characters: at most {MAX_COMMAND} are read")
    if text.startswith("~"):
        body = text[1:].strip()
        out = cmd_processors(state, []) if not body else _tilde(state, body)
        return "".join(f"{x}\n" for x in out)
    word, _, rest = text.partition(" ")
    cmd = _BY_NAME.get(word.lower())
    if cmd is None:
        raise InputError(f"unknown command {word!r} (help lists the commands)")
    if cmd.needs_stops and not state.stops:
        raise InputError(f"{word}: {state.source or 'this input'} has no recorded execution to move through")
    return "".join(f"{x}\n" for x in cmd.run(state, rest.split()))


def complete(state: KdState, before_cursor: str) -> List[str]:
    """Completions for the word being typed: commands first, then registers, MSR or VMCS field names."""
    words = before_cursor.split(" ")
    typed = words[-1]
    low = typed.lower()
    if len(words) == 1:
        cands = [n for n in command_names() if n.startswith(low)]
        return cands if low else []
    cmd = words[0].lower()
    if cmd == "r":
        pool: Sequence[str] = register_names()
    elif cmd == "rdmsr":
        pool = sorted(msr_names())
    elif cmd == "!vmread":
        pool = sorted(vmcs_names())
    elif cmd == "!vmxcheck" and len(words) >= 3 and words[-2] == "rule":
        from ..rules.engine import all_rules
        pool = [r.id for r in all_rules()]
    elif cmd == "!vmxcheck":
        pool = ["cpu", "rule", "-v"]
    else:
        return []
    return [n for n in pool if n.lower().startswith(low.lstrip(","))]
