"""The kd log parser: every command's output form, processors, contexts, provenance, --at."""
from __future__ import annotations

import textwrap

import pytest

from vmxdbg.inputs.kdlog import parse_text
from vmxdbg.inputs.kdlog.descriptors import vmcs_attributes


def parse(text: str, **kw):
    return parse_text(textwrap.dedent(text).lstrip("\n"), "s.log", **kw)


def test_rdmsr_with_and_without_backtick_and_processor_prompts():
    log = parse("""
        0: kd> rdmsr 0x480
        msr[480] = 00da0400`00000004
        1: kd> rdmsr 3a
        msr[3a] = 0000000000000005
        """)
    p0, p1 = log.snapshot.processors[0], log.snapshot.processors[1]
    assert p0.msr == {0x480: 0xDA040000000004}
    assert p1.msr == {0x3A: 5}
    assert p0.provenance["msr:0x480"] == "s.log:2"
    assert p1.provenance["msr:0x3a"] == "s.log:4"
    assert not log.warnings


def test_rdmsr_line_that_does_not_parse_is_a_warning_and_parsing_goes_on():
    log = parse("""
        kd> rdmsr 480
        msr[480] = 00da0400`0000zz04
        kd> rdmsr 3a
        msr[3a] = 00000000`00000005
        """)
    assert [w.line for w in log.warnings] == [2]
    assert "rdmsr" in log.warnings[0].message
    assert log.snapshot.processors[0].msr == {0x3A: 5}


def test_efer_and_fs_gs_base_msrs_fill_their_registers():
    log = parse("""
        kd> rdmsr c0000080
        msr[c0000080] = 00000000`00000d01
        kd> rdmsr c0000101
        msr[c0000101] = fffff800`4e9d3000
        """)
    p = log.snapshot.processors[0]
    assert p.registers["efer"] == 0xD01 and p.msr[0xC0000080] == 0xD01
    assert p.segments["gs"].base == 0xFFFFF8004E9D3000
    assert p.provenance["reg:efer"] == "s.log:2" and p.provenance["reg:gs"] == "s.log:4"


def test_register_lists_and_assignment():
    log = parse("""
        0: kd> r cr0
        cr0=0000000080050033
        0: kd> r cr4, cr3
        cr4=00000000003506f8 cr3=00000000001aa000
        0: kd> r efer
        efer=0000000000000d01
        0: kd> r cr4=3526f8
        0: kd> r dr7
        dr7=0000000000000400
        """)
    p = log.snapshot.processors[0]
    assert p.registers["cr0"] == 0x80050033
    assert p.registers["cr3"] == 0x1AA000
    assert p.registers["cr4"] == 0x3526F8  # the write on line 7
    assert p.provenance["reg:cr4"] == "s.log:7"
    assert p.registers["efer"] == 0xD01 and p.msr[0xC0000080] == 0xD01
    assert p.registers["dr7"] == 0x400


FULL_R = """
    1: kd> r
    rax=0000000000000000 rbx=fffff80002c4fe80 rcx=0000000000000001
    rdx=0000000000000000 rsi=0000000000000000 rdi=fffff80002c4fe80
    rip=fffff80002a7e490 rsp=fffff80000b9cb88 rbp=fffff80000b9cc20
     r8=0000000000000000  r9=0000000000000000 r10=0000000000000000
    r11=fffff80000b9cb88 r12=0000000000000000 r13=0000000000000000
    r14=0000000000000000 r15=0000000000000000
    iopl=0         nv up ei pl zr na po nc
    cs=0010  ss=0018  ds=002b  es=002b  fs=0053  gs=002b             efl=00000246
    nt!DbgBreakPointWithStatus:
    fffff800`02a7e490 cc              int     3
    """


