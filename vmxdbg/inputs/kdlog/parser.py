"""The kd log parser: follows the prompt, hands each command's output to its reader.

A prompt (`0: kd> `, `kd> `, `lkd> `) starts a command; its number is the
processor (a prompt without one is processor 0, or the last `~Ns`). Output
until the next prompt belongs to that command. Commands vmxdbg does not know
are skipped with their output. The register context is "not live" after
`.cxr ADDR`, `.trap ADDR`, `.thread ADDR` or `.ecxr`, until `.cxr`/`.trap`/
`.thread` without an address or until the target runs (`g`, `p`, `t` ...);
the `CONTEXT:`/`TRAP_FRAME:` dumps of `!analyze -v` and `.frame /r` output are
never live. Such register values are kept as NonLiveContexts only.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, List, NamedTuple, Optional, Tuple

from ...common.errors import InputError
from .cpuid import CpuidOutput
from .descriptors import DgOutput
from .expressions import EvaluateOutput, FormatsOutput
from .memory import DumpOutput, dump_kind
from .msr import RdmsrOutput
from .output import CommandOutput
from .reader import MAX_LINE, Block, Line, iter_blocks
from .registers import RegisterOutput, apply_register, parse_register_command, read_saved_contexts
from .state import MAX_CPU, KdLog, KdWarning, LogState

PROMPT = re.compile(r"^\s*(?:(\d{1,5}):\s?)?(l?kd)>\s?(.*)$")
# the same, matched at a line start inside a block of lines
PROMPT_AT = re.compile(r"[^\S\n]*(?:(\d{1,5}):[^\S\n]?)?(l?kd)>[^\S\n]?([^\n]*)")
# e-mail / issue-reply quote marks at the start of a line, nested or not: `> `, `>>`, `> > `
QUOTE = re.compile(r"^[^\S\n]*>(?:[^\S\n]?>)*[^\S\n]?", re.M)
# every character `[^\S\n]` matches (str.isspace() but the line end), spelled out: a class
# of characters is checked faster than a category
BLANK = "[\t\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
# QUOTE as it is used on a block of lines: matched after each line end (a pattern that starts
# with a character is searched for much faster than one that starts with `^`)
_QUOTE_AFTER_LF = re.compile(rf"\n{BLANK}*>(?:{BLANK}?>)*{BLANK}?")
_SWITCH = re.compile(r"^~\s*(\d{1,5})\s*s$", re.I)
_EXECUTION = re.compile(r"^(?:g|gu|gh|gn|p|t|pa|ta|pc|tc|pt|tt|ph|th|wt)(?:\s|$)", re.I)
_CONTEXT = re.compile(r"^\.(cxr|trap|thread|ecxr)(?:\s+(.*))?$", re.I)
# commands that change the address space virtual addresses are read in (the implicit
# process), when given an address: `.process /p ff779190`, `.thread ADDR`, `.context ADDR`
_SPACE = re.compile(r"^\.(process|thread|context)\b(.*)$", re.I)
_SPACE_ADDRESS = re.compile(r"(?:^|\s)(?!/)[0-9a-f`]{4,17}(?:\s|$)", re.I)
_REGISTER = re.compile(r"^r(?:M\s*\S+)?(?:\s|@|$)")
_DG = re.compile(r"^dg(?:\s|$)")
_FORMATS = re.compile(r"^\.formats(?:\s|$)")
_EVALUATE = re.compile(r"^\?(?:\s|$)")
_CPUID = re.compile(r"^!(?:(?:ext|kdexts)\.)?cpu(?:id|info)(?:\s|$)")
_FRAME_R = re.compile(r"^\.frame\b.*/r")
_ANALYZE = re.compile(r"^!analyze(?:\s|$)")

# command family -> reader class; the family of a command is found by `family()`
READERS = {
    "rdmsr": RdmsrOutput,
    "dump": DumpOutput,
    "dg": DgOutput,
    "formats": FormatsOutput,
    "evaluate": EvaluateOutput,
    "cpuid": CpuidOutput,
}


@functools.lru_cache(maxsize=4096)   # a log repeats its commands (r, k, g ...): decide each once
def family(command: str) -> str:
    """The family of one command (no `;`): a READERS key, or registers / execution /
    context / switch / analyze / other."""
    c = command.strip()
    low = c.lower()
    if low.startswith("rdmsr"):
        return "rdmsr"
    if _REGISTER.match(c):
        return "registers"
    if dump_kind(c) is not None:
        return "dump"
    if _DG.match(low):
        return "dg"
    if _FORMATS.match(low):
        return "formats"
    if _EVALUATE.match(low):
        return "evaluate"
    if _CPUID.match(low):
        return "cpuid"
    if _EXECUTION.match(c):
        return "execution"
    if _CONTEXT.match(c):
        return "context"
    if _FRAME_R.match(low):
        return "frame"
    if _SWITCH.match(c):
        return "switch"
    if _ANALYZE.match(low):
        return "analyze"
    return "other"


@functools.lru_cache(maxsize=4096)
def plan(text: str) -> Tuple[Tuple[str, ...], Tuple[str, ...], int]:
    """The commands after a prompt (split at `;`), their families, and the index of the
    one whose output is read (-1: none; several readable commands share one output,
    which then cannot be told apart)."""
    commands = tuple(c.strip() for c in text.split(";") if c.strip())
    families = tuple(family(c) for c in commands)
    readable = [f for f in families if f not in ("other", "switch")]
    index = families.index(readable[0]) if len(set(readable)) == 1 else -1
    return commands, families, index


def _effects(command: str, fam: str) -> Tuple[Tuple[str, object], ...]:
    """What a command changes by itself, as (what, value) pairs applied in order by
    KdParser._prompt: `space` (the command that made virtual addresses another address
    space's, or None: the processor's own again), `switch` (the processor of prompts
    without a number), `live` ((live, kind) of the register context) and `writes`
    (register writes `r cr4=426f8` asks for, applied while the context is live)."""
    out: List[Tuple[str, object]] = []
    space = _SPACE.match(command)
    if space is not None:
        # virtual dumps after this are of another address space, not the processor's own
        out.append(("space", command if _SPACE_ADDRESS.search(space.group(2)) else None))
    if fam == "switch":
        m = _SWITCH.match(command)
        assert m is not None
        if int(m.group(1)) < MAX_CPU:
            out.append(("switch", int(m.group(1))))
    elif fam == "execution":
        out += [("live", (True, "")), ("space", None)]
    elif fam == "context":
        m = _CONTEXT.match(command)
        assert m is not None
        if m.group(1).lower() == "ecxr" or (m.group(2) or "").strip():
            out.append(("live", (False, "." + m.group(1).lower())))
        else:
            out.append(("live", (True, "")))
    elif fam == "registers":
        writes = _register_writes(command)
        if writes:
            out.append(("writes", tuple(writes)))
    return tuple(out)


def _register_writes(command: str) -> List[Tuple[str, int]]:
    """The register writes an `r` command asks for (`r cr4=426f8`)."""
    return parse_register_command(re.sub(r"^r(?:M\s*\S+)?", "", command, count=1))[0]


def _not_live_reader(kind: str) -> Callable[..., CommandOutput]:
    """A maker of readers for output that shows a saved context of this kind, whatever
    the current one."""
    def make(state: LogState, cpu: int, command: str, line: int, *_current_context: object) -> CommandOutput:
        return RegisterOutput(state, cpu, command, line, False, kind)
    return make


# command family -> what makes its reader, called (state, cpu, command, line, live, kind)
MAKERS: dict[str, Callable[..., CommandOutput]] = {
    **READERS, "registers": RegisterOutput, "execution": RegisterOutput, "context": RegisterOutput,
    "frame": _not_live_reader(".frame /r"), "analyze": _not_live_reader("!analyze")}


class Prompt(NamedTuple):
    """What a prompt line says, decided once per distinct line text (`prompt_of`)."""

    cpu: int | None                # the number before `kd>`, None when there is none
    effects: Tuple[Tuple[str, object], ...]   # what its commands change, in order (see _effects)
    # the common case, done in KdParser.feed_text without a call: a processor number in
    # range and no side effect
    simple: bool
    make: Callable[..., CommandOutput] | None   # MAKERS[family of the read command], or None
    command: str                   # the command whose output `make`'s reader reads


def prompt_of(line: str) -> Prompt | None:
    """The Prompt a line holds, or None when it is not a kd prompt line."""
    m = PROMPT_AT.match(line)
    if m is None:
        return None
    cpu = None if m.group(1) is None else int(m.group(1))
    commands, families, index = plan(m.group(3))
    effects = tuple(e for c, f in zip(commands, families) for e in _effects(c, f))
    make = MAKERS.get(families[index]) if index >= 0 else None
    simple = not effects and (cpu is None or cpu < MAX_CPU)
    return Prompt(cpu, effects, simple, make, commands[index] if index >= 0 else "")


# prompt lines are cached by their text up to this length (a log repeats its prompts)
_CACHED_PROMPT = 256
_PROMPT_CACHE_SIZE = 4096


class KdParser:
    """Feed it lines (`feed`), then `finish()` for the KdLog."""

    def __init__(self, source: str, fast: bool = True) -> None:
        self.state = LogState(source)
        self.cpu = 0          # processor of the current prompt
        self.default_cpu = 0  # processor of a prompt without a number (after ~Ns)
        self.live = True      # register context: the processor's own (not .cxr/.trap/.thread)
        self.live_kind = ""   # which command made it not live
        self.reader: Optional[CommandOutput] = None
        self.lines = 0
        self.fast = fast      # readers take whole runs of output lines (False: line by line, as a check)
        self._prompts: dict[str, Prompt | None] = {}
        self._processors = self.state.result.snapshot.processors

    # ----------------------------------------------------------------- blocks
    def feed(self, block: Block) -> None:
        """A block of the log (see reader.Block)."""
        if block.truncated:
            self.lines = block.number
            self.state.warn(block.number, f"line longer than {MAX_LINE} characters; cut there and not used")
            return
        if not block.ended:
            if block.text.strip():
                self.state.frozen_line = block.number
            self.feed_text(block.text + "\n", block.number)
            return
        self.feed_text(block.text, block.number)

    def feed_text(self, text: str, number: int) -> None:
        """Whole lines (each ending in "\n"), the first numbered `number`. Prompts are
        found with str.find; output between them goes to the current reader in one call
        (a slice of `text`), or is not looked at when no reader wants it (most of a real log)."""
        if text[:1] == ">" or "\n>" in text:
            text = _QUOTE_AFTER_LF.sub("\n", "\n" + text)[1:]   # = QUOTE.sub("", text)
        find, rfind, count = text.find, text.rfind, text.count
        cache = self._prompts
        state, processors, result = self.state, self._processors, self.state.result
        fast = self.fast
        seg, seg_no, search = 0, number, 0
        while True:
            k = find("kd>", search)
            if k < 0:
                break
            start = rfind("\n", 0, k) + 1
            end = find("\n", k)
            search = end + 1
            line = text[start:end]
            p = cache.get(line, False)
            if p is False:
                p = prompt_of(line)
                if len(line) <= _CACHED_PROMPT:
                    if len(cache) >= _PROMPT_CACHE_SIZE:
                        cache.clear()
                    cache[line] = p
            if p is None:
                continue
            line_no = seg_no + count("\n", seg, start)
            reader = self.reader
            if reader is not None and start > seg:
                if fast:
                    reader.feed_segment(text, seg, start, seg_no)
                else:
                    reader.feed_lines(text[seg:start].split("\n")[:-1], seg_no)
            seg, seg_no = end + 1, line_no + 1
            if end - start > MAX_LINE:
                state.warn(line_no, f"line longer than {MAX_LINE} characters; cut there and not used")
                continue
            if not p.simple:
                self._prompt(p, line_no)
                continue
            # _prompt, for the common case
            if reader is not None:
                reader.end()
                self.reader = None
            result.prompts += 1
            cpu = p.cpu
            if cpu is None:
                cpu = self.default_cpu
            self.cpu = cpu
            if cpu not in processors:
                state.processor(cpu)
            if p.make is not None:
                self.reader = p.make(state, cpu, p.command, line_no, self.live, self.live_kind)
        if self.reader is not None and seg < len(text):
            self._output(text, seg, len(text), seg_no)
        self.lines = number + count("\n") - 1

    def _output(self, text: str, start: int, end: int, first: int) -> None:
        assert self.reader is not None
        if self.fast:
            self.reader.feed_segment(text, start, end, first)
        else:
            self.reader.feed_lines(text[start:end].split("\n")[:-1], first)

    def feed_line(self, line: Line) -> None:
        """One line (tests and callers that hold Line objects)."""
        if line.truncated:
            self.feed(Block(line.text, line.number, line.ended, True))
        elif not line.ended:
            self.feed(Block(line.text, line.number, False))
        else:
            self.feed_text(line.text.replace("\n", " ") + "\n", line.number)

    def _prompt(self, p: Prompt, number: int) -> None:
        self._end_output()
        state = self.state
        state.result.prompts += 1
        cpu = p.cpu
        if cpu is None:
            cpu = self.default_cpu
        elif cpu >= MAX_CPU:
            state.warn(number, f"processor number {cpu} is out of range; prompt ignored")
            return
        self.cpu = cpu
        if cpu not in self._processors:
            state.processor(cpu)
        writes: List[Tuple[str, int]] = []
        for what, value in p.effects:
            if what == "space":
                state.foreign_space = value  # type: ignore[assignment]
            elif what == "switch":
                self.default_cpu = value  # type: ignore[assignment]
                state.processor(value)  # type: ignore[arg-type]
            elif what == "live":
                self.live, self.live_kind = value  # type: ignore[misc]
            elif what == "writes" and self.live:
                writes += value  # type: ignore[arg-type]
        if p.make is not None:
            self.reader = p.make(state, cpu, p.command, number, self.live, self.live_kind)
        if writes:
            if isinstance(self.reader, RegisterOutput):
                self.reader.writes = writes  # applied unless the debugger answers with an error
            else:
                for name, value in writes:
                    apply_register(state, self.cpu, name, value, number)

    def _end_output(self) -> None:
        if self.reader is not None:
            self.reader.end()
            self.reader = None

    def finish(self) -> KdLog:
        self._end_output()
        read_saved_contexts(self.state)
        return self.state.finish(self.lines)


def parse_lines(lines: Iterable[Line], source: str, at_line: Optional[int] = None) -> KdLog:
    """Parse numbered lines (stopping after `at_line` when given)."""
    parser = KdParser(source)
    for line in lines:
        if at_line is not None and line.number > at_line:
            break
        parser.feed_line(line)
    return parser.finish()


def parse_blocks(blocks: Iterable[Block], source: str, at_line: Optional[int] = None, *,
                 fast: bool = True) -> KdLog:
    """Parse blocks of lines (stopping after `at_line` when given); `fast=False` feeds
    every reader line by line (the reference the fast paths are checked against)."""
    parser = KdParser(source, fast)
    for block in blocks:
        if at_line is not None:
            if block.number > at_line:
                break
            if block.ended and not block.truncated and block.number + block.text.count("\n") - 1 > at_line:
                keep = at_line - block.number + 1
                block = block._replace(text="\n".join(block.text.split("\n", keep)[:keep]) + "\n")
        parser.feed(block)
    return parser.finish()


def parse_stream(stream: BinaryIO, source: str, at_line: Optional[int] = None,
                 progress: Optional[Callable[[int], None]] = None, *, fast: bool = True) -> KdLog:
    """Parse a binary stream (any supported encoding and line ends)."""
    return parse_blocks(iter_blocks(stream, progress=progress), source, at_line, fast=fast)


def parse_text(text: str, source: str = "<text>", at_line: Optional[int] = None, *, fast: bool = True) -> KdLog:
    """Parse a log given as text (tests, pasted logs)."""
    import io
    return parse_stream(io.BytesIO(text.encode("utf-8")), source, at_line, fast=fast)


def parse_file(path: Path, at_line: Optional[int] = None,
               progress: Optional[Callable[[int], None]] = None) -> KdLog:
    """Parse a kd log file; InputError names the file when it cannot be read or --at is wrong.
    `progress(bytes_read)` is called after each chunk."""
    if at_line is not None and at_line < 1:
        raise InputError(f"--at {at_line}: line numbers start at 1", source=str(path))
    try:
        with open(path, "rb") as f:
            log = parse_stream(f, str(path), at_line, progress)
    except OSError as exc:
        raise InputError(exc.strerror or str(exc), source=str(path)) from None
    if at_line is not None and at_line > log.lines:
        log.warnings.append(KdWarning(log.lines, f"--at {at_line} is past the end of the log ({log.lines} lines)"))
    return log
