"""`vmxdbg decode` and `vmxdbg caps` through the real CLI entry point."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Tuple

import pytest

import vmxdbg
from vmxdbg.cli import main

EXAMPLES = Path(vmxdbg.__file__).resolve().parent / "examples"


def cli(capsys: pytest.CaptureFixture, *argv: str) -> Tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def row(out: str, field: str) -> str:
    """The output line for `field` (a decoded field or a control bit)."""
    return next(line for line in out.splitlines() if re.search(rf"\s{re.escape(field)}(\s|$)", line))


def test_decode_msr_vmx_basic(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(capsys, "decode", "msr", "0x480", "0x00da040000000004")
    assert code == 0
    assert out.startswith("IA32_VMX_BASIC (MSR 0x480) = 00da0400`00000004")
    assert row(out, "revision_id").split()[:3] == ["30:0", "revision_id", "0x4"]
    assert "1024 bytes" in row(out, "region_size")
    assert "write-back" in row(out, "memory_type")
    assert row(out, "true_controls").split()[2:4] == ["1", "yes"]


@pytest.mark.parametrize("value", ["00da0400`00000004", "da040000000004", "0n61365942969434116"])
def test_decode_accepts_windbg_forms(capsys: pytest.CaptureFixture, value: str) -> None:
    code, out, _ = cli(capsys, "decode", "msr", "480", value)
    assert code == 0 and "1024 bytes" in out


def test_decode_cr4_and_friends(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(capsys, "decode", "cr4", "0x3726f8")
    assert code == 0
    assert row(out, "vmxe").split()[:3] == ["13", "vmxe", "1"]
    assert row(out, "smxe").split()[:3] == ["14", "smxe", "0"]
    code, out, _ = cli(capsys, "decode", "efer", "0xd01")             # IA32_ prefix optional
    assert code == 0 and out.startswith("IA32_EFER (MSR 0xc0000080)") and row(out, "lma").split()[2] == "1"
    code, out, _ = cli(capsys, "decode", "cr0")                       # no value: the layout
    assert code == 0 and "31      pg" in out


def test_decode_vmcs_field(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(capsys, "decode", "vmcs-field", "0x6800")
    assert code == 0
    assert out.splitlines()[0] == "GUEST_CR0 = VMCS encoding 0x6800"
    assert "Guest CR0" in out and "width: natural; type: guest" in out and "B.4.3" in out
    code, out, _ = cli(capsys, "decode", "vmcs-field", "pin_based_vm_exec_control", "0x29")
    assert code == 0 and "nmi_exiting" in out and "virtual_nmis" in out


def test_decode_control_value(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(capsys, "decode", "primary", "0x8401e172")
    assert code == 0
    assert "activate_secondary_controls" in row(out, "activate_secondary_controls")
    assert "hlt_exiting" not in out
    code, out, _ = cli(capsys, "decode", "pin-based", "0x1")
    assert "default1 bits clear: 1, 2, 4" in out


def test_decode_list(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(capsys, "decode", "--list")
    assert code == 0 and "IA32_VMX_EPT_VPID_CAP" in out and "secondary_exit" in out


@pytest.mark.parametrize("argv, message", [
    (["decode", "msr", "0x999", "1"], "vmxdbg: unknown MSR 0x999"),
    (["decode", "cr4", "zz"], "vmxdbg: CR4 value: 'zz' is not a hex number"),
    (["decode", "msr", "0xgg", "1"], "vmxdbg: MSR index: '0xgg' is not a hex number"),
    (["decode", "msr"], "vmxdbg: decode msr: give the MSR index"),
    (["decode", "cr9", "1"], "vmxdbg: unknown register, MSR or control 'cr9'"),
    (["decode", "cr0", "0x1ffffffffffffffff"], "does not fit in 64 bits"),
    (["decode", "primary", "0x100000000"], "does not fit in 32 bits"),
    (["decode", "cr0", "1", "2"], "one value expected, got 2"),
    (["decode", "vmcs-field", "0x6ffe"], "vmxdbg: unknown VMCS field encoding 0x6ffe"),
    (["decode"], "vmxdbg: decode what?"),
    (["caps", "/nonexistent/x.vmxsnap.json"], "vmxdbg: /nonexistent/x.vmxsnap.json"),
])
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture, argv: list, message: str) -> None:
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_caps_full_snapshot(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(capsys, "caps", str(EXAMPLES / "vmentry.vmxsnap.json"))
    assert code == 0
    assert out.startswith("### processor 0")
    assert "[IA32_VMX_TRUE_PINBASED_CTLS (0x48d)]" in out
    assert row(out, "process_posted_interrupts").split()[-5:] == ["yes", "no", "must", "be", "0"]
    assert row(out, "cr3_load_exiting").split()[-2:] == ["yes", "free"]
    assert "not supported: IA32_VMX_PROCBASED_CTLS[49]" in out


def test_caps_unknown_msrs_print_unknown_never_zero(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, _ = cli(capsys, "caps", str(EXAMPLES / "vmxon.vmxsnap.json"))   # no 0x481-0x485 etc.
    assert code == 0
    pin = out[out.index("== Pin-based"):out.index("== Primary processor")]
    assert "IA32_VMX_PINBASED_CTLS (0x481) unknown" in pin
    assert row(pin, "nmi_exiting").split()[-3:] == ["?", "?", "unknown"]
    misc = out[out.index("== Miscellaneous"):]
    assert misc.splitlines()[1].strip().endswith("unknown")


def test_caps_groups_identical_processors(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    tree = json.loads((EXAMPLES / "vmentry.vmxsnap.json").read_text())
    cpu0 = tree["processors"]["0"]
    tree["processors"] = {"0": cpu0, "1": json.loads(json.dumps(cpu0)), "2": json.loads(json.dumps(cpu0))}
    tree["processors"]["2"]["msr"]["0x48b"] = "0x0"
    f = tmp_path / "three.vmxsnap.json"
    f.write_text(json.dumps(tree))
    code, out, _ = cli(capsys, "caps", str(f))
    assert code == 0
    assert "### processors 0, 1 (identical capability MSRs)" in out and "### processor 2" in out
    code, out, _ = cli(capsys, "caps", "--cpu", "2", str(f))
    assert "### processor 2" in out and "processors 0, 1" not in out