def test_full_x64_register_dump():
    log = parse(FULL_R)
    p = log.snapshot.processors[1]
    assert p.registers["rflags"] == 0x246
    assert p.registers["rip"] == 0xFFFFF80002A7E490
    assert p.registers["r8"] == 0
    assert {s: p.segments[s].selector for s in ("cs", "ss", "ds", "es", "fs", "gs")} == {
        "cs": 0x10, "ss": 0x18, "ds": 0x2B, "es": 0x2B, "fs": 0x53, "gs": 0x2B}
    assert p.state["cpl"] == 0
    assert p.provenance["reg:rflags"] == "s.log:9"
    assert p.provenance["reg:cs"] == "s.log:9"
    assert not log.warnings


def test_register_mask_output():
    log = parse("""
        0: kd> rM 80
        cr0=0000000080050033 cr2=fffff80002c4fe80 cr3=00000000001aa000
        cr4=00000000000406f8 cr8=0000000000000000
        0: kd> rM 100
        gdtr=fffff80000b95000   gdtl=007f idtr=fffff80000b95080   idtl=0fff tr=0040  ldtr=0000
        """)
    p = log.snapshot.processors[0]
    assert p.registers["cr4"] == 0x406F8 and p.registers["cr8"] == 0
    assert (p.tables["gdtr"].base, p.tables["gdtr"].limit) == (0xFFFFF80000B95000, 0x7F)
    assert (p.tables["idtr"].base, p.tables["idtr"].limit) == (0xFFFFF80000B95080, 0xFFF)
    assert p.segments["tr"].selector == 0x40 and p.segments["ldtr"].selector == 0


def test_gdtr_idtr_one_by_one():
    log = parse("""
        kd> r gdtr
        gdtr=fffff80220279fb0
        kd> r gdtl
        gdtl=0057
        kd> r idtr
        idtr=fffff80220277000
        kd> r idtl
        idtl=0fff
        """)
    p = log.snapshot.processors[0]
    assert (p.tables["gdtr"].base, p.tables["gdtr"].limit) == (0xFFFFF80220279FB0, 0x57)
    assert (p.tables["idtr"].base, p.tables["idtr"].limit) == (0xFFFFF80220277000, 0xFFF)
    assert p.provenance["reg:gdtr"] == "s.log:4"


def test_bad_register_value_is_a_warning():
    log = parse("""
        kd> r cr0
        cr0=00000000800500zz
        kd> r cr4
        cr4=00000000000406f8
        """)
    assert [w.line for w in log.warnings] == [2]
    assert "cr0" not in log.snapshot.processors[0].registers
    assert log.snapshot.processors[0].registers["cr4"] == 0x406F8


def test_formats_of_a_register_sets_it_and_of_a_number_does_not():
    log = parse("""
        4: kd> .formats cr4
        Evaluate expression:
          Hex:     00000000`00b50ef8
          Decimal: 11865848
          Binary:  00000000 00000000 00000000 00000000 00000000 10110101 00001110 11111000
        4: kd> .formats 0x00000000`80000021
        Evaluate expression:
          Hex:     00000000`80000021
          Decimal: 2147483681
        4: kd> ? @cr0
        Evaluate expression: 2147811379 = 00000000`80050033
        """)
    p = log.snapshot.processors[4]
    assert p.registers == {"cr4": 0xB50EF8, "cr0": 0x80050033}
    assert p.provenance["reg:cr4"] == "s.log:3"
    assert p.provenance["reg:cr0"] == "s.log:11"


def test_formats_hex_line_that_does_not_parse_is_a_warning():
    log = parse("""
        kd> .formats cr4
        Evaluate expression:
          Hex:     00000000`00b5xxf8
        """)
    assert [w.line for w in log.warnings] == [3]
    assert log.snapshot.processors[0].registers == {}


