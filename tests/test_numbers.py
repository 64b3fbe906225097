"""One number parser for every option, console command and file: values are hex, counts decimal."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmxdbg.cli import main
from vmxdbg.common.errors import InputError
from vmxdbg.common.numbers import parse_count, parse_int

EXAMPLES = Path(__file__).resolve().parent.parent / "vmxdbg" / "examples"


@pytest.mark.parametrize("text, value", [("0x80050033", 0x80050033), ("80050033", 0x80050033),
                                         ("00da0400`00000004", 0xDA040000000004), ("0n123", 123),
                                         ("0y101", 5), (17, 17)])
def test_a_value_takes_every_form_windbg_prints(text, value):
    assert parse_int(text) == value


@pytest.mark.parametrize("text, value", [("16", 16), ("0x10", 16), ("0n16", 16), (" 3 ", 3), (2, 2)])
def test_a_count_is_decimal_unless_it_says_otherwise(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text, message", [("1f", "not a number \\(decimal, or 0x1f for hex\\)"),
                                           ("\u00b2", "not a number"), ("12345678901", "too large"),
                                           ("0n", "'0n' is not a hex number")])
def test_a_bad_count_says_what_was_typed(text, message):
    with pytest.raises(InputError, match=message):
        parse_count(text, what="--cpu")


@pytest.mark.parametrize("cpu", ["1", "0x1", "0n1"])
def test_check_reads_a_processor_number_in_every_form(capsys, cpu):
    snap = str(EXAMPLES / "vmxroot-2cpu.vmxsnap.json")
    assert main(["check", snap, "--cpu", cpu, "--format", "json"]) in (0, 1)
    report = json.loads(capsys.readouterr().out)
    assert list(report["processors"]) == ["1"]


def test_at_means_the_same_line_in_check_and_snapshot(tmp_path, capsys):
    log = tmp_path / "s.log"
    log.write_text("0: kd> r cr4\ncr4=00000000003506f8\n" + "0: kd> r cr0\ncr0=0000000080050033\n" * 20
                   + "0: kd> r cr4\ncr4=00000000003526f8\n")
    for at in ("16", "0x10", "0n16"):
        out = tmp_path / f"at-{at}.vmxsnap.json"
        assert main(["snapshot", str(log), "--at", at, "-o", str(out)]) == 0
        assert json.loads(out.read_text())["processors"]["0"]["registers"]["cr4"] == "0x3506f8"
        assert main(["check", str(log), "--at", at, "--format", "json"]) in (0, 1)
    capsys.readouterr()
