"""structs/ definitions: every one round-trips through construct, and decodes
values worked out by hand from the SDM (325462-080US) to the right fields."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from vmxdbg.decode import defs
from vmxdbg.decode.loader import default_directory

REGISTERS = [r.name for r in defs.registers()]
CITATION = re.compile(r"\((SDM 325462-0\d\dUS|FRED architecture spec|editions after)")


def fields_of(reg_name: str, value: int) -> dict:
    return {f.name: f.value for f in defs.register(reg_name).decode(value)}


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("name", REGISTERS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_register_round_trips(name: str, data: st.DataObject) -> None:
    reg = defs.register(name)
    raw = data.draw(st.binary(min_size=reg.size, max_size=reg.size))
    parsed = reg.struct.parse(raw)
    assert reg.struct.build(parsed) == raw
    value = int.from_bytes(raw, "little")
    # the construct fields agree with plain shifting, MSB-first layout and all
    for f in reg.layout:
        assert parsed[f.name] == (value >> f.lo) & ((1 << f.width) - 1), f.name


@pytest.mark.parametrize("name", REGISTERS)
def test_layout_covers_every_bit_once(name: str) -> None:
    reg = defs.register(name)
    covered = 0
    for f in reg.layout:
        assert covered & f.mask == 0, f"{name}.{f.name} overlaps"
        covered |= f.mask
    assert covered == (1 << reg.width) - 1


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(REGISTERS), st.data())
def test_build_from_field_values_is_the_integer(name: str, data: st.DataObject) -> None:
    reg = defs.register(name)
    values = {f.name: data.draw(st.integers(0, (1 << f.width) - 1)) for f in reg.layout}
    expected = sum(v << reg.field(n).lo for n, v in values.items())
    assert int.from_bytes(reg.build(values), "little") == expected


@pytest.mark.parametrize("region", ["VMXON_REGION", "VMCS_REGION"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_region_header_round_trips(region: str, data: st.DataObject) -> None:
    r = defs.region(region)
    raw = data.draw(st.binary(min_size=r.header_size, max_size=r.header_size))
    assert r.struct.build(r.struct.parse(raw)) == raw


# ------------------------------------------------------------------ decoding, by hand from the SDM

def test_vmx_basic_by_hand() -> None:
    # 0x00da0400_00000004: bits 30:0 = 4; 44:32 = 0x400; 53:50 = 0b0110 (WB);
    # 0xda = 1101_1010 in bits 55:48 -> 55, 54, 52, 51, 49 set.
    f = fields_of("IA32_VMX_BASIC", 0x00DA040000000004)
    assert f["revision_id"] == 4
    assert f["region_size"] == 0x400
    assert f["memory_type"] == 6
    assert f["true_controls"] == 1 and f["ins_outs_info"] == 1 and f["dual_monitor"] == 1
    assert f["physaddr_32bit"] == 0 and f["no_error_code_check"] == 0
    meanings = {d.name: d.meaning for d in defs.msr(0x480).decode(0x00DA040000000004)}
    assert meanings["memory_type"] == "write-back"
    assert meanings["region_size"] == "1024 bytes"
    assert meanings["true_controls"] == "yes"


def test_fixed_msrs_by_hand() -> None:
    assert {n for n, v in fields_of("IA32_VMX_CR0_FIXED0", 0x80000021).items() if v} == {"pe", "ne", "pg"}
    cr0_f1 = fields_of("IA32_VMX_CR0_FIXED1", 0xFFFFFFFF)
    assert all(cr0_f1[n] == 1 for n in ("pe", "mp", "em", "ts", "et", "ne", "wp", "am", "nw", "cd", "pg"))
    assert all(defs.register("CR0").field(n).hi < 32 for n in cr0_f1)  # nothing set above bit 31
    assert {n for n, v in fields_of("IA32_VMX_CR4_FIXED0", 0x2000).items() if v} == {"vmxe"}
    # 0x3727ff: bits 10:0, 13, 18:16, 21:20
    assert {n for n, v in fields_of("IA32_VMX_CR4_FIXED1", 0x3727FF).items() if v} == {
        "vme", "pvi", "tsd", "de", "pse", "pae", "mce", "pge", "pce", "osfxsr", "osxmmexcpt",
        "vmxe", "fsgsbase", "pcide", "osxsave", "smep", "smap"}


def test_cr4_value_by_hand() -> None:
    # 0x3726f8 = bits 7:3, 10:9, 13, 18:16, 21:20
    assert {n for n, v in fields_of("CR4", 0x3726F8).items() if v} == {
        "de", "pse", "pae", "mce", "pge", "osfxsr", "osxmmexcpt", "vmxe",
        "fsgsbase", "pcide", "osxsave", "smep", "smap"}


def test_feature_control_by_hand() -> None:
    f = fields_of("IA32_FEATURE_CONTROL", 0x5)
    assert (f["lock"], f["vmx_inside_smx"], f["vmx_outside_smx"]) == (1, 0, 1)


def test_pinbased_capability_names_bits() -> None:
    d = {f.name: f for f in defs.msr(0x481).decode(0x0000007F00000016)}
    assert d["allowed0"].value == 0x16 and d["allowed1"].value == 0x7F
    assert d["allowed0"].meaning == "bit 1 (reserved, default1), bit 2 (reserved, default1), bit 4 (reserved, default1)"
    assert "activate_preemption_timer" in d["allowed1"].meaning
    assert "process_posted_interrupts" not in d["allowed1"].meaning


def test_pat_access_rights_eptp_headers_by_hand() -> None:
    pat = {d.name: d.meaning for d in defs.register("IA32_PAT").decode(0x0007040600070406)}
    assert [pat[f"pa{i}"] for i in range(8)] == ["WB", "WT", "UC-", "UC", "WB", "WT", "UC-", "UC"]
    ar = fields_of("ACCESS_RIGHTS", 0xA09B)  # 64-bit code: type 0xb, S, P, L, G
    assert (ar["type"], ar["s"], ar["dpl"], ar["p"], ar["l"], ar["db"], ar["g"], ar["unusable"]) == \
        (0xB, 1, 0, 1, 1, 0, 1, 0)
    assert fields_of("ACCESS_RIGHTS", 0x10000)["unusable"] == 1
    eptp = {d.name: d for d in defs.register("EPTP").decode(0x1000001E)}
    assert eptp["memory_type"].meaning == "write-back"
    assert eptp["walk_length"].meaning == "4-level"
    assert eptp["pml_address"].value == 0x10000
    assert defs.region("VMCS").parse(bytes.fromhex("04000080" "00000000")) == {"header": 0x80000004, "abort_indicator": 0}
    hdr = fields_of("VMCS_HEADER", 0x80000004)
    assert (hdr["revision_id"], hdr["shadow"]) == (4, 1)


def test_reserved_bits_that_are_set_are_reported() -> None:
    efer = {d.name: d for d in defs.register("IA32_EFER").decode((1 << 13) | 0x500)}
    assert efer["lme"].value == 1 and efer["lma"].value == 1
    assert efer["reserved_63_12"].value == 0x2 and efer["reserved_63_12"].meaning == "reserved, set"
    assert defs.register("IA32_EFER").reserved_mask == ((1 << 64) - 1) & ~0xD01


# ------------------------------------------------------------------ controls

def test_default1_classes_match_the_sdm() -> None:
    # Vol.3D A.3-A.5: the non-TRUE MSRs report these bits as allowed-0 = 1; in hex as
    # the first VMX processors' MSRs read them (e.g. Linux's *_ALWAYSON_WITHOUT_TRUE_MSR).
    expected = {"pin_based": 0x16, "primary": 0x0401E172, "exit": 0x36DFF, "entry": 0x11FF}
    for name, mask in expected.items():
        c = defs.control(name)
        assert sum(1 << b for b in c.default1) == mask, name
    assert defs.control("secondary").default1 == ()


def test_control_bits_worked_by_hand() -> None:
    pin = defs.control("pin_based")
    assert (pin.vmcs, pin.capability_msr, pin.true_msr) == (0x4000, 0x481, 0x48D)
    assert pin.bit("nmi_exiting") == 3
    assert pin.names(0x29) == ["external_interrupt_exiting", "nmi_exiting", "virtual_nmis"]
    primary = defs.control("primary")
    assert primary.bit("activate_secondary_controls") == 31 and primary.bit("use_tpr_shadow") == 21
    assert primary.bit("activate_tertiary_controls") == 17
    sec = defs.control("secondary")
    assert (sec.bit("enable_ept"), sec.bit("unrestricted_guest"), sec.bit("enable_vpid")) == (1, 7, 5)
    assert defs.control("exit").bit("host_address_space_size") == 9
    entry = defs.control("entry")
    assert (entry.bit("ia32e_mode_guest"), entry.bit("load_ia32_efer")) == (9, 15)
    assert (defs.control("tertiary").width, defs.control("tertiary").capability_msr) == (64, 0x492)
    assert defs.control("secondary_exit").vmcs == 0x2044
    assert defs.control("entry").names(1 << 3) == ["bit 3 (reserved, default1)"]   # entry bits 0-8 are default1


# ------------------------------------------------------------------ VMCS encodings

def raw_vmcs_entries() -> list:
    return yaml.safe_load((default_directory() / "vmcs_fields.yaml").read_text())["vmcs_fields"]


def test_every_encoding_carries_its_width_and_type() -> None:
    widths = {0: "16", 1: "64", 2: "32", 3: "natural"}
    types = {0: "control", 1: "exit_info", 2: "guest", 3: "host"}
    entries = raw_vmcs_entries()
    assert len(entries) >= 190
    for e in entries:
        enc = e["encoding"]
        assert widths[(enc >> 13) & 3] == str(e["width"]), e["name"]
        assert types[(enc >> 10) & 3] == e["type"], e["name"]
        assert enc & 1 == 0 and enc >> 15 == 0 and not enc & 0x1000, e["name"]
    assert len({e["encoding"] for e in entries}) == len(entries)


def test_well_known_encodings() -> None:
    # Vol.3D Appendix B, read off the tables by hand
    known = {"VIRTUAL_PROCESSOR_ID": 0x0000, "GUEST_ES_SELECTOR": 0x0800, "HOST_TR_SELECTOR": 0x0C0C,
             "IO_BITMAP_A": 0x2000, "EPT_POINTER": 0x201A, "TERTIARY_VM_EXEC_CONTROL": 0x2034,
             "VMCS_LINK_POINTER": 0x2800, "GUEST_IA32_EFER": 0x2806, "HOST_IA32_EFER": 0x2C02,
             "PIN_BASED_VM_EXEC_CONTROL": 0x4000, "CPU_BASED_VM_EXEC_CONTROL": 0x4002,
             "SECONDARY_VM_EXEC_CONTROL": 0x401E, "VM_EXIT_CONTROLS": 0x400C, "VM_ENTRY_CONTROLS": 0x4012,
             "VM_INSTRUCTION_ERROR": 0x4400, "VM_EXIT_REASON": 0x4402, "GUEST_TR_AR_BYTES": 0x4822,
             "GUEST_ACTIVITY_STATE": 0x4826, "HOST_IA32_SYSENTER_CS": 0x4C00, "EXIT_QUALIFICATION": 0x6400,
             "GUEST_CR0": 0x6800, "GUEST_RFLAGS": 0x6820, "HOST_CR0": 0x6C00, "HOST_RIP": 0x6C16}
    for name, enc in known.items():
        assert defs.vmcs_field(name).encoding == enc, name


def test_controls_point_at_their_vmcs_fields() -> None:
    names = {"pin_based": "PIN_BASED_VM_EXEC_CONTROL", "primary": "CPU_BASED_VM_EXEC_CONTROL",
             "secondary": "SECONDARY_VM_EXEC_CONTROL", "tertiary": "TERTIARY_VM_EXEC_CONTROL",
             "exit": "VM_EXIT_CONTROLS", "secondary_exit": "SECONDARY_VM_EXIT_CONTROLS",
             "entry": "VM_ENTRY_CONTROLS"}
    for ctl, field in names.items():
        assert defs.vmcs_field(defs.control(ctl).vmcs).name == field


# ------------------------------------------------------------------ citations and coverage

def test_every_definition_cites_the_sdm_with_edition() -> None:
    cites = [r.sdm for r in defs.registers()] + [c.sdm for c in defs.controls().values()]
    cites += [f.sdm for f in defs.vmcs_fields()] + [r.sdm for r in defs.regions()]
    for c in cites:
        assert CITATION.search(c), c


def test_required_msrs_are_defined() -> None:
    wanted = [0x3A, 0x1D9, 0x277, 0xC0000080] + list(range(0x480, 0x494))
    for index in wanted:
        assert defs.msr(index).msr == index
    for name in ("CR0", "CR4", "RFLAGS", "DR7", "SEGMENT_SELECTOR", "ACCESS_RIGHTS", "EPTP"):
        assert defs.register(name).msr is None
    assert defs.register("SEGMENT_SELECTOR").width == 16 and defs.register("ACCESS_RIGHTS").width == 32


def test_build_ships_the_yaml(tmp_path: Path) -> None:
    """`pip install .` must carry structs/*.yaml as vmxdbg/_structs: run the same setuptools
    build step pip runs (build_py, which lays out the wheel's files), offline."""
    import subprocess
    import sys
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 61:
        pytest.skip(f"setuptools {setuptools.__version__} cannot read pyproject.toml (pip builds with >=61)")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
                           "build_py", "--build-lib", str(tmp_path / "lib")],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    built = tmp_path / "lib" / "vmxdbg"
    for f in ("registers.yaml", "controls.yaml", "vmcs_fields.yaml", "regions.yaml"):
        assert (built / "_structs" / f).read_bytes() == (root / "structs" / f).read_bytes()
    assert (built / "decode" / "defs.py").is_file()
