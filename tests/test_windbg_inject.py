"""`--inject` on WinDbg against the pykd stand-in, which executes the written stub with iced-x86:
every outcome, the restore on every exit path, the round-trip count, and how pykd fails."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from windbg_fixtures import (DRIVER_BASE, fake_pykd, fake_target, inject_target, output_text,
                             target_with)

from vmxdbg import bang, cli
from vmxdbg.backends import stub
from vmxdbg.backends.windbg import WinDbgBackend
from vmxdbg.state.collect import CPUID_LEAVES, collect, collect_processor
from vmxdbg.common.errors import NotAvailable, TargetGone
from vmxdbg.report.render import Dml
from vmxdbg.state.snapshot import Snapshot

ROOT = Path(__file__).resolve().parent.parent
# One processor stopped at VMLAUNCH, VMX root known, a full collect (docs/windbg.md, "Cost"):
#   reads : the 46 of a collect without --inject, 2 MTRR MSRs a known CPUID.1 brings in, 9 registers
#           the stub changes that a collect does not read, the event's RIP, 7 loadBytes (PE header,
#           padding, stack, stub read back, records, code and stack read back), 11 registers read back
#   writes: 3 writeBytes (stub, padding back, stack back) + 13 setReg (RIP, RFLAGS; 11 back)
#   runs  : 1 go() runs CPUID x6, VMPTRST and the VMREADs
INJECT_READS, INJECT_WRITES, INJECT_RUNS = 76, 16, 1


def _state(t):
    return copy.deepcopy([p.regs for p in t.processors]), dict(t.virtual.ranges())


def _backend(pk, root=True):
    b = WinDbgBackend(pk)
    b.enable_injection()
    if root:
        b.known_vmx_root(0, "test")
    return b


def test_a_vmlaunch_stop_reads_cpuid_and_every_vmcs_field_by_executing_them():
    pk, t = inject_target(1)
    regs, memory = _state(t)
    b = _backend(pk)
    p = collect_processor(b, 0, Snapshot())
    fake = t.processors[0]
    assert {k: p.cpuid[k] for k in CPUID_LEAVES} == {k: fake.cpuid.get(k, (0, 0, 0, 0)) for k in CPUID_LEAVES}
    assert p.vmcs_pointer == fake.vmcs_pointer and p.state["vmx"] == "root"
    assert p.vmcs == {0x4400: 0, **fake.vmcs}          # each field the VMCS holds, the error field too
    # every byte and register is as before, read back by the backend and compared here too
    assert _state(t) == (regs, memory) and not t.faults
    assert fake.vmcs.get(0x4400, 0) == 0     # the VMWRITE at the stub's end undid the 12 of unsupported fields
    assert (b.reads, b.writes, b.runs) == (INJECT_READS, INJECT_WRITES, INJECT_RUNS)
    assert t.calls["go"] == 1 and t.calls["trace"] == 0


def test_the_stated_cost_is_in_the_docs():
    doc = (ROOT / "docs" / "windbg.md").read_text()
    assert f"**{INJECT_READS} reads, {INJECT_WRITES} writes and {INJECT_RUNS} run**" in doc


def test_without_inject_nothing_is_written_or_run():
    pk, t = inject_target(1)
    regs, memory = _state(t)
    snap = collect(WinDbgBackend(pk))
    assert not snap.processors[0].cpuid and not snap.processors[0].vmcs
    assert t.writes == [] and t.calls["go"] == 0 and _state(t) == (regs, memory)


def test_vmx_instructions_run_only_where_vmx_root_is_known():
    pk, t = inject_target(1)
    b = _backend(pk, root=False)
    p = collect_processor(b, 0, Snapshot())
    assert p.cpuid and not p.vmcs and "vmx" not in p.state
    written = [w for w in t.writes if w[0] == "writeBytes"][0][1]
    code = bytes(t.virtual.read(written[0], written[1]) or b"")  # put back: padding again
    assert set(code) <= {0}
    with pytest.raises(NotAvailable, match="VMX"):
        b.vmx_state(0)


def test_no_current_vmcs_gives_vmfailinvalid_and_no_fields():
    pk, t = inject_target(1)
    t.processors[0].vmcs_pointer = None
    b = _backend(pk)
    p = collect_processor(b, 0, Snapshot())
    assert p.vmcs_pointer == 0xFFFFFFFFFFFFFFFF and not p.vmcs      # VMPTRST: no current VMCS
    with pytest.raises(NotAvailable, match="VMfailInvalid"):
        b.read_vmcs(0, 0x681E)


def test_an_unsupported_field_is_vmfailvalid_and_without_misc_29_the_error_field_change_is_said(capsys):
    pk, t = inject_target(1)
    fake = t.processors[0]
    fake.msrs[0x485] &= ~(1 << 29)
    fake.vmcs[0x4400] = 7
    b = _backend(pk)
    from vmxdbg.state.collect import vmcs_encodings
    missing = next(e for e in vmcs_encodings() if e not in fake.vmcs and e >> 1 & 0x1FF <= 0x2E >> 1)
    with pytest.raises(NotAvailable, match="does not support"):
        b.read_vmcs(0, missing)        # a field the stand-in's processor does not have
    assert fake.vmcs[0x4400] == 12 and any("VM-instruction error field (it was 7)" in n for n in b.notes)


@pytest.mark.parametrize("vmx", ["off", "non-root"])
def test_a_fault_in_the_stub_is_reported_and_everything_is_put_back(vmx):
    pk, t = inject_target(1)
    t.processors[0].vmx = vmx          # #UD outside VMX operation; the outer hypervisor's #UD in non-root
    regs, _ = _state(t)
    text = t.virtual.read(DRIVER_BASE, 0x3000)
    b = _backend(pk)
    with pytest.raises(NotAvailable, match="exception"):
        b.cpuid(0, 1)
    assert t.faults and t.faults[0][1].startswith("#UD")
    assert [p.regs for p in t.processors] == regs
    # the code is put back; the stack below RSP keeps what the exception pushed there
    assert t.virtual.read(DRIVER_BASE, 0x3000) == text


def test_cpl_3_is_refused_in_one_line_before_anything_is_written():
    pk, t = inject_target(1)
    t.processors[0].regs["cs"] |= 3
    with pytest.raises(NotAvailable, match="CPL 3") as exc:
        _backend(pk).cpuid(0, 1)
    assert "\n" not in str(exc.value) and t.writes == []


def test_code_the_debugger_cannot_write_is_refused_hvci():
    pk, t = inject_target(1)
    t.debugger_readonly.update(t.pages(DRIVER_BASE + 0x1000, 0x1000))
    regs, memory = _state(t)
    with pytest.raises(NotAvailable, match="not writable"):
        _backend(pk).cpuid(0, 1)
    assert _state(t) == (regs, memory) and not any(w[0] == "setReg" for w in t.writes)


def test_no_padding_is_no_safe_place():
    pk, t = inject_target(1, text_size=0x1000)     # .text ends on a page boundary: no tail
    with pytest.raises(NotAvailable, match="no safe place"):
        _backend(pk).cpuid(0, 1)
    assert t.writes == []


def test_rip_outside_any_module_is_refused():
    pk, t = inject_target(1)
    t.processors[0].regs["rip"] = 0xFFFFF80099990000
    with pytest.raises(NotAvailable, match="in no module"):
        _backend(pk).cpuid(0, 1)


def test_a_breakpoint_in_the_padding_is_refused_and_one_hit_inside_the_stub_is_undone(monkeypatch):
    pk, t = inject_target(1)
    keep = pk.setBp(DRIVER_BASE + 0x1000 + 0x9B2)   # the stub would cover it (it starts at 0x...9B0)
    with pytest.raises(NotAvailable, match="breakpoint at"):
        _backend(pk).cpuid(0, 1)
    assert not any(w[0] == "writeBytes" for w in t.writes)
    # the same breakpoint, not listed (set as the stub runs): hit inside the stub, everything put back
    from vmxdbg.backends import windbg_inject
    monkeypatch.setattr(windbg_inject.Injector, "_breakpoints_in", lambda self, a, b: [])
    regs, _ = _state(t)
    text = t.virtual.read(DRIVER_BASE + 0x1000, 0x1000)
    with pytest.raises(NotAvailable, match="breakpoint inside the stub"):
        _backend(pk).cpuid(0, 1)
    assert [p.regs for p in t.processors] == regs
    assert t.virtual.read(DRIVER_BASE + 0x1000, 0x1000) == text
    del keep


def test_another_processor_stopping_first_is_a_missed_stop_and_the_stub_still_finishes():
    pk, t = inject_target(2)
    bp = 0xFFFFF80012340000
    b = _backend(pk)
    b.set_breakpoint(bp)
    t.stops = [fake_target.Stop(cpu=1, address=bp, preempt=True)]
    regs, _ = _state(t)
    text = t.virtual.read(DRIVER_BASE + 0x1000, 0x1000)
    assert b.cpuid(0, 1) == t.processors[0].cpuid[(1, 0)]
    regs[1]["rip"] = bp
    assert [p.regs for p in t.processors] == regs and t.virtual.read(DRIVER_BASE + 0x1000, 0x1000) == text
    assert b.runs == 2
    event = b.go(timeout=5)
    assert (event.kind, event.cpu, event.address) == ("missed", 1, bp) and "stub" in event.detail
    b.close()


def test_a_register_of_a_processor_that_did_not_stop_cannot_be_set():
    pk, t = inject_target(2)
    pk.dbgCommand("~1s")
    with pytest.raises(fake_pykd.DbgException):
        pk.setReg("rax", 1)


def test_injection_runs_only_on_the_processor_the_target_stopped_on():
    pk, t = inject_target(2)
    with pytest.raises(NotAvailable, match="stopped on processor 0"):
        _backend(pk).cpuid(1, 1)
    assert t.writes == []


def test_ctrl_break_while_the_stub_runs_puts_everything_back_and_ends_the_command():
    pk, t = inject_target(1)
    t.stops = [fake_target.Stop(cpu=0, address=0, interrupt=True, preempt=True)]
    regs, _ = _state(t)
    text = t.virtual.read(DRIVER_BASE + 0x1000, 0x1000)
    status = bang.main(["--inject", "--assume", "vmx=root", "--text"], pk)
    assert status == 130 and "interrupted" in output_text(t)
    assert [p.regs for p in t.processors] == regs
    assert t.virtual.read(DRIVER_BASE + 0x1000, 0x1000) == text


def test_a_target_that_disconnects_during_the_run_is_said_with_what_could_not_be_put_back(monkeypatch):
    pk, t = inject_target(1)

    def lost():
        t.gone = True
        raise fake_pykd.DbgException("IDebugControl::WaitForEvent failed")
    monkeypatch.setattr(fake_pykd, "go", lost)
    with pytest.raises(TargetGone, match="could not be put back"):
        _backend(pk).cpuid(0, 1)


def test_check_inject_on_the_live_target_gives_a_vmlaunch_verdict_from_injected_reads():
    pk, t = inject_target(1)
    status = bang.main(["--inject", "--assume", "vmx=root", "--assume", "launch=clear", "--assume",
                        "blocking_by_mov_ss=0", "--text"], pk)
    out = output_text(t)
    assert status == 0, out
    assert out.splitlines()[1].split()[7] == "ok"      # the vmlaunch column


# ---------------------------------------------------------------- pykd's own ways of failing
def test_a_failed_rdmsr_or_reg_is_dbgexception_and_reads_as_not_available():
    pk, t = target_with(1)
    del t.processors[0].msrs[0x3A]
    del t.processors[0].regs["dr7"]
    b = WinDbgBackend(pk)
    with pytest.raises(NotAvailable):
        b.read_msr(0, 0x3A)
    with pytest.raises(NotAvailable):
        b.read_register(0, "dr7")
    t.gone = True
    b.invalidate()
    with pytest.raises(TargetGone):
        b.read_msr(0, 0x480)


def test_the_timeout_breakin_surfacing_as_ctrl_break_is_a_timeout():
    pk, t = target_with(1)
    assert t.breakin_raises
    event = WinDbgBackend(pk).go(timeout=0.05)
    assert event.kind == "timeout"


@pytest.mark.parametrize("session, words", [("dump", "dump"), ("user", "user-mode")])
def test_a_dump_or_user_mode_session_gets_one_line(session, words):
    pk, t = target_with(1)
    t.session = session
    assert bang.main([], pk) == 2
    out = output_text(t)
    assert out.count("\n") == 1 and words in out and not t.reads


def test_setup_quotes_paths_and_says_scriptload_cannot_take_spaces(monkeypatch, capsys):
    from vmxdbg.commands import windbg_setup
    monkeypatch.setattr(windbg_setup, "WINDBG_DIR", Path("C:/Program Files/Python39/Lib/site-packages/vmxdbg/windbg"))
    assert cli.main(["windbg-setup", "--python", "3.9"]) == 0
    out = capsys.readouterr().out
    assert '!py -g "C:' in out and 'vmxcheck.py" ARGS' in out
    assert "cannot take a path with spaces" in out and f".scriptload {windbg_setup.SCRIPT_COPY}" in out


def test_dml_escapes_only_what_dml_documents():
    assert Dml().esc("it's <a> & \"b\"") == "it's &lt;a&gt; &amp; &quot;b&quot;"


def test_the_stub_decodes_to_what_it_means():
    import iced_x86 as ix
    batch = stub.batch_stub([(1, 0)], [0x4400, 0x681E], restore_error=True)
    names = [i.mnemonic for i in ix.Decoder(64, batch.code[:batch.int3_at + 1], ip=0)]
    assert names.count(ix.Mnemonic.CPUID) == 1 and names.count(ix.Mnemonic.VMREAD) == 1
    assert names.count(ix.Mnemonic.VMPTRST) == 1 and names.count(ix.Mnemonic.VMWRITE) == 1
    assert names[-1] == ix.Mnemonic.INT3


def test_the_shipped_recording_was_made_through_the_stand_in_and_read_by_injection():
    rec = ROOT / "recordings" / "windbg" / "vmlaunch-inject-vmentry.vmxrec.jsonl"
    lines = [json.loads(x) for x in rec.read_text().splitlines()]
    assert "stand-in" in lines[0]["backend"]["made_through"] and "--inject" in lines[0]["argv"]
    ops = {r.get("op") for r in lines[1:]}
    assert {"cpuid", "read_vmcs", "vmx_state"} <= ops
    assert "stand-in" in (ROOT / "recordings" / "windbg" / "README.md").read_text()


def test_recording_again_through_the_stand_in_gives_the_committed_report(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("record_standin", ROOT / "scripts" / "record-windbg-standin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = tmp_path / "again.vmxrec.jsonl"
    assert mod.main([str(path)]) == 0
    committed = ROOT / "recordings" / "windbg" / "vmlaunch-inject-vmentry.expected.json"
    assert json.loads((tmp_path / "again.expected.json").read_text()) == json.loads(committed.read_text())


def test_the_trace_says_vmx_root_only_where_it_is_known():
    from vmxdbg.backends.base import EXECUTION, Backend
    from vmxdbg.trace.stepper import StepResult, Stepper, find_vmx_instructions

    class Hints(Backend):
        def __init__(self):
            self.hints = []

        def capabilities(self):
            return frozenset({EXECUTION})

        def processors(self):
            return [0, 1]

        def known_vmx_root(self, cpu, why):
            self.hints.append((cpu, why))
    from windbg_fixtures import DRIVER_CODE
    sites = {s.instruction: s for s in find_vmx_instructions(DRIVER_CODE, 0x1000)}
    b = Hints()
    st = Stepper(b, list(sites.values()))
    st.hint_vmx_root(0, sites["vmxon"])                  # before VMXON: nothing is known
    assert b.hints == []
    st.results.append(StepResult(1, "vmxon", 0x1000, None, "#UD", None))
    st.hint_vmx_root(1, sites["vmlaunch"])               # its VMXON failed: not at its VMLAUNCH either
    st.hint_vmx_root(0, sites["vmlaunch"])
    assert b.hints == [(0, "it stopped at VMLAUNCH")]
    st.in_root.add(1)
    st.hint_vmx_root(1, sites["vmclear"])
    assert b.hints[-1] == (1, "its VMXON succeeded earlier in this trace")


def test_a_stub_that_does_not_finish_is_broken_into_and_put_back(monkeypatch):
    import fake_cpu
    from vmxdbg.backends import windbg_inject
    pk, t = inject_target(1)
    monkeypatch.setattr(windbg_inject, "RUN_TIMEOUT", 0.05)
    monkeypatch.setattr(fake_cpu, "run", lambda target, cpu, limit=0: ("left", ""))   # it keeps running
    regs, _ = _state(t)
    text = t.virtual.read(DRIVER_BASE + 0x1000, 0x1000)
    with pytest.raises(NotAvailable, match="did not finish"):
        _backend(pk).cpuid(0, 1)
    assert t.calls["breakin"] == 1
    assert [p.regs for p in t.processors] == regs and t.virtual.read(DRIVER_BASE + 0x1000, 0x1000) == text


def test_a_refusal_is_said_once_at_the_end_of_the_command():
    pk, t = inject_target(2)
    t.processors[0].regs["cs"] |= 3
    assert bang.main(["--inject", "--text"], pk) == 1
    notes = [line for line in output_text(t).splitlines() if "--inject did not run" in line]
    assert notes == ["vmxdbg: note: cpu 0: --inject did not run: CPL 3 (the stub needs CPL 0)",
                     "vmxdbg: note: cpu 1: --inject did not run: the target stopped on processor 0; running "
                     "code on another would let that one run on past its stop"]
