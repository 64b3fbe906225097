"""Register output: `r`, `r cr0`, `r cr4, cr3`, `rM 80`, the full x64/x86 dump,
`r gdtr`/`gdtl`/`idtr`/`idtl`, and the current-instruction line under a dump.

A register line is one whose every token is `name=hexvalue` or a flag
mnemonic of the `iopl=0 nv up ei pl zr ...` line, with at least one name
this module knows. Known names map to snapshot places (data, below).
"""
from __future__ import annotations

import itertools
import re
from typing import Any, Dict, List, Optional, Tuple

from ...common.errors import InputError
from .output import CommandOutput
from .reader import MAX_LINE, Line
from .state import MAX_CONTEXT_TEXT, LogState, NonLiveContext

# debugger register name -> (kind, snapshot name[, part])
#   reg: Processor.registers; seg: selector of a segment register; tab: part of gdtr/idtr
_GPRS = ("rax rbx rcx rdx rsi rdi rbp rsp rip r8 r9 r10 r11 r12 r13 r14 r15 "
         "eax ebx ecx edx esi edi ebp esp eip").split()
REGISTERS: Dict[str, Tuple[str, ...]] = {name: ("reg", name) for name in _GPRS}
REGISTERS.update({
    "efl": ("reg", "rflags"), "rflags": ("reg", "rflags"), "eflags": ("reg", "rflags"),
    "cr0": ("reg", "cr0"), "cr2": ("reg", "cr2"), "cr3": ("reg", "cr3"), "cr4": ("reg", "cr4"),
    "cr8": ("reg", "cr8"), "efer": ("reg", "efer"), "xcr0": ("reg", "xcr0"),
    "dr0": ("reg", "dr0"), "dr1": ("reg", "dr1"), "dr2": ("reg", "dr2"), "dr3": ("reg", "dr3"),
    "dr6": ("reg", "dr6"), "dr7": ("reg", "dr7"),
    "cs": ("seg", "cs"), "ss": ("seg", "ss"), "ds": ("seg", "ds"), "es": ("seg", "es"),
    "fs": ("seg", "fs"), "gs": ("seg", "gs"), "tr": ("seg", "tr"), "ldtr": ("seg", "ldtr"),
    "gdtr": ("tab", "gdtr", "base"), "gdtl": ("tab", "gdtr", "limit"),
    "idtr": ("tab", "idtr", "base"), "idtl": ("tab", "idtr", "limit"),
})
_REG_KEY = {place[1]: f"reg:{place[1]}" for place in REGISTERS.values()}
# names that appear in register output but carry nothing the snapshot keeps
IGNORED = {"iopl", "vip", "vif", "fpcw", "fpsw", "fptw", "mxcsr", "dr1x"}
FLAG_MNEMONICS = set("nv ov up dn di ei pl ng nz zr na ac po pe nc cy".split())

_OTHER_REGISTER_PREFIXES = ("xmm", "ymm", "zmm", "st", "mm", "k")
_HEXDIGITS = "0123456789abcdef"
# the name of a `name=value` token of a register line
_NAME = re.compile(r"[a-z][a-z0-9]*")


# A run of consecutive register lines, matched in place in a block of lines: each line
# only blank-separated `name=hexvalue` tokens (at most 16 hex digits, or 8`8) and flag
# mnemonics, within bounds that keep a line far below MAX_LINE. It takes a subset of the
# lines parse_register_line takes (pure ASCII, so `.lower().split()` cuts the same
# tokens); every other line with a `=` goes to the line-by-line path.
_TOKEN = (r"(?:[a-z][a-z0-9]{0,15}=(?:[0-9a-f]{1,16}|[0-9a-f]{8}`[0-9a-f]{8})|"
          + "|".join(sorted(FLAG_MNEMONICS)) + ")")
_REGISTER_RUN = re.compile(rf"(?:[ \t]{{0,64}}{_TOKEN}(?:[ \t]{{1,64}}{_TOKEN}){{0,63}}[ \t]{{0,64}}\n)+",
                           re.IGNORECASE | re.ASCII)
_PAIR = re.compile(r"([a-z][a-z0-9]*)=([0-9a-f`]+)")

# The full register dump of a 64-bit target as WinDbg prints it (lower case, one layout),
# matched as one piece: 8 lines, 24 values. Its lines are register-run lines (above), so
# it gives what the run gives; any other dump goes through the run.
_X64_LINES = (("rax", "rbx", "rcx"), ("rdx", "rsi", "rdi"), ("rip", "rsp", "rbp"), ("r8", "r9", "r10"),
              ("r11", "r12", "r13"), ("r14", "r15"), ("iopl",), ("cs", "ss", "ds", "es", "fs", "gs", "efl"))
