"""`vmxdbg vmcs ADDRESS`: the region in memory decodes to the fields written, and is checked like them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import pytest

from vmxdbg.cli import main
from vmxdbg.decode.layouts import find_layout
from vmxdbg.decode.regions import inspect, snapshot_reader
from vmxdbg.rules import check_snapshot
from vmxdbg.state.snapshot import load_snapshot

EXAMPLE = Path(__file__).resolve().parents[1] / "vmxdbg" / "examples" / "vmentry.vmxsnap.json"
VMXON, VMCS = 0x1A2B3000, 0x1A2B4000


def region_snapshot(tmp_path: Path, layout_name: str, *, patch: Optional[Dict[int, int]] = None,
                    revision: Optional[int] = None, shadow: bool = False, vmxon_bit31: bool = False,
                    cut: Optional[int] = None, launch: int = 0) -> Path:
    """The VM-entry baseline with its VMCS moved from "vmcs" into memory, in `layout_name`'s layout."""
    data = json.loads(EXAMPLE.read_text())
    lay = find_layout(layout_name)
    p = data["processors"]["0"]
    rev = lay.revision_id if revision is None else revision
    p["msr"]["0x480"] = hex(int(p["msr"]["0x480"], 16) & ~0x7FFFFFFF | lay.revision_id)
    values = {int(k, 16): int(v, 16) for k, v in p.pop("vmcs").items()}
    values.update(patch or {})
    region = bytearray(lay.build(values, shadow=shadow, extras={"launch_state": launch}))
    region[:4] = (rev | (0x80000000 if shadow else 0)).to_bytes(4, "little")
    vmxon = lay.revision_id | (0x80000000 if vmxon_bit31 else 0)
    data["memory"] = {hex(VMCS): region[:cut].hex(), hex(VMXON): vmxon.to_bytes(4, "little").hex() + "00" * 4092}
    path = tmp_path / f"{layout_name}.vmxsnap.json"
    path.write_text(json.dumps(data))
    return path