def test_physical_dumps_in_every_width():
    log = parse("""
        kd> !dq 1a2b3000 L2
        #1a2b3000 00000000`00000004 00000000`00000000
        kd> !dd 1a2b4000 L4
        #1a2b4000 00000012 00000000 00000000 00000000
        kd> !db 1a2b5000 L8
        #1a2b5000 34 12 00 00 01 00 00 00-                         4.......
        kd> !dc 1a2b6000 L2
        #1a2b6000 00000004 41414141                   ....AAAA
        kd> !dq 01208000 + 8 * 8
        # 1208040 00000000`01209063 00000000`00000000
        """)
    mem = log.snapshot.memory
    assert mem.read(0x1A2B3000, 16) == (4).to_bytes(8, "little") + bytes(8)
    assert mem.read(0x1A2B4000, 4) == (0x12).to_bytes(4, "little")
    assert mem.read(0x1A2B5000, 8) == bytes([0x34, 0x12, 0, 0, 1, 0, 0, 0])
    assert mem.read(0x1A2B5008, 1) is None  # the short last db line has no more bytes
    assert mem.read(0x1A2B6000, 8) == (4).to_bytes(4, "little") + b"AAAA"
    assert mem.read(0x1208040, 8) == (0x1209063).to_bytes(8, "little")
    p = log.snapshot.processors[0]
    assert p.provenance["mem:0x1a2b3000"] == "s.log:2"
    assert p.provenance["mem:0x1208040"] == "s.log:10"
    assert not log.warnings


def test_contiguous_dump_lines_join_and_unreadable_bytes_stay_unknown():
    log = parse("""
        kd> !dq 2000 L6
        #    2000 00000000`00000001 00000000`00000002
        #    2010 00000000`00000003 ????????`????????
        #    2020 00000000`00000005 00000000`00000006
        """)
    mem = log.snapshot.memory
    assert mem.read(0x2000, 24) == b"".join(i.to_bytes(8, "little") for i in (1, 2, 3))
    assert mem.read(0x2018, 8) is None
    assert mem.read(0x2020, 16) == b"".join(i.to_bytes(8, "little") for i in (5, 6))


def test_failed_physical_read_leaves_memory_unknown_without_warning():
    log = parse("""
        0: kd> !dq 125A140FF
        Physical memory read at 125a140ff failed
        If you know the caching attributes used for the memory,
        try specifying [c], [uc] or [wc], as in !dd [c] <params>.
        """)
    assert not log.snapshot.memory
    assert not log.warnings
    assert log.notes == [(2, "physical memory read at 125a140ff failed")]


def test_malformed_dump_line_is_a_warning():
    log = parse("""
        kd> !dq 1000
        #    1000 00000000`0000zz01 00000000`00000002
        """)
    assert [w.line for w in log.warnings] == [2]


@pytest.mark.parametrize("address", ["fffff800`04289000", "fffff80004289000"])
def test_virtual_dumps_with_and_without_backtick(address):
    log = parse(f"""
        kd> dq {address} L2
        {address}  00cf9b00`0000ffff 00cf9300`0000ffff
        kd> dd 8003f000 L4
        8003f000  00000000 00000000 0000ffff 00cf9b00
        kd> db {address} L10
        {address}  00 00 00 00 00 9b 20 00-ff ff 00 00 00 93 cf 00  ...... .........
        kd> dp {address} L1
        {address}  00cf9b00`0000ffff
        """)
    assert not log.snapshot.memory  # virtual dumps never become physical memory
    v = log.virtual[0]
    assert v.read(0xFFFFF80004289000, 8) == (0x00CF9B000000FFFF).to_bytes(8, "little")
    assert v.read(0x8003F00C, 4) == (0x00CF9B00).to_bytes(4, "little")
    assert v.read(0xFFFFF80004289005, 1) == b"\x9b"
    assert not log.warnings