_FLAGS = "(?:" + "|".join(sorted(FLAG_MNEMONICS)) + ")"
_X64_DUMP = re.compile("".join(
    " {0,64}iopl=[0-9a-f]{1,16}(?: {1,64}" + _FLAGS + "){0,63} {0,64}\n" if names == ("iopl",) else
    " {0,64}" + " {1,64}".join(f"{name}=([0-9a-f]{{1,16}})" for name in names) + " {0,64}\n"
    for names in _X64_LINES))
# (debugger name, line offset in the dump) of each group of _X64_DUMP
_X64_VALUES = tuple((name, k) for k, names in enumerate(_X64_LINES) for name in names if name != "iopl")
# its groups: plain registers on lines 0-5, then the selectors and efl on line 7
_X64_CS = [name for name, _ in _X64_VALUES].index("cs")
_X64_PLAIN = tuple(REGISTERS[name][1] for name, _ in _X64_VALUES[:_X64_CS])
_X64_PLAIN_KEYS = tuple(f"reg:{place}" for place in _X64_PLAIN)
_X64_PLAIN_LINES = tuple(k for _, k in _X64_VALUES[:_X64_CS])
_X64_SELECTORS = tuple(REGISTERS[name][1] for name, _ in _X64_VALUES[_X64_CS:-1])


class BadValue(ValueError):
    """A known register with a value that is not hex."""


class TooWide(ValueError):
    """A known register with a hex value wider than 64 bits: bad input, not a warning."""


def parse_register_line(text: str) -> Optional[List[Tuple[str, int]]]:
    """[(debugger name, value)] when `text` is a register line, None when it is not one.

    Raises BadValue when it is one but a known register's value does not parse.
    """
    if "=" not in text:
        return None
    # Token by token with str methods (a hot loop: every `=` line of every register
    # output): each blank-separated token must be `name=value` or a flag mnemonic.
    out: List[Tuple[str, int]] = []
    bad: List[str] = []
    too_wide: Optional[str] = None   # the first known register wider than 64 bits
    for token in text.lower().split():
        name, eq, value = token.partition("=")
        if not eq:
            if token in FLAG_MNEMONICS:
                continue
            return None
        if too_wide is not None:
            if not _NAME.fullmatch(name):
                return None
            continue
        if name in REGISTERS:
            digits = value.replace("`", "")
            if (len(value) <= 17 and digits and len(value) - len(digits) <= 1
                    and not digits.strip(_HEXDIGITS)
                    and (len(digits) <= 16 or len(digits.lstrip("0")) <= 16)):
                # hex digits, at most one backtick (`00000000`0012f9a8`)
                out.append((name, int(digits, 16)))
            elif len(digits.lstrip("0")) > 16 and not digits.strip(_HEXDIGITS):
                # no register a kd `r` prints is wider than 64 bits
                too_wide = (f"{name} = {value[:24]}{'...' if len(value) > 24 else ''} is too wide "
                            f"({len(digits.lstrip('0'))} hex digits; a register holds at most 64 bits)")
            else:
                bad.append(f"{name}={value}")
        elif not _NAME.fullmatch(name):
            return None
        elif name not in IGNORED and not (name.isalnum() and name.startswith(_OTHER_REGISTER_PREFIXES)):
            return None
    if too_wide is not None:
        raise TooWide(too_wide)
    if bad:
        raise BadValue(f"register value does not parse: {', '.join(bad)}")
    return out or None


# A disassembly line of the current instruction, with the effective address and
# the value there: `fffff801`0465100c f30fc7742408  vmxon qword ptr [rsp+8] ss:0018:fffff880`0312a9f8=00000000`1a2b3000`
_CURRENT_VMX = re.compile(
    r"^(?:[0-9a-f]{4}:)?[0-9a-f]{8}`?(?:[0-9a-f]{8})?\s+[0-9a-f]+\s+"
    r"(vmxon|vmptrld|vmclear)\s+qword ptr \[[^\]]*\]\s+"
    r"(?:[a-z]{2}:[0-9a-f]{4}:)?[0-9a-f`]+=([0-9a-f]{8}`?[0-9a-f]{8}|\?+)\s*$")


def parse_current_vmx(text: str) -> Optional[Tuple[str, Optional[int]]]:
    """(instruction, operand or None when unreadable) for a current-instruction line of
    VMXON/VMPTRLD/VMCLEAR showing its memory operand; None for any other line."""
    m = _CURRENT_VMX.match(text.strip().lower())
    if m is None:
        return None
    value = m.group(2)
    return m.group(1), (None if "?" in value else int(value.replace("`", ""), 16))


def register_target(expr: str) -> Optional[str]:
    """The debugger register name an expression like `cr4` or `@cr4` names, else None."""
    e = expr.strip().lower()
    if e.startswith("@"):
        e = e[1:]
    return e if e in REGISTERS else None


