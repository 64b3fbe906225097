"""The rules on real processors' capabilities, not Bochs' or our own.

tests/data/realcpu/ holds lines of two VirtualBox logs from real hosts (an Ivy Bridge
and a Coffee Lake; sources in its README). Their VMX capability MSRs, FEATURE_CONTROL,
host control registers and CPUID leaves are put in a snapshot as read; what the tests
add is named in each test (the processor state a log does not print, and the VMCS
that the test hypervisor builds, from recordings/snapshots/bochs-vmlaunch-cpu0).
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Dict

import pytest

from vmxdbg import cli

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "realcpu"
IVY = DATA / "ivybridge-06-3a-9.vbox.log"
COFFEE = DATA / "coffeelake-06-9e-a.vbox.log"

# VirtualBox's names for the MSRs (its "HM: NAME = VALUE" lines) -> index (SDM Vol.4 table 2-2)
MSR_NAMES = {
    "MSR_IA32_FEATURE_CONTROL": 0x3A, "MSR_IA32_VMX_BASIC": 0x480, "MSR_IA32_VMX_PINBASED_CTLS": 0x481,
    "MSR_IA32_VMX_PROCBASED_CTLS": 0x482, "MSR_IA32_VMX_EXIT_CTLS": 0x483, "MSR_IA32_VMX_ENTRY_CTLS": 0x484,
    "MSR_IA32_VMX_MISC": 0x485, "MSR_IA32_VMX_CR0_FIXED0": 0x486, "MSR_IA32_VMX_CR0_FIXED1": 0x487,
    "MSR_IA32_VMX_CR4_FIXED0": 0x488, "MSR_IA32_VMX_CR4_FIXED1": 0x489, "MSR_IA32_VMX_VMCS_ENUM": 0x48A,
    "MSR_IA32_VMX_PROCBASED_CTLS2": 0x48B, "MSR_IA32_VMX_EPT_VPID_CAP": 0x48C,
    "MSR_IA32_VMX_TRUE_PINBASED_CTLS": 0x48D, "MSR_IA32_VMX_TRUE_PROCBASED_CTLS": 0x48E,
    "MSR_IA32_VMX_TRUE_EXIT_CTLS": 0x48F, "MSR_IA32_VMX_TRUE_ENTRY_CTLS": 0x490, "MSR_IA32_VMX_VMFUNC": 0x491,
}
_VALUE = re.compile(r"HM: (?:Host )?(\w+)\s+= (0x[0-9a-f]+)")
_LEAF = re.compile(r"Gst: ([0-9a-f]{8})/([0-9a-f]{4})")
_HOST = re.compile(r"Hst:\s+((?:[0-9a-f]{8}\s*){4})$")
VMXON_REGION = 0x1A2B3000
CODE64 = {"selector": "0x10", "base": "0x0", "limit": "0x0", "attributes": "0x209b"}


def read_vbox(path: Path) -> Dict[str, Any]:
    """MSRs, host control registers and host CPUID leaves of a VBox.log excerpt."""
    msr: Dict[str, str] = {}
    regs: Dict[str, str] = {}
    cpuid: Dict[str, list] = {}
    leaf = None
    for line in path.read_text().splitlines():
        m = _VALUE.search(line)
        if m and m.group(1) in MSR_NAMES:
            msr[hex(MSR_NAMES[m.group(1)])] = m.group(2)
        elif m and m.group(1) in ("CR0", "CR4", "EFER"):
            regs[m.group(1).lower()] = m.group(2)
        if (g := _LEAF.search(line)) is not None:
            leaf = f"0x{int(g.group(1), 16):x}" + (f".{int(g.group(2), 16):x}" if int(g.group(2), 16) else "")
        elif (h := _HOST.search(line)) is not None and leaf is not None:
            cpuid[leaf] = [f"0x{int(v, 16):x}" for v in h.group(1).split()]
            leaf = None
    assert "0x480" in msr and "cr4" in regs and "0x1" in cpuid, f"{path.name}: the excerpt lost its lines"
    if "efer" in regs:
        msr["0xc0000080"] = regs["efer"]
    return {"msr": msr, "registers": regs, "cpuid": cpuid}


def revision(real: Dict[str, Any]) -> int:
    return int(real["msr"]["0x480"], 16) & 0x7FFFFFFF


def vmxon_snapshot(real: Dict[str, Any], **registers: str) -> dict:
    """A processor about to run VMXON with the logged host state; the state a VBox.log
    does not print (CPL 0 in 64-bit code, outside VMX/SMM/SMX, no A20M) is given, and a
    VMXON region holding this processor's revision."""
    regs = dict(real["registers"], rflags="0x40246", cs=CODE64, **registers)
    return {"format": "vmxdbg-snapshot", "version": 1, "source": "test_real_processors",
            "processors": {"0": {"cpuid": real["cpuid"], "msr": real["msr"], "registers": regs,
                                 "state": {"cpl": 0, "a20m": False, "smm": False, "smx": False, "vmx": "off"},
                                 "vmxon_pointer": hex(VMXON_REGION), "vmcs_pointer": "0xffffffffffffffff"}},
            "memory": {hex(VMXON_REGION): revision(real).to_bytes(4, "little").hex() + "00" * 4}}