def test_dg_gives_vmcs_access_rights_for_known_selectors():
    assert vmcs_attributes(0x29B) == 0x209B
    assert vmcs_attributes(0xCF3) == 0xC0F3
    log = parse(FULL_R + """
    1: kd> dg 0 30
                                                        P Si Gr Pr Lo
    Sel        Base              Limit          Type    l ze an es ng Flags
    ---- ----------------- ----------------- ---------- - -- -- -- -- --------
    0000 00000000`00000000 00000000`00000000 <Reserved> 0 Nb By Np Nl 00000000
    0010 00000000`00000000 00000000`00000000 Code RE Ac 0 Nb By P  Lo 0000029b
    0018 00000000`00000000 00000000`00000000 Data RW Ac 0 Bg By P  Nl 00000493
    0028 00000000`00000000 00000000`ffffffff Data RW Ac 3 Bg Pg P  Nl 00000cf3
    0050 ffffffff`fffa0000 00000000`00003c00 Data RW Ac 3 Bg By P  Nl 000004f3
    1: kd> r ldtr
    ldtr=0000
    """)
    p = log.snapshot.processors[1]
    assert (p.segments["cs"].attributes, p.segments["cs"].base, p.segments["cs"].limit) == (0x209B, 0, 0)
    assert p.segments["ss"].attributes == 0x4093
    assert p.segments["ds"].attributes == 0xC0F3 and p.segments["ds"].limit == 0xFFFFFFFF
    assert p.segments["fs"].attributes == 0x40F3
    assert p.segments["fs"].base is None  # FS.base comes from IA32_FS_BASE in 64-bit mode
    assert p.segments["ldtr"].attributes == 0x10000  # null selector: unusable
    assert p.provenance["reg:cs"] == "s.log:18"
    assert not log.warnings


def test_dg_row_that_does_not_parse_is_a_warning():
    log = parse("""
        kd> dg 10
        0010 00000000`00000000 00000000`00000000 Code RE Ac 0 Nb By P  Lo 0000zz9b
        0080 Unable to get descriptor
        """)
    assert [w.line for w in log.warnings] == [2]


def test_cpuid_extension_names_processors_but_fills_no_leaf():
    log = parse("""
        kd> !cpuid
        CP  F/M/S  Manufacturer        MHz
         0  6,158,10  GenuineIntel        3192
         1  6,158,10  GenuineIntel        3192
        """)
    assert sorted(log.snapshot.processors) == [0, 1]
    assert all(not p.cpuid for p in log.snapshot.processors.values())
    assert log.identity[1]["model"] == 158 and log.identity[1]["vendor"] == "GenuineIntel"


def test_processor_switch_and_plain_prompts():
    log = parse("""
        kd> ~1s
        kd> r cr4
        cr4=0000000000002000
        lkd> rdmsr 3a
        msr[3a] = 00000000`00000005
        2: kd> r cr0
        cr0=0000000080050033
        """)
    snap = log.snapshot
    assert snap.processors[1].registers["cr4"] == 0x2000
    assert snap.processors[1].msr[0x3A] == 5
    assert snap.processors[2].registers["cr0"] == 0x80050033


def test_cxr_context_never_replaces_live_values():
    log = parse(FULL_R + """
    1: kd> .cxr 0xffffb70dd7eb6860
    rax=fffff80ad4bc7214 rbx=fffff80ad4bf62a0 rcx=0000000000000000
    rip=fffff80ad4a41a63 rsp=ffffb70dd7eb7260 rbp=ffffa58caa318fe0
    iopl=0         nv up ei pl zr na po nc
    cs=0033  ss=002b  ds=002b  es=002b  fs=0053  gs=002b             efl=00050246
    1: kd> r
    rip=1111111111111111
    cs=0033 efl=00000202
    1: kd> .cxr
    1: kd> r rip
    rip=fffff80002a7e491
    """)
    p = log.snapshot.processors[1]
    assert p.registers["rflags"] == 0x246           # not the context's 0x50246 or 0x202
    assert p.segments["cs"].selector == 0x10 and p.state["cpl"] == 0
    assert p.registers["rip"] == 0xFFFFF80002A7E491  # live again after `.cxr` alone
    kinds = [(c.kind, c.line, c.registers.get("efl")) for c in log.contexts]
    assert kinds == [(".cxr", 13, 0x50246), (".cxr", 18, 0x202)]


def test_trap_and_thread_contexts_end_when_the_target_runs():
    log = parse("""
        0: kd> .trap ffffd001a2b3c4e0
        rax=0000000000000001 rbx=0000000000000000
        efl=00010286
        0: kd> p
        nt!KiSystemServiceCopyEnd+0x13:
        rax=0000000000000002 rbx=0000000000000000
        efl=00000246
        0: kd> .thread ffffe0012345
        efl=00000202
        """)
    p = log.snapshot.processors[0]
    assert p.registers["rflags"] == 0x246 and p.registers["rax"] == 2
    assert [c.kind for c in log.contexts] == [".trap", ".thread"]


