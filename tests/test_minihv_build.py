"""minihv's build script and knob encoding (no Bochs needed; the build needs nasm)."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from vmxdbg.hypervisors.minihv import build as minihv_build  # noqa: E402
from vmxdbg.hypervisors.minihv import knobs  # noqa: E402

from vmxdbg.common.errors import InputError, VmxdbgError  # noqa: E402

needs_nasm = pytest.mark.skipif(not shutil.which("nasm"), reason="nasm not installed (apt-get install nasm)")


def test_layout_numbers_match_the_documented_addresses() -> None:
    assert knobs.CONFIG_PHYS == 0x9000 and knobs.CONFIG_OFFSET == 0x1400
    assert knobs.L["CFG_MAGIC"].to_bytes(8, "little") == b"MHVCONF1"


def test_encode_decode_round_trip() -> None:
    config = knobs.Config(cores={1: knobs.CoreKnobs(wrong_revision=True, revision_value=0x1234),
                                 3: knobs.CoreKnobs(stops=True, share_vmxon=True, share_with=2,
                                                    overrides=((0x2800, 0), (0x4002, 2**64 - 1)))},
                          shutdown=True, expect_cpus=4)
    page = knobs.encode(config)
    assert len(page) == 0x1000 and page[:8] == b"MHVCONF1"
    assert struct.unpack_from("<I", page, 0x100 + 0x100)[0] == knobs.L["K_WRONG_REVISION"]
    assert knobs.decode(page) == config
    assert knobs.decode(bytes(0x1000)) is None


def test_msr_load_lists_are_encoded_per_processor() -> None:
    config = knobs.Config(cores={2: knobs.CoreKnobs(msr_load=((0x174, 8, 0), (0x808, 0, 1)))})
    page = knobs.encode(config)
    area = knobs.msr_list_address(2)
    assert area % 16 == 0 and knobs.CONFIG_PHYS < area < knobs.CONFIG_PHYS + 0x1000
    off = area - knobs.CONFIG_PHYS
    assert struct.unpack_from("<I", page, off - knobs.L["ML_ENTRIES"] + knobs.L["ML_COUNT"])[0] == 2
    assert struct.unpack_from("<IIQIIQ", page, off) == (0x174, 0, 8, 0x808, 1, 0)
    assert knobs.decode(page) == config
    # every processor's list fits in the page, after the last processor's record
    last = knobs.msr_list_address(knobs.MAX_CPUS - 1) + 16 * knobs.MAX_MSR_LOAD
    assert last <= knobs.CONFIG_PHYS + 0x1000
    assert knobs.msr_list_address(0) - knobs.L["ML_ENTRIES"] >= knobs.CONFIG_PHYS + 0x100 + 0x100 * knobs.MAX_CPUS
    spec = knobs.from_specs(["1:msr_load=0x174:0x8", "1:msr_load=0x808:0:1"])
    assert spec.core(1).msr_load == ((0x174, 8, 0), (0x808, 0, 1))
    with pytest.raises(InputError, match="at most 8"):
        knobs.encode(knobs.Config(cores={0: knobs.CoreKnobs(msr_load=((0x174, 0, 0),) * 9)}))
    with pytest.raises(InputError, match="knob spec"):
        knobs.from_specs(["1:msr_load=0x174"])


@pytest.mark.parametrize("config, message", [
    (knobs.Config(cores={8: knobs.CoreKnobs()}), "processor 8"),
    (knobs.Config(cores={0: knobs.CoreKnobs(overrides=((1, 1),) * 16)}), "at most 15"),
    (knobs.Config(cores={0: knobs.CoreKnobs(overrides=((1, 2**64),))}), "override value"),
    (knobs.Config(cores={2: knobs.CoreKnobs(share_vmxon=True, share_with=9)}), "share_with 9"),
])
def test_encode_refuses_bad_values(config: knobs.Config, message: str) -> None:
    with pytest.raises(InputError, match=message):
        knobs.encode(config)


def test_specs() -> None:
    config = knobs.from_specs(["1:wrong_revision,stops", "1:override=0x2800:0", "0:share_vmxon=1",
                               "2:revision=0x8000002b"], shutdown=True)
    assert config.core(1) == knobs.CoreKnobs(wrong_revision=True, stops=True, overrides=((0x2800, 0),))
    assert config.core(0) == knobs.CoreKnobs(share_vmxon=True, share_with=1)
    assert config.core(2) == knobs.CoreKnobs(wrong_revision=True, revision_value=0x8000002B)
    assert config.core(3) == knobs.CoreKnobs() and config.shutdown
    for bad in ("x:stops", "1:nonsense", "1:override=12"):
        with pytest.raises(InputError, match="knob spec"):
            knobs.from_specs([bad])


@needs_nasm
def test_build_image_symbols_and_patch(tmp_path: Path) -> None:
    image = minihv_build.build(tmp_path, knobs.Config(cores={1: knobs.CoreKnobs(bit31=True)}))
    data = image.read_bytes()
    assert len(data) == 1474560 and data[510:512] == b"\x55\xaa"
    assert knobs.decode(data[0x1400:0x2400]).core(1).bit31
    labels = minihv_build.symbols(tmp_path)
    # each planned stop is a 3-byte `xchg bx, bx` (66 87 db) right before its instruction
    for insn in ("vmxon", "vmclear", "vmptrld", "vmlaunch", "vmxoff"):
        stop, at = labels["stop_" + insn], labels["at_" + insn]
        assert data[stop - 0x7C00:stop - 0x7C00 + 3] == b"\x66\x87\xdb" and at == stop + 3
    assert data[labels["at_vmlaunch"] - 0x7C00:][:3] == b"\x0f\x01\xc2"       # VMLAUNCH
    assert data[labels["at_vmxoff"] - 0x7C00:][:3] == b"\x0f\x01\xc4"         # VMXOFF
    assert data[labels["at_vmxon"] - 0x7C00:][:4] == b"\xf3\x41\x0f\xc7"      # VMXON [r15+d] (F3 REX.B 0F C7 /6)
    assert labels["cfg_stop"] < labels["at_vmxon"] and "vm_exit_handler" in labels


@needs_nasm
def test_patch_refuses_a_file_without_the_block(tmp_path: Path) -> None:
    other = tmp_path / "other.img"
    other.write_bytes(bytes(1474560))
    with pytest.raises(InputError, match="no minihv configuration block"):
        knobs.patch_image(other, knobs.Config())


def test_missing_nasm_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minihv_build.shutil, "which", lambda name: None)
    with pytest.raises(VmxdbgError, match="nasm not found on PATH"):
        minihv_build.build(tmp_path)


def test_bochsrc_refuses_unsafe_paths_and_counts() -> None:
    assert "count=4," in minihv_build.bochsrc("/tmp/a.img", 4)
    with pytest.raises(VmxdbgError, match="cpus=9"):
        minihv_build.bochsrc("/tmp/a.img", 9)
    with pytest.raises(VmxdbgError, match="spaces"):
        minihv_build.bochsrc("/tmp/a b.img", 2)


def test_guest_mode_knob() -> None:
    config = knobs.from_specs(["1:guest=real", "2:guest=unrestricted-pm,stops", "3:guest=v86"])
    assert [config.core(c).guest for c in range(4)] == ["64", "real", "unrestricted-pm", "v86"]
    page = knobs.encode(config)
    bits = [struct.unpack_from("<I", page, 0x100 + 0x100 * c)[0] for c in range(4)]
    assert bits == [0, knobs.L["K_GUEST_REAL"], knobs.L["K_GUEST_UPM"] | knobs.L["K_STOPS"], knobs.L["K_GUEST_V86"]]
    modes = [b for b in knobs.GUEST_MODES.values() if b]
    assert len(set(modes)) == 3 and not set(modes) & set(knobs.KNOB_BITS.values())
    assert knobs.decode(page) == config
    with pytest.raises(InputError, match="knob spec"):
        knobs.from_specs(["1:guest=protected"])
    with pytest.raises(InputError, match="guest mode 'pm'"):
        knobs.encode(knobs.Config(cores={1: knobs.CoreKnobs(guest="pm")}))


@needs_nasm
def test_guest_mode_tables_and_ept_are_in_the_image(tmp_path: Path) -> None:
    minihv_build.build(tmp_path)
    labels = minihv_build.symbols(tmp_path)
    for table in ("guest_common_table", "guest_real_table", "guest_upm_table", "guest_v86_table"):
        assert table in labels
    # the guest of these modes runs with CS base 0 in real and virtual-8086 mode: below 64 KiB
    assert labels["guest_low"] < 0x10000 and "build_ept" in labels
    # the EPT tables do not overlap the image, the paging tables, the IDT/TSS or the per-processor regions
    ept = range(knobs.L["EPT_PML4_PHYS"], knobs.L["EPT_PD_PHYS"] + 0x1000)
    for other in (knobs.L["PML4_PHYS"] + 0x5000, knobs.L["IDT_PHYS"], knobs.L["TSS_PHYS"], labels["image_end"] - 1,
                  knobs.L["PERCPU_BASE"]):
        assert other not in ept
