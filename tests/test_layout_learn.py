"""`vmxdbg layout learn`: a probe dump of a known layout teaches back exactly that layout."""
from __future__ import annotations

from pathlib import Path

import pytest

from vmxdbg.cli import main
from vmxdbg.decode import defs
from vmxdbg.decode.layouts import find_layout, known_layouts, load_layout
from vmxdbg.decode.probe import (field_table, learn, parse_dump, probe_dump_text, probe_encodings, t16, tag,
                                  tag_for_width)
from vmxdbg.common.errors import InputError

ALL_FIELDS = [(f.encoding, f.name) for f in defs.vmcs_fields()]


def probed_region(layout) -> bytes:
    """The region as the probe leaves it: every field of `layout` holds its tag."""
    return layout.build({s.encoding: tag_for_width(s.encoding) for s in layout.slots})


def test_tags_are_distinct_in_every_width() -> None:
    encs = [e for e, _ in ALL_FIELDS]
    for bits in (16, 32, 64):
        tags = {tag(e) & ((1 << bits) - 1) for e in encs}
        assert len(tags) == len(encs), bits
    assert tag(0x6800) == 0xC1DEF400C0DEF400 and t16(0x0000) == 0xC000


@pytest.mark.parametrize("lay", known_layouts(), ids=lambda lay: lay.name)
@pytest.mark.parametrize("form", ["text", "raw"])
def test_learning_a_probe_dump_gives_the_builtin_layout(lay, form: str) -> None:
    region = probed_region(lay)
    raw = probe_dump_text(region, lay.revision_id, prefix="[cpu0] ").encode() if form == "text" else region
    got = learn(parse_dump(raw, "dump"), ALL_FIELDS)
    assert got.layout.revision_id == lay.revision_id
    assert got.layout.field_map() == lay.field_map()
    assert not got.ambiguous
    # every SDM field the layout does not hold was looked for and not found: nothing invented
    assert sorted(got.not_found) == sorted(e for e, _ in ALL_FIELDS if e not in lay.by_encoding)


def test_failed_vmwrites_are_unsupported_not_missing() -> None:
    lay = find_layout("bochs")
    region = probed_region(lay)
    text = probe_dump_text(region, 0x2B, failed={0x2030: "err=12", 0x0002: "err=12"})
    got = learn(parse_dump(text.encode(), "d"), ALL_FIELDS)
    assert got.unsupported == {0x2030: "err=12", 0x0002: "err=12"}
    assert 0x2030 not in got.layout.by_encoding and 0x0002 not in got.not_found


def test_a_field_stored_narrower_or_packed_is_found() -> None:
    lay = find_layout("kvm-vmcs12")
    region = bytearray(probed_region(lay))
    off = lay.by_encoding[0x4814].offset            # ES access rights, packed to 16 bits at its place
    region[off:off + 4] = ((tag(0x4814) & 0xF0FF) | 0).to_bytes(2, "little") + b"\0\0"
    got = learn(parse_dump(bytes(region), "d"), ALL_FIELDS)
    slot = got.layout.by_encoding[0x4814]
    assert (slot.offset, slot.size, slot.transform) == (off, 2, "ar_pack16")


def test_a_tag_seen_twice_is_ambiguous_not_guessed() -> None:
    lay = find_layout("kvm-vmcs12")
    region = bytearray(probed_region(lay))
    region[0xF00:0xF08] = tag(0x6800).to_bytes(8, "little")
    got = learn(parse_dump(bytes(region), "d"), ALL_FIELDS)
    assert got.ambiguous[0x6800] == [lay.by_encoding[0x6800].offset, 0xF00]
    assert 0x6800 not in got.layout.by_encoding


@pytest.mark.parametrize("text,words", [
    ("vmxprobe data 0x0 00\n", "before 'vmxprobe begin'"),
    ("vmxprobe begin revision=0x2b\nvmxprobe data 0x0 2b000000\n", "no 'vmxprobe end'"),
    ("vmxprobe begin\n", "expected revision="),
    ("vmxprobe begin revision=0x2b\nvmxprobe data 0x0 zz\n", "not hex"),
    ("vmxprobe begin revision=0x2b\nvmxprobe data 0x8 00000000\nvmxprobe end\n", "no bytes at region offset 0x0"),
    ("vmxprobe wat\n", "not a probe record"),
])
def test_bad_dumps_name_the_line(text: str, words: str) -> None:
    with pytest.raises(InputError, match=words) as exc:
        parse_dump(text.encode(), "d.txt")
    assert str(exc.value).startswith("d.txt")


def test_cli_layout_learn_writes_a_loadable_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lay = find_layout("bochs")
    dump = tmp_path / "probe.txt"
    dump.write_text("Bochs noise\n" + probe_dump_text(probed_region(lay), 0x2B, failed={0x2030: "err=12"},
                                                        prefix="[cpu0] "))
    out = tmp_path / "learned.yaml"
    assert main(["layout", "learn", str(dump), "-o", str(out), "--name", "my-bochs"]) == 0
    learned = load_layout(out)
    assert learned.name == "my-bochs" and learned.revision_id == 0x2B
    expected = {e: k for e, k in lay.field_map().items() if e != 0x2030}
    assert learned.field_map() == expected
    said = capsys.readouterr().out
    assert "159 fields placed" in said and "1 unsupported" in said


def test_cli_layout_learn_bad_dump_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"\x01\x02")
    assert main(["layout", "learn", str(bad), "-o", str(tmp_path / "o.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmxdbg: ") and "x.bin" in err and "\n" not in err


def test_minihv_probe_field_table_is_generated_from_the_definitions() -> None:
    inc = Path(__file__).resolve().parent.parent / "vmxdbg" / "hypervisors" / "minihv" / "probe_fields.inc"
    assert inc.read_text() == field_table("nasm"), "regenerate: vmxdbg layout fields --nasm > " + str(inc)
    encs = probe_encodings()
    assert encs[-1] == 0x4400 and sorted(encs) == sorted(e for e, _ in ALL_FIELDS)


def test_cli_layout_fields_prints_a_c_array(capsys: pytest.CaptureFixture) -> None:
    assert main(["layout", "fields", "--c"]) == 0
    out = capsys.readouterr().out
    assert f"probe_fields[{len(ALL_FIELDS)}]" in out and "0x6C16" in out
