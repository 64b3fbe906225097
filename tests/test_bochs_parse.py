"""Parsers of Bochs' debugger output, on real Bochs 2.7 captures (tests/data/bochs/, capture.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from vmxdbg.backends import bochs_parse as P

DATA = Path(__file__).resolve().parent / "data" / "bochs"


def cap(name: str) -> str:
    return (DATA / f"{name}.txt").read_text()


def test_r_long_mode_and_real_mode() -> None:
    regs = P.parse_r(cap("r_cpu0_long64"))
    assert regs["rip"] == 0xA60D and regs["rsp"] == 0x104000 and regs["r15"] == 0x100000
    assert regs["rflags"] == 0x46 and len(regs) == 18
    assert P.parse_r_cpu(cap("r_cpu0_long64")) == 0
    real = P.parse_r(cap("r_cpu1_real_halted"))
    assert real["rip"] == 0x48 and P.parse_r_cpu(cap("r_cpu1_real_halted")) == 1
    assert P.parse_r(cap("r_cpu1_after_vmxon_fail"))["rflags"] & 1      # CF: VMfailInvalid
    with pytest.raises(P.BochsParseError, match="`r`"):
        P.parse_r(cap("creg_cpu0_long64"))


def test_creg_dreg() -> None:
    c = P.parse_creg(cap("creg_cpu0_long64"))
    assert c == {"cr0": 0x80000011, "cr2": 0, "cr3": 0x10000, "cr4": 0x20, "cr8": 0, "efer": 0x500, "xcr0": 1}
    d = P.parse_dreg(cap("dreg_cpu0"))
    assert d["dr7"] == 0x400 and d["dr6"] == 0xFFFF0FF0 and d["dr0"] == 0
    with pytest.raises(P.BochsParseError):
        P.parse_creg(cap("dreg_cpu0"))


def test_segments_in_vmcs_access_rights_format() -> None:
    cs = P.parse_param_tree(cap("show_cpu0_CS"))["CS"]
    assert P.segment_from_param(cs) == (0x8, 0, 0xFFFFFFFF, 0xA09B)     # 64-bit code: L=1, G=1
    tr = P.parse_param_tree(cap("show_cpu0_TR"))["TR"]
    assert P.segment_from_param(tr) == (0, 0, 0xFFFF, 0x8B)             # busy TSS after reset
    ldtr = P.parse_param_tree(cap("show_cpu0_LDTR"))["LDTR"]
    assert P.segment_from_param(ldtr)[3] == 0x82
    gdtr = P.parse_param_tree(cap("show_cpu0_GDTR"))["GDTR"]
    assert gdtr == {"base": 0x7E20, "limit": 0x9F}
    broken = dict(cs, valid=0)
    assert P.segment_from_param(broken)[3] == 0x1A09B                   # not valid -> unusable (bit 16)
    with pytest.raises(P.BochsParseError, match="lacks"):
        P.segment_from_param({"selector": 8})


def test_vmx_states() -> None:
    def state(name: str) -> dict:
        return P.vmx_state_from_param(P.parse_param_tree(cap(name))["VMX"])
    assert state("show_cpu0_VMX_off") == {"vmx": "off", "vmxon_pointer": 2**64 - 1, "vmcs_pointer": 2**64 - 1}
    assert state("show_cpu0_VMX_guest") == {"vmx": "non-root", "vmxon_pointer": 0x100000, "vmcs_pointer": 0x101000}
    assert state("show_cpu0_VMX_root_after_exit")["vmx"] == "root"


def test_msr_tree_and_activity() -> None:
    msrs = P.msrs_from_param(P.parse_param_tree(cap("show_cpu0_MSR"))["MSR"])
    assert msrs[0x3A] == 5 and msrs[0xC0000080] == 0x500 and msrs[0x277] == 0x7040600070406
    assert msrs[0x1B] == 0xFEE00900 and len(msrs) == 42                 # apicbase with the BSP flag
    assert P.parse_param_tree(cap("show_cpu1_activity_state_halted")) == {"activity_state": 1}
    with pytest.raises(P.BochsParseError, match="unexpected line 'invalid cpu id number 7'"):
        P.parse_param_tree(cap("set_cpu_invalid"))
    with pytest.raises(P.BochsParseError, match="not a parameter tree"):
        P.parse_param_tree(cap("lb_answer"))


def test_memory_page_disasm() -> None:
    data = P.parse_xp_bytes(cap("xp_bytes"), 0x9000, 24)
    assert data[:8] == b"MHVCONF1" and data[12] == 2                    # expect_cpus = 2
    with pytest.raises(P.BochsParseError, match="expected 0x9100"):
        P.parse_xp_bytes(cap("xp_bytes"), 0x9100, 24)
    with pytest.raises(P.BochsParseError, match="24 bytes, expected 32"):
        P.parse_xp_bytes(cap("xp_bytes"), 0x9000, 32)
    assert P.parse_page(cap("page_mapped")) == 0xA000
    assert P.parse_page(cap("page_unmapped")) is None
    with pytest.raises(P.BochsParseError):
        P.parse_page(cap("blist_two"))
    insns = P.parse_disasm(cap("u_cpu0_at_vmxon"))
    assert insns[0].address == 0xAE94 and insns[0].data == bytes.fromhex("f3410fc7b730500000")
    assert insns[1].text == "pushf" and len(insns[1].data) == 1
    # the same bytes decoded in real mode (the debugger decodes in the selected processor's mode)
    assert P.parse_disasm(cap("u_cpu1_real_mode_at_vmxon"))[0].text == "inc cx"


def test_blist() -> None:
    two = P.parse_blist(cap("blist_two"))
    assert [(b.number, b.kind, b.enabled, b.address) for b in two] == [
        (1, "lbreakpoint", True, 0xB01E), (2, "pbreakpoint", True, 0xB226)]
    assert [b.number for b in P.parse_blist(cap("blist_one"))] == [2]
    assert P.parse_blist("Num Type           Disp Enb Address\n") == []
    with pytest.raises(P.BochsParseError):
        P.parse_blist(cap("lb_answer") + "nothing")


def test_stops_name_the_processor_from_the_reason_line() -> None:
    s = P.parse_stop(cap("c_magic_cfg_stop"))
    assert (s.kind, s.cpu, s.rips, s.tick) == ("magic", 0, {0: 0xA60D, 1: 0x48}, 14413866)
    assert s.physical[1] == 0x9F048
    e9 = P.split_guest_output(cap("c_magic_cpu1_stop_vmxon_with_e9"))
    s = P.parse_stop(e9.debugger)
    assert (s.kind, s.cpu, s.rips[1]) == ("magic", 1, 0xAE94)           # the "(0) [..]" line comes first
    b = P.parse_stop(cap("c_stop_breakpoint"))
    assert (b.kind, b.cpu, b.breakpoint, b.rips[0]) == ("breakpoint", 0, 2, 0xB226)
    v = P.parse_stop(cap("c_stop_vmexit"))
    assert (v.kind, v.cpu, v.rips[0]) == ("vmexit", 0, 0xB01E)
    i = P.parse_stop(P.split_guest_output(cap("c_interrupted_sigint")).debugger)
    assert i.kind == "none" and i.cpu is None and set(i.rips) == {0, 1}
    st = P.parse_stop(cap("s_cpu1_vmxon_failinvalid"))
    assert st.kind == "none" and st.rips[1] == 0xAE9D and st.instructions[1] == b"\x9c"


def test_guest_lines_are_separated_per_processor() -> None:
    out = P.split_guest_output(cap("c_magic_cpu1_stop_vmxon_with_e9"))
    cpu1 = [line for cpu, line in out.lines if cpu == 1]
    assert cpu1[-1] == "vmxon region=0x110000 ptr=0x110000 dword0=0x2a revision=0x2b maxphyaddr=40"
    assert any(cpu == 0 and line == "started aps=1" for cpu, line in out.lines)
    assert out.debugger.startswith("Next at t=14499281") and "[cpu" not in out.debugger
    assert out.partial == ""
    done = P.split_guest_output(cap("c_interrupted_sigint"))
    assert (None, "done cpus=2") in done.lines


def test_a_guest_line_cut_by_the_stop_is_kept_for_the_next_answer() -> None:
    real = P.split_guest_output(cap("c_stop_magic")).debugger   # a real stop, a guest line glued in front
    out = P.split_guest_output("[cpu1] vmxon regi" + real)
    assert out.partial == "[cpu1] vmxon regi" and out.lines == []
    assert P.parse_stop(out.debugger).kind == "magic"
    rest = P.split_guest_output(out.partial + "on=0x110000\n")
    assert rest.lines == [(1, "vmxon region=0x110000")]


def test_log_lines() -> None:
    lines = [P.parse_log_line(x) for x in cap("log_vmx_lines").splitlines()]
    vmxon = [x for x in lines if x and x.message.startswith("VMXON")]
    assert len(vmxon) == 1 and vmxon[0].cpu == 1 and vmxon[0].level == "e"
    assert vmxon[0].message == "VMXON: not expected (42 != 43) VMCS revision id !"
    assert all(P.is_vmx_log(x) for x in lines if x and x.level == "e")
    smm = [x for x in lines if x and "SMM" in x.message][0]
    assert smm.cpu == 0 and not P.is_vmx_log(smm)
    assert P.parse_log_line("[cpu0] done") is None


def test_xp_in_8_byte_items() -> None:
    text = cap("xp_giant")                   # Bochs prints short items with 8 digits: 0x00000000
    data = P.parse_xp(text, 0x9000, 32, "g")
    assert data[:8] == b"MHVCONF1" and data[8:16] == bytes.fromhex("0000000002000000")
    assert data == P.parse_xp(text, 0x9000, 32, "g", "xp /4gx 0x9000")
    with pytest.raises(P.BochsParseError, match="does not fit 4 bytes"):
        P.parse_xp(text, 0x9000, 32, "w")


def test_stop_inside_a_guest_tag_is_still_a_stop():
    """Seen live: the guest had printed "[" of "[cpu0] ..." when processor 0 hit a magic breakpoint."""
    from vmxdbg.backends.bochs_parse import parse_stop, split_guest_output
    answer = "[(0) Magic breakpoint\nNext at t=14598262\n(0) [0x00000000b00b] 0008:000000000000b00b (unk. ctxt): vmlaunch\n"
    out = split_guest_output(answer)
    assert out.partial == "["
    stop = parse_stop(out.debugger)
    assert (stop.kind, stop.cpu) == ("magic", 0)