def vmlaunch_snapshot(real: Dict[str, Any], vmcs_edits: Dict[int, int]) -> dict:
    """The test hypervisor's healthy VMLAUNCH state (a real Bochs run) with this processor's
    capability MSRs and CPUID instead of Bochs' ones, VMCS fields changed by `vmcs_edits`."""
    snap = json.loads((ROOT / "recordings/snapshots/bochs-vmlaunch-cpu0.vmxsnap.json").read_text())
    p = snap["processors"]["0"]
    p.pop("provenance", None)
    p["msr"] = {k: v for k, v in p["msr"].items() if not 0x480 <= int(k, 16) <= 0x493}
    p["msr"].update({k: v for k, v in real["msr"].items() if 0x480 <= int(k, 16) <= 0x493 or k == "0x3a"})
    p["cpuid"] = copy.deepcopy(real["cpuid"])
    for enc, value in vmcs_edits.items():
        p["vmcs"][hex(enc)] = hex(value)
    region = hex(int(p["vmxon_pointer"], 16))
    for key in list(snap["memory"]):
        if int(key, 16) == int(region, 16):
            snap["memory"][key] = revision(real).to_bytes(4, "little").hex() + snap["memory"][key][8:]
    return snap


def check(tmp_path: Path, capsys, snap: dict) -> Dict[str, Any]:  # type: ignore[no-untyped-def]
    path = tmp_path / "real.vmxsnap.json"
    path.write_text(json.dumps(snap))
    rc = cli.main(["check", str(path), "--format", "json"])
    out = capsys.readouterr()
    assert rc in (0, 1), out.err
    report = json.loads(out.out)
    verdicts = {v["instruction"]: v for v in report["processors"]["0"]}
    failed = {i: sorted(f["id"] for f in v["findings"] if f["status"] == "fail") for i, v in verdicts.items()}
    return {"rc": rc, "outcome": {i: v["outcome"] for i, v in verdicts.items()}, "failed": failed}


@pytest.mark.parametrize("log", [IVY, COFFEE], ids=["ivybridge", "coffeelake"])
def test_every_logged_value_is_read(log: Path) -> None:
    real = read_vbox(log)
    assert len(real["msr"]) >= 19 and real["registers"]["cr4"].startswith("0x")


def test_ivybridge_vmxon_with_the_logged_host_state_is_ok(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    # VirtualBox logged CR0/CR4/EFER with VMX on (its "Global" init method): CR4.VMXE is 1
    r = check(tmp_path, capsys, vmxon_snapshot(read_vbox(IVY)))
    assert r["outcome"]["vmxon"] == "ok" and r["failed"]["vmxon"] == []
    assert r["rc"] == 0


def test_coffeelake_host_cr4_as_logged_has_vmxe_clear(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    # logged before VMXON ("Local" init method): CR4 = 0x370678, VMXE (bit 13) is 0 -> #UD
    r = check(tmp_path, capsys, vmxon_snapshot(read_vbox(COFFEE), cr0="0x80050033"))
    assert r["outcome"]["vmxon"] == "#UD" and "VMXON002" in r["failed"]["vmxon"]
    assert r["rc"] == 1


def test_coffeelake_vmxon_once_vmxe_is_set_is_ok(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    real = read_vbox(COFFEE)
    cr4 = hex(int(real["registers"]["cr4"], 16) | 1 << 13)
    r = check(tmp_path, capsys, vmxon_snapshot(real, cr0="0x80050033", cr4=cr4))
    assert r["outcome"]["vmxon"] == "ok" and r["rc"] == 0


def test_a_vmxon_region_with_the_other_processors_revision_fails(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    snap = vmxon_snapshot(read_vbox(IVY))
    snap["memory"][hex(VMXON_REGION)] = revision(read_vbox(COFFEE)).to_bytes(4, "little").hex() + "00" * 4
    r = check(tmp_path, capsys, snap)
    assert r["outcome"]["vmxon"] == "VMfailInvalid" and r["failed"]["vmxon"]


PRIMARY, SECONDARY = 0x4002, 0x401E
ACTIVATE_SECONDARY, PAUSE_LOOP_EXITING = 1 << 31, 1 << 10


@pytest.mark.parametrize("log", [IVY, COFFEE], ids=["ivybridge", "coffeelake"])
def test_the_test_hypervisors_vmcs_enters_on_real_capabilities(tmp_path, capsys, log: Path) -> None:  # type: ignore[no-untyped-def]
    r = check(tmp_path, capsys, vmlaunch_snapshot(read_vbox(log), {}))
    assert r["outcome"]["vmlaunch"] == "ok" and r["failed"]["vmlaunch"] == []


def test_pause_loop_exiting_is_a_coffeelake_control_not_an_ivybridge_one(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    # PROCBASED_CTLS2 allowed-1: Ivy Bridge 0x8ff (bit 10 clear), Coffee Lake 0x5fbcff (bit 10 set)
    base = json.loads((ROOT / "recordings/snapshots/bochs-vmlaunch-cpu0.vmxsnap.json").read_text())
    primary = int(base["processors"]["0"]["vmcs"][hex(PRIMARY)], 16) | ACTIVATE_SECONDARY
    edits = {PRIMARY: primary, SECONDARY: PAUSE_LOOP_EXITING}
    ivy = check(tmp_path, capsys, vmlaunch_snapshot(read_vbox(IVY), edits))
    coffee = check(tmp_path, capsys, vmlaunch_snapshot(read_vbox(COFFEE), edits))
    assert ivy["outcome"]["vmlaunch"] == "VMfailValid:7" and ivy["failed"]["vmlaunch"]
    assert coffee["outcome"]["vmlaunch"] == "ok"
