"""parse_register_line on the edges of what a register line is: the token-by-token reader
must decide exactly as the whole-line definition in registers.py's docstring says."""
from __future__ import annotations

import pytest

from vmxdbg.inputs.kdlog.registers import BadValue, TooWide, parse_register_line


def test_plain_lines_give_their_known_registers_in_order() -> None:
    assert parse_register_line(" r8=0000000000000007  r9=fffff80012345678 r10=0") == [
        ("r8", 7), ("r9", 0xFFFFF80012345678), ("r10", 0)]
    assert parse_register_line("cs=0010  ss=0018             EFL=00000246") == [
        ("cs", 0x10), ("ss", 0x18), ("efl", 0x246)]
    assert parse_register_line("rsp=00000000`0012f9a8") == [("rsp", 0x12F9A8)]


def test_a_line_of_flags_and_ignored_names_only_is_not_a_register_line() -> None:
    assert parse_register_line("iopl=0         nv up ei pl zr na po nc") is None
    assert parse_register_line("fpcw=027F fpsw=0000 xmm0=00000000") is None


@pytest.mark.parametrize("text", [
    "ds:002b:00000000`0012f9a8=00000000`00000001",   # an effective-address annotation
    "rax=1 nvx up",                                   # a token that is neither pair nor flag
    "rax=1 foo=2",                                    # an unknown name
    "rax=1 =2",                                       # a pair without a name
    "x = 5",
])
def test_other_lines_are_not_register_lines(text: str) -> None:
    assert parse_register_line(text) is None


def test_a_value_that_is_not_hex_is_bad_only_on_a_register_line() -> None:
    with pytest.raises(BadValue, match="r9=0000000000000y003"):
        parse_register_line("r8=0000000000000007 r9=0000000000000y003")
    with pytest.raises(BadValue, match="rax=1`2`3"):
        parse_register_line("rax=1`2`3")
    assert parse_register_line("r9=0000000000000y003 foo=1") is None


def test_seventeen_significant_digits_are_too_wide_even_after_a_bad_value() -> None:
    with pytest.raises(TooWide, match="r10 = a0000000000000000"):
        parse_register_line("r9=0000000000000y003 r10=A0000000000000000")
    # leading zeros do not count; a later unknown name does not hide the error,
    # an earlier one makes the line not a register line
    assert parse_register_line("rax=00000000000000001") == [("rax", 1)]
    with pytest.raises(TooWide):
        parse_register_line("rax=10000000000000000 foo=1")
    assert parse_register_line("foo=1 rax=10000000000000000") is None
    # ... but a token that breaks the form still makes it not a register line
    assert parse_register_line("rax=10000000000000000 ds:002b:1=2") is None