_ASSIGN = re.compile(r"^@?([a-z][a-z0-9]*)\s*=\s*(?:0x)?([0-9a-f]+(?:`[0-9a-f]+)?)$")


def parse_register_command(args: str) -> Tuple[List[Tuple[str, int]], bool]:
    """For `r ARGS`: ([(name, value)] written by plain-number assignments, whether the
    command displays registers). `r cr4=850ef8` writes; `r cr4, cr3` displays."""
    writes: List[Tuple[str, int]] = []
    displays = False
    for part in args.split(","):
        part = part.strip().lower()
        if not part:
            displays = displays or not args.strip()
            continue
        if "=" in part:
            m = _ASSIGN.match(part)
            if m and m.group(1) in REGISTERS:
                writes.append((m.group(1), int(m.group(2).replace("`", ""), 16)))
        else:
            displays = True
    if not args.strip():
        displays = True
    return writes, displays


def apply_register(state: LogState, cpu: int, name: str, value: int, line: int) -> None:
    """Put debugger register `name` = `value` (seen on `line`) in its snapshot place."""
    place = REGISTERS[name]
    if place[0] == "reg":
        state.set_register(cpu, place[1], value, line)
    elif place[0] == "seg":
        state.set_selector(cpu, place[1], value & 0xFFFF, line)
    else:
        state.set_table(cpu, place[1], place[2], value, line)


