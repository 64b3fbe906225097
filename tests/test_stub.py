"""The injected read stub (vmxdbg/backends/stub.py): its code, decoded, and its results buffer."""
from __future__ import annotations

import struct

import iced_x86 as ix
import pytest

from vmxdbg.backends.stub import Read, build, parse

READS = [Read("cpuid", 1), Read("rdmsr", 0x480, guard=((0, 64 + 5),)),
         Read("rdmsr", 0x48B, guard=((1, 55), (0, 1))), Read("rdmsr", 0x1D9, risky=True)]


def decoded(code: bytes):  # type: ignore[no-untyped-def]
    f = ix.Formatter(ix.FormatterSyntax.INTEL)
    return {ins.ip: f.format(ins) for ins in ix.Decoder(64, code, ip=0)}


def test_the_code_reads_each_item_into_its_slot_behind_its_guard() -> None:
    s = build(READS)
    text = decoded(s.code)
    assert s.slots == [0, 16, 24, 32] and s.buffer_size == 40
    # the results go over code that has run: the stub covers its code only, and the buffer ends
    # before the tail (final INVD, JMP $, unwind) that is still needed
    assert s.buffer_offset == 0 and s.size == len(s.code) and s.buffer_size <= s.end_invd
    assert text[0] == "invd" and text[2] == "cld" and text[s.end_invd] == "invd"
    assert text[s.end].startswith("jmp short") and text[s.unwind] == "add rsp,8" and text[s.unwind + 4] == "iretq"
    assert text[s.insn_at[0]] == "cpuid" and text[s.insn_at[1]] == text[s.insn_at[2]] == "rdmsr"
    listing = list(text.values())
    # RDI advances with each STOSD: a guard's displacement is its source's slot minus the block's
    # CPUID.1:ECX bit 5 guards 0x480; IA32_VMX_BASIC bit 55 or CPUID.1:EAX bit 1 guard 0x48B
    assert "bt dword ptr [rdi-8],5" in listing
    assert "bt dword ptr [rdi-4],17h" in listing and "bt dword ptr [rdi-18h],1" in listing
    assert listing.count("stosd [rdi]") == 4 + 2 + 2 + 2 and "rep stosd [rdi]" in listing
    # the risky read is outside the straight line: its own entry, ending in jmp $
    entry = s.risky[3]
    assert entry > s.unwind and text[entry] == "mov ecx,1D9h" and s.insn_at[3] == entry + 5
    # every jump lands on an instruction boundary or the end
    for ip, ins in text.items():
        if ins.startswith(("jae", "jb", "jmp")):
            assert int(ins.split()[-1].rstrip("h"), 16) in text
    # a run of consecutive MSRs loads ECX once; 7 code bytes store 8, so a long run outgrows its
    # code and the buffer goes after it
    run = build([Read("rdmsr", 0x480 + k) for k in range(12)])
    assert list(decoded(run.code).values()).count("inc ecx") == 11
    assert run.buffer_offset == len(run.code) and run.size == len(run.code) + 96


def test_results_come_back_by_slot_and_a_skipped_read_is_none() -> None:
    s = build(READS)
    buf = bytearray(s.buffer_size)
    struct.pack_into("<4I", buf, 0, 0xD, 0x800, 0x20, 0x178BFBFF)            # ECX bit 5: VMX
    struct.pack_into("<Q", buf, 16, 0x00D810000000002B)                        # bit 55 set
    struct.pack_into("<Q", buf, 24, 0x2177FFF00000000)
    v = parse(s, READS, bytes(buf), faulted={3})
    assert v == [(0xD, 0x800, 0x20, 0x178BFBFF), 0x00D810000000002B, 0x2177FFF00000000, None]
    buf[8] = 0                                                                 # no VMX: 0x480 skipped
    struct.pack_into("<Q", buf, 16, 0)
    buf[0] = 0xC                                                               # EAX bit 1 clear too
    assert parse(s, READS, bytes(buf))[1:3] == [None, None]


def test_a_guard_must_name_an_earlier_safe_read() -> None:
    with pytest.raises(ValueError):
        build([Read("rdmsr", 0x480, guard=((0, 1),))])
    with pytest.raises(ValueError):
        build([Read("rdmsr", 0x1D9, risky=True), Read("rdmsr", 0x480, guard=((0, 1),))])
    with pytest.raises(ValueError):
        build([Read("cpuid", 1), Read("rdmsr", 0x480, guard=((0, 128),))])


def test_the_stub_sites_reads_ride_with_the_preconditions_and_ask_only_canonical_pages() -> None:
    """The disassembly at RIP and the translations of RIP's page and the next go in the injection's
    preconditions exchange; a next page past the canonical range is not asked (Bochs' answer to it
    would not be a translation), and the answers are cached as _stub_site and translate keep them."""
    from vmxdbg.backends.bochs import BochsBackend
    b = object.__new__(BochsBackend)              # no Bochs: only the bookkeeping is exercised
    b._current, b._cache = 0, {(0, "creg"): {"cr0": 1 << 31}}
    b._cache[(0, "r")] = {"rip": 0x7FFFFFFFFF10}
    assert b._site_reads(0) == ["u /4 0x7fffffffff10", "page 0x7ffffffff000"]
    b._cache[(0, "r")] = {"rip": 0xAEE2}
    assert b._site_reads(0) == ["u /4 0xaee2", "page 0xa000", "page 0xb000"]
    b._keep_site_reads(0, [                       # Bochs 2.7's answers at minihv's VMXON (a trace)
        "000000000000aee2: (                    ): vmxon qword ptr ds:[r15+20528] ; f3410fc7b730500000\n"
        "000000000000aeeb: (                    ): pushf                     ; 9c\n",
        "PML4: 0x0000000000011023    ps         A pcd pwt S W P\n"
        "PDPE: 0x0000000000012023    ps         A pcd pwt S W P\n"
        " PDE: 0x00000000000000e3    PS g pat D A pcd pwt S W P\n"
        "linear page 0x000000000000a000 maps to physical page 0x00000000a000\n",
        "bogus\n"])
    assert b._cache[(0, "site:aee2")] == 0xAEE3 and b._cache[(0, "page:a000")] == 0xA000
    assert (0, "page:b000") not in b._cache                   # not understood: asked again when needed
    assert b._site_reads(0) == ["page 0xb000"]
    b._current = 1
    assert b._site_reads(0) == []                             # another processor is selected
