"""Inputs the fuzzer (tests/fuzzkit.py, bench/fuzz_readers.py) found crashing a reader, one test each.

Each input is the smallest form of what the fuzzer produced; each test fails
on the reader as it was before its fix.
"""
from __future__ import annotations

import pytest

from vmxdbg.errors import InputError
from vmxdbg.values import parse_int


@pytest.mark.parametrize("text", ["0n\u00b2", "0n\u0661\u0662", "\u0967", "0n1\u00b2"])
def test_parse_int_refuses_unicode_digits_with_an_input_error(text):
    # str.isdigit() accepts these, int() does not: this was a ValueError
    with pytest.raises(InputError, match="is not a hex number"):
        parse_int(text, what="--cpu")


def test_parse_int_error_stays_short_whatever_was_typed():
    with pytest.raises(InputError) as exc:
        parse_int("z" * 100000, what="value")
    assert len(str(exc.value)) < 120
