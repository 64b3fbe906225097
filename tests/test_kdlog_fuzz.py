"""Fuzzing the kd log reader and parser (fixed budget): any bytes give lines and a
KdLog, never an exception; line length and kept state stay bounded."""
from __future__ import annotations

import codecs
import io
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmxdbg.inputs.kdlog import parse_stream
from vmxdbg.inputs.kdlog.reader import iter_lines
from vmxdbg.inputs.kdlog.state import MAX_CONTEXTS, MAX_WARNINGS

KDLOGS = Path(__file__).resolve().parent.parent / "recordings" / "kdlogs"
REAL = [p.read_bytes() for p in sorted(KDLOGS.glob("*.log"))]
BUDGET = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# pieces of real output, so random logs reach deep into every reader
PIECES = [
    "0: kd> ", "1: kd> ", "kd> ", "lkd> ", "~1s", "rdmsr 480", "msr[480] = 00da0400`00000004",
    "r", "r cr4", "cr4=00000000003506f8", "rM 80", "efl=00000246", "cs=0010  ss=0018",
    "iopl=0         nv up ei pl zr na po nc", ".formats cr4", "  Hex:     00000000`00b50ef8",
    "!dq 1a2b3000", "#1a2b3000 00000000`00000004 00000000`00000000", "db fffff800`04289000",
    "fffff800`04289000  00 00 00 00 00 9b 20 00-ff ff 00 00 00 93 cf 00  ...... .........",
    "dg 10", "0010 00000000`00000000 00000000`00000000 Code RE Ac 0 Nb By P  Lo 0000029b",
    ".cxr ffff", ".cxr", ".trap 1", "g", "t", "!cpuid", " 0  6,158,10  GenuineIntel  3192",
    "? @cr0", "Evaluate expression: 2147811379 = 00000000`80050033", "!analyze -v", "!vmxcheck",
    "Physical memory read at 1000 failed", "\x00", "\r", "\n", "\r\n", "`", "=", "??", "\ufeff",
]


def parse_bytes(data: bytes):
    return parse_stream(io.BytesIO(data), "fuzz.log")


@BUDGET
@given(st.binary(max_size=4000))
def test_any_bytes_parse(data):
    log = parse_bytes(data)
    assert len(log.warnings) <= MAX_WARNINGS and len(log.contexts) <= MAX_CONTEXTS


@BUDGET
@given(st.lists(st.tuples(st.sampled_from(PIECES), st.sampled_from(["\n", "\r\n", "\r", " ", ""])), max_size=120),
       st.sampled_from(["utf-8", "utf-16-le", "utf-16-be", "utf-16"]))
def test_any_mix_of_real_pieces_parses_in_any_encoding(pieces, encoding):
    text = "".join(piece + sep for piece, sep in pieces)
    log = parse_bytes(text.encode(encoding, errors="replace"))
    for p in log.snapshot.processors.values():
        assert all(isinstance(v, int) and v >= 0 for v in p.registers.values())
        assert set(p.provenance.values()) <= {f"fuzz.log:{n}" for n in range(1, log.lines + 1)}


@BUDGET
@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=200))
def test_lines_are_bounded_whatever_the_chunking(data, chunk, max_line):
    lines = list(iter_lines(io.BytesIO(data), chunk=chunk, max_line=max_line))
    assert all(len(ln.text) <= max_line for ln in lines)
    assert [ln.number for ln in lines] == list(range(1, len(lines) + 1))
    # the same bytes read in one piece give the same lines
    assert lines == list(iter_lines(io.BytesIO(data), max_line=max_line))


def _mutations(rnd: random.Random, data: bytes):
    """Bit flips, truncation, duplication and splicing of real logs."""
    b = bytearray(data)
    for _ in range(rnd.randrange(1, 8)):
        if b:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
    yield bytes(b)
    yield data[:rnd.randrange(len(data) + 1)]
    cut = rnd.randrange(len(data) + 1)
    yield data[:cut] + data[cut // 2:]
    other = rnd.choice(REAL)
    yield data[:cut] + other[rnd.randrange(len(other) + 1):]
    yield codecs.BOM_UTF16_LE + data.decode("utf-8", "replace").encode("utf-16-le")[:rnd.randrange(2 * len(data) + 1)]


def test_mutated_real_logs_parse():
    rnd = random.Random(12)
    tried = 0
    for _ in range(60):
        for mutant in _mutations(rnd, rnd.choice(REAL)):
            parse_bytes(mutant)
            tried += 1
    assert tried == 300


def test_a_huge_line_is_cut_not_held():
    data = b"kd> r cr4\ncr4=" + b"0" * (3 << 20) + b"\nkd> r cr0\ncr0=0000000080050033\n"
    log = parse_bytes(data)
    assert log.snapshot.processors[0].registers == {"cr0": 0x80050033}
    assert [w.line for w in log.warnings] == [2]
