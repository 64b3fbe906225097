"""capability_report: may each control bit be 0 / be 1, worked out by hand from
the MSR values and Vol.3D Appendix A (SDM 325462-080US). Unknown is never 0."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from vmxdbg.decode.caps import BitCapability, Section, capability_report

# A Skylake-era processor (the values of vmxdbg/examples/vmentry.vmxsnap.json)
SKYLAKE = {0x3A: 0x20005, 0x480: 0xDA040000000004, 0x481: 0x7F00000016, 0x482: 0xFFF9FFFE0401E172,
           0x483: 0x1FFFFFF00036DFF, 0x484: 0x3FFFF000011FF, 0x485: 0x7004C1E7, 0x486: 0x80000021,
           0x487: 0xFFFFFFFF, 0x488: 0x2000, 0x489: 0x3727FF, 0x48A: 0x2E, 0x48B: 0x5FBCFF00000000,
           0x48C: 0xF0106734141, 0x48D: 0x7F00000016, 0x48E: 0xFFF9FFFE04006172, 0x48F: 0x1FFFFFF00036DFB,
           0x490: 0x3FFFF000011FB, 0x491: 0x1}


def section(msrs: Dict[int, int], title_start: str) -> Section:
    return next(s for s in capability_report(msrs) if s.title.startswith(title_start))


def bit(s: Section, name: str) -> BitCapability:
    return next(b for b in s.bits if b.name == name)


def may(s: Section, name: str) -> Tuple[Optional[bool], Optional[bool]]:
    b = bit(s, name)
    return b.may_be_0, b.may_be_1


def test_true_msrs_govern_when_basic_55_is_set() -> None:
    pin = section(SKYLAKE, "Pin-based")
    assert pin.source.startswith("IA32_VMX_TRUE_PINBASED_CTLS")
    assert may(pin, "nmi_exiting") == (True, True)
    assert may(pin, "process_posted_interrupts") == (True, False)        # allowed-1 0x7f: bit 7 clear
    assert [b.verdict for b in pin.bits if b.default1] == ["must be 1"] * 3  # TRUE allowed-0 0x16
    primary = section(SKYLAKE, "Primary processor")
    # TRUE allowed-0 0x04006172 releases bits 15 and 16 that 0x0401e172 forces
    assert may(primary, "cr3_load_exiting") == (True, True)
    assert may(primary, "activate_tertiary_controls") == (True, False)   # 0x482 bit 49 clear
    exit_ = section(SKYLAKE, "Primary VM-exit")
    assert may(exit_, "save_debug_controls") == (True, True)             # 0x36dfb: bit 2 released


def test_without_true_controls_default1_bits_must_be_1() -> None:
    msrs = {**SKYLAKE, 0x480: 0x5A040000000004}                   # bit 55 clear
    primary = section(msrs, "Primary processor")
    assert primary.source.startswith("IA32_VMX_PROCBASED_CTLS ")
    assert may(primary, "cr3_load_exiting") == (False, True)
    assert bit(primary, "cr3_load_exiting").verdict == "must be 1"
    assert may(primary, "hlt_exiting") == (True, True)


def test_true_msr_missing_leaves_default1_zero_setting_unknown() -> None:
    msrs = {k: v for k, v in SKYLAKE.items() if k != 0x48E}
    primary = section(msrs, "Primary processor")
    assert may(primary, "cr3_load_exiting") == (None, True)
    assert bit(primary, "cr3_load_exiting").verdict == "unknown"
    assert may(primary, "hlt_exiting") == (True, True)                   # not default1: 0x482 answers
    no_basic = {k: v for k, v in msrs.items() if k != 0x480}
    assert may(section(no_basic, "Primary processor"), "cr3_load_exiting") == (None, True)


def test_secondary_and_64_bit_controls() -> None:
    sec = section(SKYLAKE, "Secondary processor")
    # allowed-1 0x005fbcff: bits 0-7, 10-13, 15-20, 22
    assert may(sec, "enable_ept") == (True, True) and may(sec, "unrestricted_guest") == (True, True)
    assert may(sec, "vmcs_shadowing") == (True, False) and may(sec, "mode_based_execute_control") == (True, True)
    assert may(sec, "pasid_translation") == (True, False)
    tert = section({**SKYLAKE, 0x482: SKYLAKE[0x482] | 1 << 49, 0x492: 0x10}, "Tertiary")
    assert tert.status == "known"
    assert may(tert, "ipi_virtualization") == (True, True) and may(tert, "loadiwkey_exiting") == (True, False)
    vmfunc = section(SKYLAKE, "VM-function")
    assert may(vmfunc, "eptp_switching") == (True, True)


def test_msrs_that_do_not_exist_are_unsupported() -> None:
    assert section(SKYLAKE, "Tertiary").status == "unsupported"         # 0x482 bit 49 = 0
    assert section(SKYLAKE, "Secondary VM-exit").status == "unsupported"  # 0x483 bit 63 = 0
    no_sec = {k: v for k, v in SKYLAKE.items() if k != 0x48B}
    no_sec[0x482] &= ~(1 << 63)
    no_sec.pop(0x48E)
    assert section(no_sec, "Secondary processor").status == "unsupported"
    assert section({k: v for k, v in no_sec.items() if k != 0x48C}, "EPT and VPID").status == "unsupported"
    assert section(SKYLAKE, "EPT and VPID").status == "known"


def test_nothing_known_means_every_answer_unknown() -> None:
    for s in capability_report({}):
        assert s.status == "unknown", s.title
        for b in s.bits:
            if s.title.startswith(("Tertiary", "Secondary VM-exit", "VM-function")):
                assert (b.may_be_0, b.may_be_1) == (True, None)            # 64-bit: 0 always allowed
            else:
                assert (b.may_be_0, b.may_be_1) == (None, None), (s.title, b)
        assert s.fields == ()


def test_cr_fixed_bits() -> None:
    cr0 = section(SKYLAKE, "CR0 in VMX")
    assert [b.name for b in cr0.bits if b.verdict == "must be 1"] == ["pe", "ne", "pg"]
    assert bit(cr0, "cd").verdict == "free"
    cr4 = section(SKYLAKE, "CR4 in VMX")
    assert [b.name for b in cr4.bits if b.verdict == "must be 1"] == ["vmxe"]
    assert bit(cr4, "smxe").verdict == "must be 0" and bit(cr4, "smep").verdict == "free"
    half = section({0x486: 0x80000021}, "CR0 in VMX")
    assert half.status == "unknown" and may(half, "pe") == (False, None) and may(half, "mp") == (True, None)
    assert bit(half, "pe").verdict == "must be 1"


def test_register_sections_decode_fields() -> None:
    basic = section(SKYLAKE, "Basic VMX")
    f = {d.name: d for d in basic.fields}
    assert f["revision_id"].value == 4 and f["memory_type"].meaning == "write-back"
    ept = {d.name: d.value for d in section(SKYLAKE, "EPT and VPID").fields}
    # 0xf01_06734141: bits 0, 6, 8, 14, 16, 17, 20, 21, 22, 25, 26, 32, 40-43
    assert (ept["execute_only"], ept["walk_length_4"], ept["pde_2mb"], ept["invvpid"]) == (1, 1, 1, 1)
    assert ept["walk_length_5"] == 0 and ept["advanced_exit_info"] == 1 and ept["supervisor_shadow_stack"] == 0
    assert section({}, "Miscellaneous").status == "unknown"
