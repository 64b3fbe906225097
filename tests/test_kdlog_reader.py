"""The kd log line reader: encodings, line ends, NUL bytes, long and cut-off lines."""
from __future__ import annotations

import codecs
import io

import pytest

from vmxdbg.inputs.kdlog.reader import Line, detect_encoding, iter_lines

TEXT = "0: kd> rdmsr 3a\nmsr[3a] = 00000000`00000005\n1: kd> r cr4\ncr4=00000000003506f8\n"


def lines_of(data: bytes, **kw) -> list:
    return list(iter_lines(io.BytesIO(data), **kw))


def texts(data: bytes, **kw) -> list:
    return [ln.text for ln in lines_of(data, **kw)]


EXPECTED = TEXT.splitlines()


@pytest.mark.parametrize("encoding,bom", [
    ("utf-8", b""), ("utf-8", codecs.BOM_UTF8),
    ("utf-16-le", b""), ("utf-16-le", codecs.BOM_UTF16_LE),
    ("utf-16-be", b""), ("utf-16-be", codecs.BOM_UTF16_BE),
    ("latin-1", b""),
])
def test_every_encoding_gives_the_same_lines(encoding, bom):
    assert texts(bom + TEXT.encode(encoding)) == EXPECTED


def test_utf16_without_bom_is_detected_by_nul_positions():
    assert detect_encoding("kd> r\n".encode("utf-16-le")) == ("utf-16-le", 0)
    assert detect_encoding("kd> r\n".encode("utf-16-be")) == ("utf-16-be", 0)
    assert detect_encoding(b"kd> r\n") == ("utf-8", 0)
    assert detect_encoding(b"kd> r \xe9t\xe9\n") == ("latin-1", 0)


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_line_ends(eol):
    assert texts(eol.join(EXPECTED).encode() + eol.encode()) == EXPECTED


def test_mixed_line_ends_and_crlf_split_across_chunks():
    data = b"a\r\nb\rc\nd\r\n\r\ne"
    assert texts(data) == ["a", "b", "c", "d", "", "e"]
    # a CR at the end of one chunk and its LF at the start of the next are one line end
    for chunk in range(1, len(data) + 1):
        got = list(iter_lines(io.BytesIO(data), chunk=chunk))
        assert [ln.text for ln in got] == ["a", "b", "c", "d", "", "e"], chunk
        assert [ln.number for ln in got] == [1, 2, 3, 4, 5, 6]


def test_nul_bytes_are_dropped():
    assert texts(b"kd\x00> r\x00\n\x00cr0=1\n") == ["kd> r", "cr0=1"]


def test_last_line_without_line_end_is_marked():
    got = lines_of(b"kd> r\ncr4=00000000")
    assert got[-1] == Line(2, "cr4=00000000", ended=False)
    assert got[0].ended


def test_long_lines_are_cut_and_marked():
    data = b"x" * 100 + b"\nshort\n" + b"y" * 30
    got = list(iter_lines(io.BytesIO(data), max_line=10, chunk=7))
    assert [(ln.text, ln.truncated, ln.ended) for ln in got] == [
        ("x" * 10, True, True), ("short", False, True), ("y" * 10, True, False)]


def test_binary_garbage_gives_lines_not_errors():
    import random
    rnd = random.Random(7)
    data = bytes(rnd.randrange(256) for _ in range(20000))
    got = lines_of(data, max_line=256)
    assert got and all(len(ln.text) <= 256 for ln in got)
