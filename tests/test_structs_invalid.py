"""A malformed definition in structs/ is a DefinitionError naming the file and the key."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
import yaml

from vmxdbg.decode.loader import FILES, default_directory, load_definitions
from vmxdbg.common.errors import DefinitionError


@pytest.fixture
def structs(tmp_path: Path) -> Path:
    for name in FILES:
        shutil.copy(default_directory() / name, tmp_path / name)
    return tmp_path


def edit_data(directory: Path, name: str, change: Callable[[dict], None]) -> None:
    path = directory / name
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def edit_text(directory: Path, name: str, old: str, new: str) -> None:
    path = directory / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def failure(directory: Path) -> str:
    with pytest.raises(DefinitionError) as info:
        load_definitions(directory)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_shipped_definitions_load(structs: Path) -> None:
    assert load_definitions(structs).by_msr[0x480].name == "IA32_VMX_BASIC"


def test_overlapping_fields(structs: Path) -> None:
    def change(d: dict) -> None:
        d["registers"]["IA32_VMX_BASIC"]["fields"][2]["bits"] = "40:20"
    edit_data(structs, "registers.yaml", change)
    assert failure(structs) == f"{structs / 'registers.yaml'} [IA32_VMX_BASIC.fields[2].bits]: overlaps revision_id"


def test_unquoted_bit_range_is_explained(structs: Path) -> None:
    edit_text(structs, "registers.yaml", 'revision_id, bits: "30:0"', "revision_id, bits: 30:0")
    msg = failure(structs)
    assert "[IA32_VMX_BASIC.fields[0].bits]" in msg and "quote" in msg


def test_bit_outside_the_register(structs: Path) -> None:
    def change(d: dict) -> None:
        d["registers"]["SEGMENT_SELECTOR"]["fields"][2]["bits"] = "16:3"
    edit_data(structs, "registers.yaml", change)
    assert "[SEGMENT_SELECTOR.fields[2].bits]: bit 16 is outside a 16-bit register" in failure(structs)


@pytest.mark.parametrize("mutate, key, text", [
    (lambda r: r["IA32_EFER"]["fields"][0].update(bitz="0"), "IA32_EFER.fields[0].bitz", "unknown key"),
    (lambda r: r["CR0"].pop("sdm"), "CR0.sdm", "missing"),
    (lambda r: r["DR7"].update(width=48), "DR7.width", "48 is not one of"),
    (lambda r: r["IA32_PAT"].update(msr=0x480), "IA32_PAT.msr", "already defined by IA32_VMX_BASIC"),
    (lambda r: r["IA32_PAT"]["fields"][0]["enum"].update({9: "too big"}), "IA32_PAT.fields[0].enum[9]",
     "out of range"),
    (lambda r: r["RFLAGS"]["fields"][2].update(name="Pf"), "RFLAGS.fields[2].name", "not a snake_case name"),
    (lambda r: r["RFLAGS"]["fields"][2].update(name="cf"), "RFLAGS.fields[2].name", "already field [0]"),
    (lambda r: r["IA32_VMX_PINBASED_CTLS"]["fields"][0].update(control="pin"),
     "IA32_VMX_PINBASED_CTLS.fields[0].control", "not a control"),
    (lambda r: r["IA32_VMX_PROCBASED_CTLS3"]["fields"][0].update(control="primary"),
     "IA32_VMX_PROCBASED_CTLS3.fields[0].control", "64 bits, primary controls are 32"),
])
def test_bad_register(structs: Path, mutate: Callable[[dict], None], key: str, text: str) -> None:
    edit_data(structs, "registers.yaml", lambda d: mutate(d["registers"]))
    msg = failure(structs)
    assert msg.startswith(f"{structs / 'registers.yaml'} [{key}]: ") and text in msg, msg


@pytest.mark.parametrize("mutate, key, text", [
    (lambda c: c["pin_based"]["bits"].update({32: "too_high"}), "pin_based.bits[32]", "out of range"),
    (lambda c: c["primary"]["bits"].update({18: "hlt_exiting"}), "primary.bits[18]", "already names bit 7"),
    (lambda c: c["exit"].update(capability_msr=0x999), "exit.capability_msr", "MSR 0x999 is not defined"),
    (lambda c: c["entry"].update(vmcs=0x6800), "entry.width", "GUEST_CR0 is natural-bit"),
    (lambda c: c["secondary"].update(vmcs=0x1234), "secondary.vmcs", "not in structs/vmcs_fields.yaml"),
    (lambda c: c["tertiary"].update(true_msr=0x48E), "tertiary.true_msr", "only 32-bit controls"),
    (lambda c: c["secondary"].update(default1=[3]), "secondary.default1", "need a true_msr"),
])
def test_bad_control(structs: Path, mutate: Callable[[dict], None], key: str, text: str) -> None:
    edit_data(structs, "controls.yaml", lambda d: mutate(d["controls"]))
    msg = failure(structs)
    assert msg.startswith(f"{structs / 'controls.yaml'} [{key}]: ") and text in msg, msg


def _vmcs_index(d: dict, name: str) -> int:
    return next(i for i, e in enumerate(d["vmcs_fields"]) if e["name"] == name)


@pytest.mark.parametrize("name, change, attr, text", [
    ("GUEST_CR0", {"width": 32}, "width", "GUEST_CR0: 32 contradicts encoding 0x6800 (bits 14:13 say natural)"),
    ("HOST_RIP", {"type": "guest"}, "type", "HOST_RIP: guest contradicts encoding 0x6c16"),
    ("IO_BITMAP_A", {"encoding": 0x2001}, "encoding", "is a HIGH access"),
    ("GUEST_RIP", {"encoding": 0x6800}, "encoding", "0x6800 is already GUEST_CR0"),
    ("GUEST_RSP", {"name": "GUEST_CR0"}, "name", "GUEST_CR0 already names encoding 0x6800"),
    ("TSC_OFFSET", {"aliases": ["IO_BITMAP_A_HIGH"]}, "name", "IO_BITMAP_A_HIGH already names"),
    ("GUEST_CR0", {"kind": "guest"}, "kind", "unknown key"),
])
def test_bad_vmcs_field(structs: Path, name: str, change: dict, attr: str, text: str) -> None:
    holder = {}

    def mutate(d: dict) -> None:
        holder["i"] = _vmcs_index(d, name)
        d["vmcs_fields"][holder["i"]].update(change)
    edit_data(structs, "vmcs_fields.yaml", mutate)
    msg = failure(structs)
    assert msg.startswith(f"{structs / 'vmcs_fields.yaml'} [vmcs_fields[{holder['i']}].{attr}]: ") and text in msg, msg


def test_bad_region(structs: Path) -> None:
    def change(d: dict) -> None:
        d["regions"]["VMCS_REGION"]["layout"][0]["register"] = "IA32_EFER"
    edit_data(structs, "regions.yaml", change)
    msg = failure(structs)
    assert "[VMCS_REGION.layout[0].register]: IA32_EFER is 64 bits, the part is 32" in msg


def test_duplicate_key_is_caught_with_its_line(structs: Path) -> None:
    edit_text(structs, "registers.yaml", "  CR4:\n", "  CR0:\n")
    msg = failure(structs)
    assert msg.startswith(f"{structs / 'registers.yaml'}:") and "duplicate key 'CR0'" in msg


def test_not_yaml(structs: Path) -> None:
    (structs / "regions.yaml").write_text("regions:\n  X: [unclosed\n")
    msg = failure(structs)
    assert msg.startswith(f"{structs / 'regions.yaml'}:") and "malformed YAML" in msg


def test_missing_top_key_and_missing_file(structs: Path) -> None:
    (structs / "controls.yaml").write_text("control: {}\n")
    assert failure(structs) == f"{structs / 'controls.yaml'} [controls]: missing the top-level key 'controls'"
    (structs / "controls.yaml").unlink()
    assert "cannot read" in failure(structs)
