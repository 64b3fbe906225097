"""The lookup API others import: `from vmxdbg.decode import defs`."""
from __future__ import annotations

import pytest

from vmxdbg.decode import defs
from vmxdbg.common.errors import InputError


def test_msr_lookup() -> None:
    assert defs.msr(0x480) is defs.register("IA32_VMX_BASIC")
    assert defs.msr_or_none(0x123) is None
    with pytest.raises(InputError, match=r"^unknown MSR 0x123$"):
        defs.msr(0x123)


def test_register_lookup_is_case_insensitive_and_never_keyerror() -> None:
    assert defs.register("cr0").name == "CR0"
    assert defs.register("ia32_vmx_basic").msr == 0x480
    with pytest.raises(InputError, match="unknown register 'CR9'"):
        defs.register("CR9")


def test_get_mask_field() -> None:
    basic = defs.register("IA32_VMX_BASIC")
    assert basic.get(0x00DA040000000004, "revision_id") == 4
    assert basic.get(0x00DA040000000004, "region_size") == 0x400
    assert basic.mask("region_size") == 0x1FFF << 32
    assert basic.mask("true_controls") == 1 << 55
    with pytest.raises(InputError, match="IA32_VMX_BASIC has no field 'size'"):
        basic.mask("size")


def test_decode_refuses_a_value_that_does_not_fit() -> None:
    with pytest.raises(InputError, match="does not fit in 16 bits"):
        defs.register("SEGMENT_SELECTOR").decode(0x10000)
    with pytest.raises(InputError):
        defs.register("CR0").decode(-1)


def test_parse_build_bytes() -> None:
    sel = defs.register("SEGMENT_SELECTOR")
    assert sel.parse(b"\x13\x00") == {"index": 2, "ti": 0, "rpl": 3}
    assert sel.build({"index": 2, "ti": 1, "rpl": 0}) == b"\x14\x00"
    assert sel.to_bytes(0x10) == b"\x10\x00"
    with pytest.raises(InputError, match="3 bytes given, 2 needed"):
        sel.parse(b"\x00\x00\x00")


@pytest.mark.parametrize("key", [0x6800, "0x6800", "6800", "0X6800", "guest_cr0", "GUEST_CR0", " Guest_Cr0 "])
def test_vmcs_field_forms(key: object) -> None:
    f = defs.vmcs_field(key)  # type: ignore[arg-type]
    assert (f.encoding, f.name, f.width, f.type, f.high) == (0x6800, "GUEST_CR0", "natural", "guest", False)
    assert f.sdm_name == "Guest CR0" and "B.4.3" in f.sdm


def test_vmcs_field_aliases_and_high_halves() -> None:
    assert defs.vmcs_field("HOST_SYSENTER_ESP").name == "HOST_IA32_SYSENTER_ESP"
    assert defs.vmcs_field("PID_POINTER_TABLE_ADDR").encoding == 0x2042
    high = defs.vmcs_field(0x2001)
    assert (high.name, high.high, high.bits, high.width) == ("IO_BITMAP_A_HIGH", True, 32, "64")
    assert defs.vmcs_field("io_bitmap_a_high") == high
    assert defs.vmcs_field(0x2000).bits == 64 and defs.vmcs_field(0x0800).bits == 16
    assert defs.vmcs_field(0x4002).index == 1


@pytest.mark.parametrize("key, message", [
    (0x6801, "unknown VMCS field encoding 0x6801"),   # a natural-width field has no HIGH access
    (0x6FFE, "unknown VMCS field encoding 0x6ffe"),
    ("GUEST_CR9", "unknown VMCS field 'GUEST_CR9'"),
])
def test_vmcs_field_unknown(key: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        defs.vmcs_field(key)  # type: ignore[arg-type]


def test_vmcs_fields_listing() -> None:
    fields = defs.vmcs_fields()
    assert len(fields) >= 190 and fields == sorted(fields, key=lambda f: f.encoding)
    assert not any(f.high for f in fields)


def test_controls_api() -> None:
    assert set(defs.controls()) >= {"pin_based", "primary", "secondary", "tertiary", "exit", "secondary_exit", "entry"}
    assert defs.control("Pin-Based") is defs.control("pin_based")
    assert defs.control_for_vmcs(0x401E) is defs.control("secondary")
    assert defs.control_for_vmcs(0x6800) is None
    prim = defs.control("primary")
    assert prim.mask("hlt_exiting", "activate_secondary_controls") == (1 << 7) | (1 << 31)
    with pytest.raises(InputError, match="primary controls have no bit named 'hlt'"):
        prim.bit("hlt")
    with pytest.raises(InputError, match="unknown control field 'quaternary'"):
        defs.control("quaternary")


def test_loaded_once() -> None:
    assert defs.definitions() is defs.definitions()


def test_a_region_header_is_read_by_name_from_structs():
    from vmxdbg.decode.header import basic_revision, first_dword, revision_id, shadow_bit
    dword = first_dword(bytes.fromhex("2b000080") + b"\0" * 4)
    assert dword == 0x8000002B and revision_id(dword) == 0x2B and shadow_bit(dword)
    assert not shadow_bit(0x2B) and basic_revision(0x00DA040000000004) == 4