def run(capsys: pytest.CaptureFixture, *argv: str):  # type: ignore[no-untyped-def]
    status = main(["vmcs", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("layout", ["bochs", "kvm-vmcs12"])
def test_fields_from_memory_equal_those_written_and_pass_the_same_checks(tmp_path: Path, layout: str,
                                                                         capsys: pytest.CaptureFixture) -> None:
    original = load_snapshot(EXAMPLE)
    path = region_snapshot(tmp_path, layout)
    snap = load_snapshot(path)
    region = inspect(VMCS, snapshot_reader(snap), snapshot=snap)
    assert region.kind == "vmcs" and region.layout.name == layout
    written = original.processors[0].vmcs
    assert {e: region.fields[e] for e in written} == written       # every baseline field, as written
    assert region.launch_state() == "clear"
    assert check_snapshot(original).verdict(0, "vmlaunch").outcome == "ok"
    status, out, err = run(capsys, hex(VMCS), "--source", str(path), "--format", "json")
    assert status == 0, out + err
    doc = json.loads(out)
    assert doc["layout"] == layout and doc["kind"] == "vmcs" and doc["launch_state"] == "clear"
    verdicts = {v["instruction"]: v for v in doc["report"]["processors"]["0"]}
    assert verdicts["vmlaunch"]["outcome"] == "ok"


def test_text_output_groups_fields_by_sdm_name_with_controls(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status, out, _ = run(capsys, hex(VMCS), "--source", str(region_snapshot(tmp_path, "bochs")))
    assert status == 0
    order = [out.index(t) for t in ("Control fields", "Read-only data fields", "Guest-state fields",
                                    "Host-state fields", "VM-entry checks on cpu 0")]
    assert order == sorted(order)
    assert "revision id 0x2b, shadow-VMCS indicator 0" in out and "launch state clear" in out
    proc = next(line for line in out.splitlines() if line.startswith("  0x4002"))
    assert "Primary processor-based VM-execution controls" in proc and "use_msr_bitmaps" in proc
    assert "cpu 0: its current VMCS" in out


def test_a_broken_field_in_memory_fails_the_entry(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = region_snapshot(tmp_path, "kvm-vmcs12", patch={0x4000: 0x0})    # pin-based controls: default1 bits clear
    status, out, _ = run(capsys, hex(VMCS), "--source", str(path), "--format", "json")
    assert status == 1
    vl = next(v for v in json.loads(out)["report"]["processors"]["0"] if v["instruction"] == "vmlaunch")
    assert vl["outcome"] == "VMfailValid:7"
    assert any("vmcs:0x4000" in f["inputs"] for f in vl["findings"] if f["status"] == "fail")


def test_unknown_revision_names_the_id_and_how_to_learn_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = region_snapshot(tmp_path, "bochs", revision=0x1234)
    status, _, err = run(capsys, hex(VMCS), "--source", str(path))
    assert status == 2
    assert "revision id 0x1234" in err and "vmxdbg layout learn" in err and "docs/vmcs-layouts.md" in err
    assert err.count("\n") == 1
    # --layout forces one; the revision mismatch with IA32_VMX_BASIC is then a problem
    status, out, _ = run(capsys, hex(VMCS), "--source", str(path), "--layout", "bochs", "--no-check")
    assert status == 1 and "differs from IA32_VMX_BASIC[30:0] = 0x2b" in out


def test_vmxon_region_passed_as_vmcs_is_recognised(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status, out, _ = run(capsys, hex(VMXON), "--source", str(region_snapshot(tmp_path, "bochs")))
    assert status == 1
    assert out.startswith("VMXON region at 0x1a2b3000") and "this is the VMXON region of cpu 0, not a VMCS" in out
    assert "VM-entry checks" not in out


def test_vmcs_passed_as_vmxon_region_is_recognised(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status, out, _ = run(capsys, hex(VMCS), "--source", str(region_snapshot(tmp_path, "bochs")), "--as", "vmxon")
    assert status == 1 and "used as a VMCS (cpu 0: its current VMCS)" in out
    # a VMCS no processor points at is still recognised by its content
    snap = load_snapshot(region_snapshot(tmp_path, "bochs"))
    snap.processors[0].vmcs_pointer = None
    region = inspect(VMCS, snapshot_reader(snap), asked="vmxon", snapshot=snap)
    assert region.kind == "vmcs"
    assert any("looks like a VMCS" in n.text and "link pointer" in n.text for n in region.notes)


def test_vmxon_region_bit31(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = region_snapshot(tmp_path, "bochs", vmxon_bit31=True)
    status, out, _ = run(capsys, hex(VMXON), "--source", str(path), "--as", "vmxon")
    assert status == 1 and "bit 31 (must be 0) 1" in out and "VMXON fails (VMfailInvalid)" in out
    status, out, _ = run(capsys, hex(VMXON), "--source", str(region_snapshot(tmp_path, "bochs")), "--as", "vmxon")
    assert status == 0 and "PROBLEM" not in out


def test_shadow_vmcs_as_current_vmcs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status, out, _ = run(capsys, hex(VMCS), "--source", str(region_snapshot(tmp_path, "bochs", shadow=True)))
    assert status == 1
    assert out.startswith("shadow VMCS region") and "shadow-VMCS indicator (bit 31) is 1" in out
    assert "fail (VMfailInvalid)" in out


def test_partial_memory_leaves_fields_unknown(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = region_snapshot(tmp_path, "bochs", cut=0x800)
    status, out, _ = run(capsys, hex(VMCS), "--source", str(path), "--format", "json")
    doc = json.loads(out)
    # Bochs keeps the 32-bit controls from 0x810 on: past the known bytes, so unknown (not 0)
    assert "0x4000" in doc["unknown_fields"] and "0x4000" not in doc["fields"] and "0x800" in doc["fields"]
    vl = next(v for v in doc["report"]["processors"]["0"] if v["instruction"] == "vmlaunch")
    assert vl["outcome"] == "unknown"
    assert any("vmcs:0x4000" in f["inputs"] for f in vl["findings"] if f["status"] == "unknown")


def test_memory_not_in_the_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status, _, err = run(capsys, "0x5000", "--source", str(region_snapshot(tmp_path, "bochs")))
    assert status == 2 and "memory at 0x5000 is not in the input" in err


def test_launched_state_from_the_region_checks_vmresume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = region_snapshot(tmp_path, "kvm-vmcs12", launch=1)
    status, out, _ = run(capsys, hex(VMCS), "--source", str(path), "--format", "json")
    doc = json.loads(out)
    assert doc["launch_state"] == "launched"
    vr = next(v for v in doc["report"]["processors"]["0"] if v["instruction"] == "vmlaunch")
    assert vr["outcome"] != "ok"          # VMLAUNCH of a launched VMCS fails (VMfailValid 4)


def test_vmcs_and_decode_name_reserved_bits_alike(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 18: `vmcs` said `bit_1` where `decode` says `(reserved, default1)`."""
    status, out, _ = run(capsys, hex(VMCS), "--source", str(region_snapshot(tmp_path, "bochs")), "--no-check")
    pin = next(line for line in out.splitlines() if line.startswith("  0x4000"))
    assert "bit 1 (reserved, default1)" in pin and "bit_" not in out
    assert main(["decode", "pin_based", "0x16"]) == 0
    assert "1  (reserved, default1)" in capsys.readouterr().out
