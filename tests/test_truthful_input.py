"""Bad input is bad input in every reader (issue 18 items 5, 6): a snapshot without processors,
and values wider than their register, MSR or VMCS field, exit 2 with one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmxdbg import cli
from vmxdbg.common.errors import InputError
from vmxdbg.common.numbers import parse_int, vmcs_field_bits

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "recordings/snapshots/skylake-cr4-vmxe-clear.vmxsnap.json"   # values from a real kd session
TRACE = ROOT / "recordings/bochs/healthy-2cpu.vmxrec.jsonl"                      # a real Bochs run


def run(capsys, *argv: str):  # type: ignore[no-untyped-def]
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("body", [{}, {"processors": {}}])
@pytest.mark.parametrize("command", ["check", "caps"])
def test_a_snapshot_without_processors_is_bad_input(tmp_path, capsys, body, command):
    path = tmp_path / "s.vmxsnap.json"
    path.write_text(json.dumps({"format": "vmxdbg-snapshot", "version": 1, **body}))
    rc, out, err = run(capsys, command, str(path))
    assert rc == 2 and out == "" and err.count("\n") == 1 and "no processor" in err


def _snapshot(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    data = json.loads(SNAPSHOT.read_text())
    edit(data["processors"]["0"])
    path = tmp_path / "w.vmxsnap.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, key", [
    (lambda p: p["registers"].update(cr4="0x1000000000000000000000"), "registers.cr4"),
    (lambda p: p["msr"].update({"0x480": "0x1" + "0" * 16}), "msr.0x480"),            # a 65-bit IA32_VMX_BASIC
    (lambda p: p.update(vmcs={"0x0802": "0x10000"}), "vmcs.0x0802"),                  # 16-bit GUEST_ES_SELECTOR
    (lambda p: p.update(vmcs={"0x4002": "0x100000000"}), "vmcs.0x4002"),              # 32-bit controls
    (lambda p: p["registers"].update(cr4="0x" + "f" * 5000), "registers.cr4"),
])
def test_a_snapshot_value_wider_than_its_width_is_too_wide(tmp_path, capsys, edit, key):
    rc, out, err = run(capsys, "check", str(_snapshot(tmp_path, edit)))
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert key in err and "too wide" in err and "is not a number" not in err


def test_the_one_number_parser_says_too_wide():
    with pytest.raises(InputError, match="too wide"):
        parse_int("0x" + "1" * 5000)
    with pytest.raises(InputError, match="too wide"):
        parse_int("1`00000000`00000000", bits=64)
    assert parse_int("ffffffff`ffffffff", bits=64) == 2 ** 64 - 1
    assert [vmcs_field_bits(e) for e in (0x0802, 0x2000, 0x2001, 0x4002, 0x6800)] == [16, 64, 32, 32, 64]


def test_a_recording_value_wider_than_its_width_is_bad_input(tmp_path, capsys):
    lines = TRACE.read_text().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec.get("op") == "read_vmcs" and "result" in rec and rec["args"]["encoding"] == "0x4002":
            rec["result"] = "0x1" + "0" * 8       # 33 bits in a 32-bit field
            lines[i] = json.dumps(rec)
            break
    else:
        pytest.fail("the recording reads no 0x4002")
    path = tmp_path / "w.vmxrec.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rc, out, err = run(capsys, "check", str(path))
    assert rc == 2 and f":{i + 1} [result]" in err and "too wide" in err


@pytest.mark.parametrize("text, what", [("kd> r cr4\ncr4=1000000000000000000000\n", "cr4"),
                                        ("kd> rdmsr 480\nmsr[480] = 1`00da0400`00000004\n", "msr[480]")])
def test_a_kd_log_value_wider_than_its_register_is_bad_input(tmp_path, capsys, text, what):
    path = tmp_path / "w.log"
    path.write_text(text)
    rc, out, err = run(capsys, "check", str(path))
    assert rc == 2 and ":2: " in err and what in err and "too wide" in err


def test_an_option_value_wider_than_an_address_is_bad_input(capsys):
    rc, out, err = run(capsys, "vmcs", "0x1" + "0" * 16, "--source", str(SNAPSHOT))
    assert rc == 2 and "too wide" in err
