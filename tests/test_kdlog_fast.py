"""The readers' fast paths (whole runs of output lines, found with str.find and one
regex per run) against the reference: the same log fed to every reader line by line
(`fast=False`). Both must give the same KdLog (snapshot with provenance, warnings,
notes, non-live contexts, identities, prompts, lines) or the same error, on the real
excerpts, on the benchmark's generated session, on logs cut into blocks anywhere
(a command's output split across blocks), and on mixes of real and damaged pieces."""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmxdbg.common.errors import InputError
from vmxdbg.inputs.kdlog import parse_text
from vmxdbg.inputs.kdlog.parser import parse_blocks
from vmxdbg.inputs.kdlog.reader import iter_blocks

ROOT = Path(__file__).resolve().parent.parent
EXCERPTS = sorted((ROOT / "tests" / "data" / "kdreal").glob("*.log")) + sorted((ROOT / "recordings" / "kdlogs").glob("*.log"))
BUDGET = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bench():
    spec = importlib.util.spec_from_file_location("bench_kdlog", ROOT / "bench" / "bench_kdlog.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def outcome(text: str, *, fast: bool, chunk: int = 1 << 20, at_line=None):
    """Everything a parse gives, comparable with ==; an InputError as its message."""
    try:
        blocks = iter_blocks(io.BytesIO(text.encode("utf-8")), chunk=chunk)
        log = parse_blocks(blocks, "t.log", at_line, fast=fast)
    except InputError as exc:
        return ("error", str(exc))
    return (log.snapshot, log.warnings, log.warnings_dropped, log.notes, log.contexts, log.identity,
            log.prompts, log.lines)


def assert_same(text: str, chunk: int = 1 << 20, at_line=None) -> None:
    reference = outcome(text, fast=False, at_line=at_line)
    assert outcome(text, fast=True, chunk=chunk, at_line=at_line) == reference


@pytest.mark.parametrize("path", EXCERPTS, ids=lambda p: p.name)
def test_each_real_excerpt(path):
    text = path.read_text(encoding="utf-8")
    reference = outcome(text, fast=False)
    assert reference[0] != "error" and reference[6] > 0 or path.name.startswith(("hyperdbg", "windbg-feedback"))
    assert_same(text)


def test_all_excerpts_joined_and_cut_into_small_blocks():
    text = "".join(p.read_text(encoding="utf-8").rstrip("\n") + "\n" for p in EXCERPTS)
    assert_same(text)
    for chunk in (97, 1000, 4093):
        assert_same(text, chunk=chunk)


def test_the_benchmark_session_cut_anywhere():
    bench = _bench()
    text = "".join(bench._round(i) for i in range(6))
    log = parse_text(text)
    assert log.snapshot.processors[1].registers["cr4"] == 0x3506F8 | (1 << 13)
    assert_same(text)
    for chunk in (50, 333, 2048):
        assert_same(text, chunk=chunk)
    for at_line in (3, 17, 40, 200):
        assert_same(text, at_line=at_line)


# Pieces of real output and damaged variants of them: every reader's fast path meets
# lines it must hand back to the line-by-line path (bad values, `??`, failed reads,
# annotations, quoted prompts, odd case and blanks).
PROMPTS = ["0: kd> ", "1: kd> ", "kd> ", "lkd> ", "> 0: kd> ", "  2: kd>", "99999: kd> "]
COMMANDS = ["r", "r cr4", "r cr4=426f8", "rM 80", "rdmsr 480", "rdmsr c0000080", "!dq 1a2b3000", "!dd 1000",
            "!db 2000", "dq fffff800`04289000", "db fffff800`04289000", "dp 1000", "dd /p 1000", "!kext.dd 9000",
            "dg 10", ".formats cr4", ".formats 0x1", "? @cr0", "? 1+1", "!cpuid", "!cpuinfo", ".cxr ffff", ".cxr",
            ".trap 1", ".ecxr", "g", "t", "!analyze -v", ".frame /r 2", "~1s", ".process /p ff779190", "k", "lm"]
OUTPUT = [
    "rax=0000000000000000 rbx=fffff80002c4fe80 rcx=0000000000000001",
    " r8=0000000000000000  r9=0000000000000000 r10=0000000000000000",
    "iopl=0         nv up ei pl zr na po nc",
    "cs=0010  ss=0018  ds=002b  es=002b  fs=0053  gs=002b             efl=00000246",
    "CS=0010  SS=0018  EFL=00000246 NV UP",
    "rax=00000000`0012f9a8 rbx=zz rcx=1",
    "rax=00000000000000000000000000000001",
    "cr4=00000000003506f8", "cr4=0000000000000000001", "gdtr=fffff80000b95000 gdtl=0057", "gdtl=100000000",
    "xmm0=0 fpcw=027F mxcsr=00001f80", "foo=1 rax=2", "eax=00000001 ebx=7ffdf000 fs=0030 efl=00000202",
    "fffff800`02a7e490 cc              int     3",
    "fffff800`01dc87b8 8a4128          mov     al,byte ptr [rcx+28h] ds:002b:00000000`00000028=??",
    "mov rbx,qword ptr [r12] ds:002b:00000000`002cfd40=4242424242424242",
    "fffff801`0465100c f30fc7742408    vmxon   qword ptr [rsp+8] ss:0018:fffff880`0312a9f8=00000000`1a2b3000",
    "fffff801`0465100c f30fc7742408    vmptrld qword ptr [rsp+8] ss:0018:fffff880`0312a9f8=????????`????????",
    "msr[480] = 00da0400`00000004", "MSR[3A] = 00000000`00000005", "msr[480] = 00da0400`00000004 // note",
    "msr[480] = 1", "msr[c0000080] = 00000000`00000d01", "msr[480] = 100000000`00000000000",
    "#1a2b3000 00000000`00000004 00000000`00000000", "#    1000 0000f002 00000000 00000000 00000000",
    "#1a2b3010 00000000`0000000x 00000000`00000000", "#1a2b3020 ????????`???????? 00000000`00000000",
    "# 7a3c100 00000001 00000000 ........", "Physical memory read at 1000 failed",
    "fffff800`04289000  00 00 00 00 00 9b 20 00-ff ff 00 00 00 93 cf 00  ...... .........",
    "fffff800`04289010  00 00 00 00 00 ?? 20 00-ff ff 00 00 00 93 cf 00  ...... .........",
    "00000000`002cfd40  42424242`42424242 43434343`43434343", "00001000  00000001 00000002 00000003 00000004",
    "0010 00000000`00000000 00000000`00000000 Code RE Ac 0 Nb By P  Lo 0000029b", "0010 00000000`0000 bad",
    "Evaluate expression:", "  Hex:     00000000`00b50ef8", "  HEX:  1", "  Decimal: 11866872",
    "Evaluate expression: 2147811379 = 00000000`80050033", "Evaluate expression: x = 1",
    " 0  6,158,10  GenuineIntel  3192", " 1 6,1,9 GenuineIntel  198 000000d200000000 000000ff", " 2 6,x,1 Foo",
    "CONTEXT:  fffff8801b90cc20 -- (.cxr 0xfffff8801b90cc20)", "TRAP_FRAME:  ffff", "error: bad register",
    "Implicit process is now ff779190", "01 ffffd001`1399b658 fffff803`71b00001 nt!KiRoutine1+0x3", "",
    "   ", "\t", "a=b", "====",
]


@BUDGET
@given(st.lists(st.one_of(st.tuples(st.sampled_from(PROMPTS), st.sampled_from(COMMANDS)).map("".join),
                          st.sampled_from(OUTPUT)), max_size=80),
       st.sampled_from([1 << 20, 40, 200]), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_mixes_of_real_and_damaged_pieces(lines, chunk, eol, end_with_eol):
    text = eol.join(lines) + (eol if end_with_eol else "")
    reference = outcome(text, fast=False)
    assert outcome(text.replace("\r\n", "\n"), fast=True, chunk=chunk) == reference


def test_quote_marks_are_taken_off_as_before():
    import re
    import sys

    from vmxdbg.inputs.kdlog.parser import _QUOTE_AFTER_LF, BLANK, QUOTE
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    assert re.findall(BLANK, every) == re.findall(r"[^\S\n]", every)
    for text in ("> 0: kd> r\n>> x\n > > y\n\t>z\n>\n\n  >  w\n", "plain\n> q\n", ">\n", "a >b\n\u3000> c\n"):
        assert _QUOTE_AFTER_LF.sub("\n", "\n" + text)[1:] == QUOTE.sub("", text)


# ------------------------------------------------------------ edge cases, by name

X64 = """rax=0000000000000001 rbx=0000000000000002 rcx=0000000000000003
rdx=0000000000000004 rsi=0000000000000005 rdi=0000000000000006
rip=fffff80002a7e490 rsp=fffff80000b9cb88 rbp=fffff80000b9cc20
 r8=0000000000000008  r9=0000000000000009 r10=000000000000000a
r11=000000000000000b r12=000000000000000c r13=000000000000000d
r14=000000000000000e r15=000000000000000f
iopl=0         nv up ei pl zr na po nc
cs=0010  ss=0018  ds=002b  es=002b  fs=0053  gs=002b             efl=00000246
"""


def parse_small_blocks(text: str, chunk: int):
    return parse_blocks(iter_blocks(io.BytesIO(text.encode("utf-8")), chunk=chunk), "t.log")


def test_a_dump_cut_across_blocks_keeps_every_byte_and_its_line():
    rows = "".join(f"#1a2b{off:04x} {off:08x}`00000000 00000000`{off + 8:08x}\n" for off in range(0, 0x1010, 0x10))
    text = "0: kd> !dq 1a2b0000 L202\n" + rows + "0: kd> k\n"
    whole = parse_text(text, "t.log")
    for chunk in (64, 1000, 4096):
        log = parse_small_blocks(text, chunk)
        assert log.snapshot.memory == whole.snapshot.memory
        assert log.snapshot.processors[0].provenance == whole.snapshot.processors[0].provenance
    # the second page starts on the row of 1a2b1000: line 2 + 0x100
    assert whole.snapshot.processors[0].provenance["mem:0x1a2b1000"] == f"t.log:{2 + 0x100}"
    assert whole.snapshot.memory.read(0x1A2B1000, 8) == (0x1000 << 32).to_bytes(8, "little")


def test_a_bad_row_inside_a_dump_is_warned_with_its_line_and_the_other_rows_are_kept():
    text = ("0: kd> !dd 1000\n#    1000 00000001 00000002 00000003 00000004\n"
            "#    1010 0000000g 00000000 00000000 00000000\n#    1020 00000005 00000006 00000007 00000008\n"
            "0: kd> k\n")
    log = parse_text(text, "t.log")
    assert [(w.line, "does not parse" in w.message) for w in log.warnings] == [(3, True)]
    assert log.snapshot.memory.read(0x1000, 4) == (1).to_bytes(4, "little")
    assert log.snapshot.memory.read(0x1020, 4) == (5).to_bytes(4, "little")
    assert_same(text)


def test_a_full_dump_then_its_annotation_and_an_unknown_name():
    text = ("0: kd> r\n" + X64 + "nt!KiX+0x27:\nfffff880`03398b9b 498b1c24        mov     rbx,qword ptr [r12] "
            "ds:002b:00000000`002cfd40=4242424242424242\n"
            "1: kd> r\nrax=0000000000000011 foo=1\nrbx=0000000000000022\n1: kd> k\n")
    log = parse_text(text, "t.log")
    p0, p1 = log.snapshot.processors[0], log.snapshot.processors[1]
    assert p0.registers["rax"] == 1 and p0.registers["rflags"] == 0x246 and p0.segments["gs"].selector == 0x2B
    assert p0.provenance["reg:r8"] == "t.log:5" and p0.provenance["reg:cs"] == "t.log:9"
    assert 0x4242424242424242 not in p0.registers.values()   # the annotation is no register
    assert "rax" not in p1.registers and p1.registers["rbx"] == 0x22   # `foo=` makes it no register line
    assert p1.provenance["reg:rbx"] == "t.log:14"
    assert_same(text)


def test_a_dump_with_new_selectors_resets_their_hidden_parts_as_line_by_line():
    text = ("0: kd> rdmsr c0000100\nmsr[c0000100] = 00000000`00031337\n0: kd> r\n" + X64
            + "0: kd> r\n" + X64.replace("fs=0053", "fs=0030") + "0: kd> r\n" + X64)
    log = parse_text(text, "t.log")
    assert log.snapshot.processors[0].segments["fs"].base is None   # described the old fs
    assert_same(text)


def test_a_quoted_session_gives_values_on_their_own_lines():
    text = "> 0: kd> r cr4\n> cr4=00000000003506f8\n>> 1: kd> rdmsr 480\n>> msr[480] = 00da0400`00000004\n"
    log = parse_text(text, "t.log")
    assert log.snapshot.processors[0].provenance["reg:cr4"] == "t.log:2"
    assert log.snapshot.processors[1].provenance["msr:0x480"] == "t.log:4"
    assert_same(text)


def test_at_line_inside_a_run_of_register_lines():
    text = "0: kd> r\n" + X64
    log = parse_text(text, "t.log", at_line=3)
    assert log.snapshot.processors[0].registers["rdx"] == 4 and "rip" not in log.snapshot.processors[0].registers
    assert_same(text, at_line=3)


def test_dp_on_a_32_bit_target_reads_dwords_whatever_the_blocks():
    # `dp` prints dwords on a 32-bit target; once a row shows that, the rest of the output is
    # read as dwords, wherever the log was cut into blocks (it used to depend on that)
    text = ("kd> dp 1000\n00001000  00000001 00000002 00000003 00000004\n"
            "00001010  00000005 00000006 00000007 00000008\n00001020  00000000`00000009\nkd> k\n")
    whole = outcome(text, fast=False)
    assert [w.line for w in whole[1]] == [4]   # a qword row after dwords: not read, warned
    for chunk in (20, 50, 70, 1 << 20):
        assert outcome(text, fast=False, chunk=chunk) == whole
        assert outcome(text, fast=True, chunk=chunk) == whole
    memory = whole[0].processors[0].virtual_memory
    assert memory.read(0x1010, 4) == (5).to_bytes(4, "little") and memory.read(0x101C, 4) == (8).to_bytes(4, "little")