class RegisterOutput(CommandOutput):
    """Output that may hold register lines and the current instruction: `r`, `rM`,
    the step/go commands, and the context commands (then `live` is False and the
    values go to a NonLiveContext instead of the snapshot)."""

    def __init__(self, state: LogState, cpu: int, command: str, line: int, live: bool = True,
                 kind: str = "") -> None:
        super().__init__(state, cpu, command, line, live, kind)
        self.context: Optional[NonLiveContext] = None
        if not live:
            self.context = NonLiveContext(kind or command.split()[0], cpu, line)
        self.writes: List[Tuple[str, int]] = []  # `r name=value` asked on the command line
        self.refused = False                      # ... and the debugger answered with an error

    KEY = "="  # register lines and a VMX instruction's `...=operand` all have one

    def feed_lines(self, lines: List[str], first: int) -> None:
        if self.context is not None:
            self._keep_for_context("".join(t + "\n" for t in lines), first)
            return
        if self.writes and not self.refused and any("error" in t.lower() for t in lines):
            self.refused = True
        if self.state.frozen_line is not None:
            super().feed_lines(lines, first)
            return
        # The common case, inlined: plain registers of the live processor go straight
        # into the snapshot with one provenance string per line.
        state = self.state
        p = state.processor(self.cpu)
        registers, provenance = p.registers, p.provenance
        source = state.result.source
        for n, text in enumerate(lines, first):
            if "=" not in text:
                continue
            if len(text) > MAX_LINE:
                super().feed_lines([text], n)
                continue
            try:
                values = parse_register_line(text)
            except BadValue as exc:
                state.warn(n, str(exc))
                continue
            except TooWide as exc:
                raise InputError(str(exc), source=source, line=n) from None
            if values is None:
                self._current_instruction(Line(n, text))
                continue
            where: Any = n
            for name, value in values:
                place = REGISTERS[name]
                if place[0] == "reg" and place[1] != "efer":
                    registers[place[1]] = value
                    provenance[_REG_KEY[place[1]]] = where
                else:
                    apply_register(state, self.cpu, name, value, n)

    def feed_segment(self, text: str, start: int, end: int, first: int) -> None:
        """Only lines with a `=` are looked at (found with str.find); consecutive register
        lines are matched as one run, and their `name=value` pairs taken with one findall
        per line. Any other line with a `=` (the current instruction, a bad value, a name
        this module does not know) goes to `feed_lines`, one line at a time. A saved
        context's lines are only kept, to be read when the parse ends."""
        if self.context is not None:
            self._keep_for_context(text, first, start, end)
            return
        if self.state.frozen_line is not None:
            super().feed_segment(text, start, end, first)
            return
        if self.writes and not self.refused and "error" in text[start:end].lower():
            self.refused = True
        find, count, match = text.find, text.count, _REGISTER_RUN.match
        pos, n = start, first
        while True:
            k = find("=", pos, end)
            if k < 0:
                return
            line_start = text.rfind("\n", pos, k) + 1 or pos
            n += count("\n", pos, line_start)
            dump = _X64_DUMP.match(text, line_start, end)
            if dump is not None:
                self._apply_x64(dump.groups(), n)
                pos, n = dump.end(), n + len(_X64_LINES)
                continue
            m = match(text, line_start, end)
            if m is None:
                line_end = find("\n", k, end)
                self.feed_lines([text[line_start:line_end]], n)
                pos, n = line_end + 1, n + 1
                continue
            pos = m.end()
            run = text[line_start:pos - 1]
            for line, low in zip(run.split("\n"), run.lower().split("\n")):
                values: list[tuple[str, int]] | None = []
                for name, value in _PAIR.findall(low):
                    if name in REGISTERS:
                        values.append((name, int(value.replace("`", ""), 16)))
                    elif name not in IGNORED and not name.startswith(_OTHER_REGISTER_PREFIXES):
                        values = None   # not a register line: the line-by-line path decides
                        break
                if values is None:
                    self.feed_lines([line], n)
                elif values:
                    self._apply(values, n)
                n += 1

    def _apply_x64(self, values: tuple[str, ...], first: int) -> None:
        """The values of a _X64_DUMP match, in the order the run would apply them (live
        registers only: a saved context's lines are read by `feed`)."""
        numbers = list(map(int, values, itertools.repeat(16)))
        state, cpu = self.state, self.cpu
        p = state.processor(cpu)
        last: Any = first + len(_X64_LINES) - 1   # the selectors' and efl's line
        p.registers.update(zip(_X64_PLAIN, numbers))
        p.provenance.update(zip(_X64_PLAIN_KEYS, map(first.__add__, _X64_PLAIN_LINES)))
        state.set_selectors(cpu, zip(_X64_SELECTORS, [v & 0xFFFF for v in numbers[_X64_CS:-1]]), last)
        p.registers["rflags"] = numbers[-1]
        p.provenance["reg:rflags"] = last

    def _apply(self, values: list[tuple[str, int]], line: int) -> None:
        """The values of one register line of the live processor (the state is not frozen)."""
        p = self.state.processor(self.cpu)
        where: Any = line
        for name, value in values:
            place = REGISTERS[name]
            if place[0] == "reg" and place[1] != "efer":
                p.registers[place[1]] = value
                p.provenance[_REG_KEY[place[1]]] = where
            else:
                apply_register(self.state, self.cpu, name, value, line)

    def feed(self, line: Line) -> None:
        try:
            values = parse_register_line(line.text)
        except BadValue as exc:
            self.state.warn(line.number, str(exc))
            return
        except TooWide as exc:
            raise InputError(str(exc), source=self.state.result.source, line=line.number) from None
        if values is None:
            if self.live:
                self._current_instruction(line)
            return
        if self.context is not None:
            self.context.registers.update(values)
            return
        for name, value in values:
            apply_register(self.state, self.cpu, name, value, line.number)

    def _current_instruction(self, line: Line) -> None:
        found = parse_current_vmx(line.text)
        if found is None:
            return
        instruction, operand = found
        if operand is None:
            self.state.note(line.number, f"{instruction} operand could not be read")
            return
        self.state.set_operand(self.cpu, instruction, operand, line.number)

    def _keep_for_context(self, text: str, first: int, start: int = 0, end: int = -1) -> None:
        """Keep the lines of text[start:end] from the first to the last holding a `=`
        (no other line can matter) in the saved context, to be read at the end."""
        context = self.context
        assert context is not None
        if end < 0:
            end = len(text)
        k = text.find("=", start, end)
        if k < 0:
            return
        line_start = text.rfind("\n", start, k) + 1 or start
        line_end = text.find("\n", text.rfind("=", k, end), end) + 1
        context.keep(first + text.count("\n", start, line_start), text[line_start:line_end])

    def end(self) -> None:
        if self.context is not None and (self.context.pending or self.context.cut):
            self.state.add_context(self.context)
        if self.refused:
            self.state.note(self.line, "the debugger refused the register write")
            return
        for name, value in self.writes:
            apply_register(self.state, self.cpu, name, value, self.line)


def read_saved_contexts(state: LogState) -> None:
    """Read the lines kept for each saved context (NonLiveContext.pending) into its
    registers, as the line-by-line path reads a context; a context that shows no register
    is dropped. Warnings found here are sorted into line order with the others."""
    kept = []
    for ctx in state.result.contexts:
        reader = RegisterOutput(state, ctx.cpu, ctx.kind, ctx.line, False, ctx.kind)
        reader.context = ctx
        for first, text in ctx.pending:
            CommandOutput.feed_lines(reader, text.split("\n")[:-1], first)
        ctx.pending = []
        if ctx.cut:
            state.warn(ctx.cut, f"the saved context of line {ctx.line} ({ctx.kind}) shows more than "
                                f"{MAX_CONTEXT_TEXT} characters of register lines; the rest were not read")
        if ctx.registers:
            kept.append(ctx)
    state.result.contexts[:] = kept
    state.result.warnings.sort(key=lambda w: w.line)