def test_analyze_context_block_is_not_live():
    log = parse("""
        3: kd> !analyze -v
        CONTEXT:  ffffe705998ee960 -- (.cxr 0xffffe705998ee960)
        rax=0000000000000000 rbx=000000000000047c rcx=0000000000000001
        cs=0010  ss=0018  ds=002b  es=002b  fs=0053  gs=002b             efl=00050286
        Resetting default scope
        3: kd> r efl
        efl=00000282
        """)
    p = log.snapshot.processors[3]
    assert p.registers == {"rflags": 0x282}
    assert log.contexts[0].kind == "!analyze"


def test_saved_context_lines_are_read_at_the_end_and_warnings_stay_in_line_order():
    # A saved context's registers are read when the parse ends (no rule reads them);
    # its warnings still name their lines and come in line order with the others.
    log = parse("""
        0: kd> .cxr ffffb70dd7eb6860
        rax=00000000zz000001
        rbx=0000000000000002
        0: kd> .cxr
        0: kd> r
        rcx=00000000zz000003
        """)
    assert [(w.line, "rax" in w.message, "rcx" in w.message) for w in log.warnings] == [
        (2, True, False), (6, False, True)]
    assert [(c.kind, c.line, c.registers) for c in log.contexts] == [(".cxr", 1, {"rbx": 2})]


def test_only_the_last_saved_contexts_are_kept_and_read():
    from vmxdbg.inputs.kdlog.state import MAX_CONTEXTS
    text = "".join(f"0: kd> .cxr ffffb70dd7eb{k:04x}\nrax={k:016x}\n0: kd> .cxr\n" for k in range(MAX_CONTEXTS + 6))
    log = parse_text(text, "s.log")
    assert len(log.contexts) == MAX_CONTEXTS
    assert [c.registers["rax"] for c in log.contexts] == list(range(6, MAX_CONTEXTS + 6))
    assert log.contexts[0].line == 6 * 3 + 1


def test_a_saved_context_with_huge_register_output_is_read_up_to_its_bound():
    from vmxdbg.inputs.kdlog.state import MAX_CONTEXT_TEXT
    rows = MAX_CONTEXT_TEXT // 20 + 10
    text = "0: kd> !analyze -v\nrax=0000000000000001\n" + "rbx=0000000000000002\n" * rows + "rcx=0000000000000003\n"
    log = parse_text(text, "s.log")
    assert log.contexts[0].registers == {"rax": 1, "rbx": 2}    # rcx is past the bound
    assert len(log.warnings) == 1 and "rest were not read" in log.warnings[0].message
    assert log.warnings[0].line > 2 and not log.snapshot.processors[0].registers


def test_vmxcheck_output_is_ignored():
    log = parse("""
        0: kd> !vmxcheck
        cpu  VMX  FEATURE_CONTROL  CR0         CR4
        0    yes  0x5              0x80050033  0x406f8
        cr4=00000000000406f8
        msr[3a] = 00000000`00000005
        #1a2b3000 00000000`00000004 00000000`00000000
        """)
    snap = log.snapshot
    assert snap.processors[0].registers == {} and snap.processors[0].msr == {}
    assert not snap.memory and not log.warnings


def test_vmxon_operand_from_the_current_instruction_line():
    log = parse("""
        0: kd> t
        MyHv!VmxOn+0x2c:
        fffff801`0465100c f30fc7742408    vmxon   qword ptr [rsp+8] ss:0018:fffff880`0312a9f8=00000000`1a2b3000
        0: kd> u rip
        fffff801`0465101c 660fc7742410    vmclear qword ptr [rsp+10h]
        """)
    p = log.snapshot.processors[0]
    assert p.vmxon_pointer == 0x1A2B3000
    assert p.provenance["state:vmxon_pointer"] == "s.log:3"
    assert "vmclear" not in p.operands  # a disassembly listing shows no operand value


