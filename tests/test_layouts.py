"""VMCS layouts: the built-in files load, place fields where their sources say, and round-trip."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from vmxdbg.decode import defs
from vmxdbg.decode.layouts import (DEFAULT_SIZE, TRANSFORMS, field_width, find_layout, known_layouts,
                                   layout_for_revision, layout_from_data, load_layout, dump_layout)
from vmxdbg.common.errors import DefinitionError, InputError

BUILTIN = {0x2B: "bochs", 0x11E57ED0: "kvm-vmcs12"}


def random_values(layout, seed: int) -> dict:
    """A value for every field, as wide as the field (what VMREAD would give back)."""
    rnd = random.Random(seed)
    out = {}
    for s in layout.slots:
        bits = 8 * DEFAULT_SIZE[field_width(s.encoding)]
        v = rnd.getrandbits(bits)
        if s.transform == "ar_pack16":          # only what 16 packed bits can hold
            v = TRANSFORMS["ar_pack16"].decode(TRANSFORMS["ar_pack16"].encode(v))
        out[s.encoding] = v
    return out


@pytest.mark.parametrize("rev,name", sorted(BUILTIN.items()))
def test_builtin_layouts_are_found_by_revision_and_name(rev: int, name: str) -> None:
    lay = layout_for_revision(rev)
    assert lay is not None and lay.name == name
    assert find_layout(name) is lay and find_layout(hex(rev)) is lay
    assert layout_for_revision(rev | 0x80000000) is lay     # a shadow VMCS has the same layout
    assert lay.sources


@pytest.mark.parametrize("rev", sorted(BUILTIN))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_round_trip_every_field(rev: int, seed: int) -> None:
    lay = layout_for_revision(rev)
    values = random_values(lay, seed)
    region = lay.build(values, extras={"launch_state": 1})
    assert len(region) == lay.size
    assert int.from_bytes(region[:4], "little") == rev
    assert lay.parse(region) == values
    assert lay.parse_extras(region) == {"launch_state": 1}
    # the construct Struct gives back the very bytes it parsed
    assert lay.struct.build(lay.struct.parse(region)) == region[:lay.span]
    # and parse() (slot by slot) reads what the Struct reads, on any bytes
    noise = random.Random(seed).randbytes(lay.span)
    c = lay.struct.parse(noise)
    assert lay.parse(noise) == {s.encoding: int(c[s.name]) for s in lay.slots}


@pytest.mark.parametrize("rev", sorted(BUILTIN))
def test_shadow_bit_and_partial_region(rev: int) -> None:
    lay = layout_for_revision(rev)
    values = random_values(lay, 7)
    region = lay.build(values, shadow=True)
    assert int.from_bytes(region[:4], "little") == rev | 0x80000000
    cut = lay.span // 2
    part = lay.parse(region[:cut])
    # fields wholly inside the known bytes are decoded; the others stay unknown, not zero
    assert part == {s.encoding: values[s.encoding] for s in lay.slots if s.end <= cut}
    assert 0 < len(part) < len(values)


def test_kvm_offsets_from_vmcs12_h() -> None:
    lay = find_layout("kvm-vmcs12")
    at = {s.name: s.offset for s in lay.slots}
    # spot checks against vmx_check_vmcs12_offsets()
    assert at["IO_BITMAP_A"] == 40 and at["VMCS_LINK_POINTER"] == 176 and at["GUEST_CR0"] == 424
    assert at["HOST_RIP"] == 672 and at["PIN_BASED_VM_EXEC_CONTROL"] == 744
    assert at["GUEST_ES_SELECTOR"] == 964 and at["GUEST_PML_INDEX"] == 996
    assert 0x6008 not in lay.by_encoding      # CR3-target values: dead space in vmcs12
    assert lay.span == 998


def test_bochs_offsets_follow_the_grid() -> None:
    lay = find_layout("bochs")
    for s in lay.slots:
        group = (s.encoding >> 13 & 3) << 2 | (s.encoding >> 10 & 3)
        assert s.offset == 0x10 + (group * 64 + (s.encoding & 0x3FF)) * 4, hex(s.encoding)
    assert lay.by_encoding[0x6800].offset == 0xE10                # guest CR0
    ars = {s.encoding for s in lay.slots if s.transform == "ar_rotate8"}
    assert ars == set(range(0x4814, 0x4824, 2))
    # an access-rights value is stored rotated left by 8
    region = lay.build({0x4816: 0xA09B})
    off = lay.by_encoding[0x4816].offset
    assert region[off:off + 4] == (0xA09B00).to_bytes(4, "little")


@pytest.mark.parametrize("lay", known_layouts(), ids=lambda lay: lay.name)
def test_field_names_match_the_encodings(lay) -> None:
    for s in lay.slots:
        f = defs.vmcs_field(s.encoding)
        assert s.name == f.name or s.name in f.aliases, (hex(s.encoding), s.name, f.name)


@pytest.mark.parametrize("lay", known_layouts(), ids=lambda lay: lay.name)
def test_dump_layout_reloads_equal(lay, tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(dump_layout(lay, ["a comment"]))
    again = load_layout(path)
    assert again.field_map() == lay.field_map()
    assert (again.revision_id, again.size, again.extras) == (lay.revision_id, lay.size, lay.extras)


def _base() -> dict:
    return {"layout": {"name": "t", "revision_id": 0x1234, "size": 0x100, "sources": ["test"],
                       "fields": [{"encoding": 0x6800, "name": "GUEST_CR0", "offset": 0x10}]}}


@pytest.mark.parametrize("patch,key,words", [
    ({"revision_id": 0x80000001}, "layout.revision_id", "outside"),
    ({"sources": []}, "layout.sources", "where the facts"),
    ({"fields": [{"encoding": 0x6801, "name": "X", "offset": 16}]}, "fields[0].encoding", "full field"),
    ({"fields": [{"encoding": 0x6800, "name": "GUEST_CR0", "offset": 4}]}, "fields[0]", "overlaps"),
    ({"fields": [{"encoding": 0x6800, "name": "GUEST_CR0", "offset": 0xFC}]}, "fields[0]", "past the region"),
    ({"fields": [{"encoding": 0x6800, "name": "A", "offset": 16}, {"encoding": 0x6802, "name": "B", "offset": 20}]},
     "fields[1]", "overlaps field A"),
    ({"fields": [{"encoding": 0x0800, "name": "A", "offset": 16, "size": 4}]}, "fields[0].size", "cannot hold"),
    ({"fields": [{"encoding": 0x4814, "name": "A", "offset": 16, "transform": "zip"}]}, "fields[0].transform", "zip"),
    ({"fields": [{"encoding": 0x6800, "name": "A"}]}, "fields[0].offset", "no grid"),
    ({"fields": [{"encoding": 0x6800, "name": "lower", "offset": 16}]}, "fields[0].name", "does not match"),
])
def test_bad_layout_names_file_and_key(patch: dict, key: str, words: str) -> None:
    data = _base()
    data["layout"].update(patch)
    with pytest.raises(DefinitionError) as exc:
        layout_from_data(data, "bad.yaml")
    msg = str(exc.value)
    assert msg.startswith("bad.yaml [") and key in msg and words in msg, msg


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="missing.yaml"):
        load_layout(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("layout: [\n")
    with pytest.raises(DefinitionError, match=r"bad.yaml:\d+: not YAML"):
        load_layout(bad)


def test_unknown_layout_name_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"no such layout \(known: .*bochs \(0x2b\)"):
        find_layout("vmware")


def test_learned_layouts_from_the_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _base()
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("VMXDBG_LAYOUT_PATH", str(tmp_path))
    assert layout_for_revision(0x1234).name == "t"
    data["layout"]["revision_id"] = 0x2B          # a second description of Bochs' id is refused
    (tmp_path / "dup.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(DefinitionError, match="0x2b is already described"):
        known_layouts()