def test_a_dump_whose_first_dword_is_the_revision_id_is_not_a_vmxon_pointer():
    log = parse("""
        0: kd> rdmsr 480
        msr[480] = 00da0400`00000004
        0: kd> !dq 1a2b3000 L2
        #1a2b3000 00000000`00000004 00000000`00000000
        """)
    assert log.snapshot.processors[0].vmxon_pointer is None


def test_at_line_gives_the_state_as_it_stood_then():
    text = """
        0: kd> r cr4
        cr4=00000000000406f8
        0: kd> r cr4=2406f8
        0: kd> r cr4
        cr4=00000000002406f8
        """
    early = parse(text, at_line=2).snapshot.processors[0]
    late = parse(text).snapshot.processors[0]
    assert early.registers["cr4"] == 0x406F8 and early.provenance["reg:cr4"] == "s.log:2"
    assert late.registers["cr4"] == 0x2406F8 and late.provenance["reg:cr4"] == "s.log:5"


def test_cut_off_last_line_gives_no_value_but_a_warning():
    log = parse_text("kd> rdmsr 3a\nmsr[3a] = 00000000`00000005\nkd> r cr4\ncr4=0000000000", "s.log")
    p = log.snapshot.processors[0]
    assert p.msr == {0x3A: 5} and "cr4" not in p.registers
    assert [w.line for w in log.warnings] == [4]


def test_unknown_commands_and_prose_are_skipped_quietly():
    log = parse("""
        Microsoft (R) Windows Debugger Version 10.0.17030.1002 AMD64
        kd> k
         # Child-SP          RetAddr           Call Site
        00 ffffd001`1399b658 fffff803`71bd1afe nt!KeBugCheckEx
        kd> lm
        start             end                 module name
        fffff801`81c9c000 fffff801`8263c000   nt
        This is not a register: cr0 is fine
        """)
    assert not log.warnings
    assert log.snapshot.processors[0].registers == {}


def test_a_later_dump_replaces_earlier_bytes_and_partial_overlaps_merge():
    log = parse("""
        kd> !dd 3000 L4
        #    3000 00000001 00000002 00000003 00000004
        kd> !dd 3008 L4
        #    3008 0000000a 0000000b 0000000c 0000000d
        """)
    words = [int.from_bytes(log.snapshot.memory.read(0x3000 + 4 * i, 4), "little") for i in range(6)]
    assert words == [1, 2, 0xA, 0xB, 0xC, 0xD]
    assert log.snapshot.processors[0].provenance["mem:0x3008"] == "s.log:4"


def test_state_is_bounded_whatever_the_log(monkeypatch):
    import vmxdbg.inputs.kdlog.pages as pages
    import vmxdbg.inputs.kdlog.state as state
    monkeypatch.setattr(pages, "MAX_PAGES", 4)
    monkeypatch.setattr(state, "MAX_MSRS", 3)
    dumps = "".join(f"kd> !dd {0x10000 * i:x} L1\n#{0x10000 * i:8x} 00000001\n" for i in range(1, 9))
    msrs = "".join(f"kd> rdmsr {i:x}\nmsr[{i:x}] = 00000000`00000001\n" for i in range(1, 9))
    log = parse_text(dumps + msrs, "s.log")
    assert sum(1 for _ in log.snapshot.memory.ranges()) == 4
    assert sorted(log.snapshot.processors[0].msr) == [1, 2, 3]
    messages = " | ".join(w.message for w in log.warnings)
    assert "MSRs" in messages and "bytes of physical memory" in messages


def test_a_register_write_the_debugger_refused_sets_nothing():
    log = parse("""
        kd> r cr4=426f8; r cr0=80050033
                       ^ Syntax error in 'r cr4=426f8; r cr0=80050033'
        kd> r cr0=80050031
        """)
    assert log.snapshot.processors[0].registers == {"cr0": 0x80050031}
    assert log.notes == [(1, "the debugger refused the register write")]
