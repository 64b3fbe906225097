"""The stepper on a scripted live target: predictions compared with outcomes, breakpoints cleaned up."""
from __future__ import annotations

import pytest

from fake_live import CODE, PROGRAM, FakeLive
from vmxdbg.trace.stepper import Stepper, find_vmx_instructions, mismatches, operand_address, results_report


def test_finds_vmx_instructions_and_operands():
    code = (bytes.fromhex("f30fc7742408") + bytes.fromhex("0fc73500010000") + bytes.fromhex("660fc730")
            + bytes.fromhex("0f01c2") + bytes.fromhex("0f01c3") + bytes.fromhex("90"))
    sites = find_vmx_instructions(code, 0x1000)
    assert [(s.address, s.instruction) for s in sites] == [
        (0x1000, "vmxon"), (0x1006, "vmptrld"), (0x100D, "vmclear"), (0x1011, "vmlaunch"), (0x1014, "vmresume")]
    regs = {"rsp": 0x5000, "rax": 0x7000}
    assert operand_address(sites[0], regs.__getitem__) == 0x5008
    assert operand_address(sites[1], regs.__getitem__) == 0x1006 + 7 + 0x100   # RIP-relative
    assert operand_address(sites[2], regs.__getitem__) == 0x7000
    assert not sites[3].has_memory_operand


def run(backend: FakeLive):
    sites = find_vmx_instructions(PROGRAM, CODE)
    return Stepper(backend, sites).run(timeout=5)


def test_healthy_cores_predicted_and_matched():
    fake = FakeLive(cores=2)
    results = run(fake)
    vmxon = [r for r in results if r.instruction == "vmxon"]
    assert [(r.cpu, r.actual, r.match) for r in vmxon] == [(0, "ok", True), (1, "ok", True)]
    assert vmxon[1].operand == 0x1a2b5000
    assert not fake.breakpoints, "every breakpoint is removed"
    rep = results_report(results)
    assert rep.processors[0][0].instruction == "vmxon"


def test_cr4_vmxe_clear_on_one_core_is_ud_and_predicted():
    fake = FakeLive(cores=2)
    fake.cpus[1].registers["cr4"] &= ~0x2000
    results = run(fake)
    r = [r for r in results if r.cpu == 1 and r.instruction == "vmxon"][0]
    assert r.actual == "#UD" and r.verdict.outcome == "#UD" and r.match
    assert "VMXON002" in [f.id for f in r.verdict.findings if f.status == "fail"]
    ok = [r for r in results if r.cpu == 0 and r.instruction == "vmxon"][0]
    assert ok.actual == "ok" and ok.match


def test_wrong_revision_is_vmfailinvalid():
    fake = FakeLive(cores=2)
    fake.write(0x1a2b5000, (0x7).to_bytes(4, "little"))
    results = run(fake)
    r = [r for r in results if r.cpu == 1 and r.instruction == "vmxon"][0]
    assert (r.actual, r.verdict.outcome, r.match) == ("VMfailInvalid", "VMfailInvalid", True)


def test_a_wrong_prediction_is_a_mismatch():
    """The target disagrees with the SDM (a fake 'emulator bug'): shown as a mismatch, not hidden."""
    fake = FakeLive(cores=1)
    fake.cpus[0].msr[0x3A] = 0x1   # VMX disabled: the SDM says #GP, this fake CPU lets VMXON succeed
    results = run(fake)
    bad = mismatches(results)
    assert bad and bad[0].instruction == "vmxon" and bad[0].verdict.outcome == "#GP" and bad[0].actual == "ok"


def test_breakpoints_removed_when_the_target_fails():
    fake = FakeLive(cores=1)

    def boom(cpu: int):
        raise KeyboardInterrupt

    fake.step = boom  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        run(fake)
    assert not fake.breakpoints


class _AfterLaunch(FakeLive):
    """A processor back in VMX root operation at `rip` right after a VMLAUNCH step."""

    def __init__(self, rip: int, reason: int, launch: str) -> None:
        super().__init__(cores=1)
        self.cpus[0].registers["rip"] = rip
        self.vmcs_fields[0].update({0x4402: reason, 0x6C16: 0xB07F, 0x6400: 0})
        self.launch = launch

    def read_vmcs(self, cpu: int, encoding: int) -> int:
        return self.vmcs_fields[cpu][encoding]

    def vmx_state(self, cpu: int):  # type: ignore[no-untyped-def]
        return {"vmx": "root", "vmcs_launch_state": self.launch}


def test_an_entry_that_exits_within_the_step_is_ok() -> None:
    from vmxdbg.state.snapshot import Processor
    site = find_vmx_instructions(bytes.fromhex("0f01c2"), 0x1000)[0]
    before = Processor(vmcs_launch_state="clear")
    # the guest was entered and left at once (an injected event's delivery faulted, reason 0)
    fake = _AfterLaunch(0xB07F, 0, "launched")
    assert Stepper(fake, [site]).actual_outcome(0, site, before) == "ok"
    # a failed entry leaves the VMCS clear and has bit 31 in the reason
    fake = _AfterLaunch(0xB07F, 0x80000021, "clear")
    assert Stepper(fake, [site]).actual_outcome(0, site, before) == "entry-fail:33:0"
    # RIP elsewhere, or a VMCS that stayed clear: not a successful entry
    assert Stepper(_AfterLaunch(0xC000, 0, "launched"), [site]).actual_outcome(0, site, before) != "ok"
    assert Stepper(_AfterLaunch(0xB07F, 0, "clear"), [site]).actual_outcome(0, site, before) != "ok"


class _Approached(FakeLive):
    """vmxon [rsp+8] ; APPROACH ; vmlaunch ; hlt: the VM entry is reached through one more instruction."""

    def __init__(self, approach: bytes) -> None:
        super().__init__(cores=1)
        self.approach = CODE + 6
        self.launch = self.approach + len(approach)
        self.write(CODE + 6, approach + bytes.fromhex("0f01c2f4"))

    def _execute(self, cpu: int) -> bool:
        p = self.cpus[cpu]
        rip = p.registers["rip"]
        if rip == self.approach:
            p.registers["rip"] = self.launch
            return True
        if rip == self.launch:              # the base double's VMLAUNCH, moved here
            p.registers["rip"] = CODE + 6
            alive = super()._execute(cpu)
            if p.registers["rip"] == CODE + 9:
                p.registers["rip"] = self.launch + 3
            return alive
        return super()._execute(cpu)


@pytest.mark.parametrize("approach, mov_ss", [(bytes.fromhex("7400"), False), (bytes.fromhex("8ed0"), True)])
def test_an_entry_reached_by_stepping_its_approach_knows_its_mov_ss_blocking(approach, mov_ss):
    fake = _Approached(approach)
    program = bytes.fromhex("f30fc7742408") + approach + bytes.fromhex("0f01c2")
    sites = find_vmx_instructions(program, CODE)
    stepper = Stepper(fake, sites, approaches={fake.approach: approach})
    results = stepper.run(timeout=5)
    assert [(r.instruction, r.match) for r in results] == [("vmxon", True), ("vmlaunch", True)]
    state = stepper.state[0]
    assert state.state["blocking_by_mov_ss"] is mov_ss
    assert "executed by a single step" in state.provenance["state:blocking_by_mov_ss"]
    assert ("mov ss,ax" if mov_ss else "je") in state.provenance["state:blocking_by_mov_ss"]
    assert not fake.breakpoints
    # without the approach the stop is on the VMLAUNCH itself and the blocking is not known
    plain = Stepper(_Approached(approach), sites)
    plain.run(timeout=5)
    assert "blocking_by_mov_ss" not in plain.state[0].state


def test_a_trace_stepped_through_an_approach_replays_the_same(tmp_path):
    import json
    from vmxdbg.record.recording import read_recording
    from vmxdbg.trace.session import replay_trace, run_trace
    from vmxdbg.common.errors import InputError
    approach = bytes.fromhex("8ed0")
    fake = _Approached(approach)
    rec = tmp_path / "t.vmxrec.jsonl"
    live = run_trace(fake, {CODE: bytes.fromhex("f30fc7742408") + approach + bytes.fromhex("0f01c2")}, record=rec,
                     approaches={fake.approach: approach})
    again = replay_trace(read_recording(rec))
    assert [(r.instruction, r.actual, r.verdict.outcome) for r in again] == \
        [(r.instruction, r.actual, r.verdict.outcome) for r in live]
    lines = rec.read_text().splitlines()
    head = json.loads(lines[0])
    assert head["params"]["approaches"] == {hex(fake.approach): "8ed0"}
    head["params"]["approaches"] = {hex(fake.approach): "zz"}
    bad = tmp_path / "bad.vmxrec.jsonl"
    bad.write_text("\n".join([json.dumps(head)] + lines[1:]) + "\n")
    with pytest.raises(InputError, match="approaches"):
        replay_trace(read_recording(bad))


def test_a_processor_copy_shares_nothing_that_can_change():
    """The stepper copies each processor into every stop's snapshot: a change to the copy (or to
    the original) must never show in the other, in any of its maps, segments, tables or memory."""
    from vmxdbg.state.snapshot import Memory, Processor, Segment, Table
    p = Processor(msr={0x480: 1}, vmcs={0x681E: 0x1000}, cpuid={(1, 0): (1, 2, 3, 4)},
                  segments={"cs": Segment(8, 0, 0xFFFFFFFF, 0xA09B)}, tables={"gdtr": Table(0x1000, 0x7F)},
                  state={"vmx": "root", "listy": [1, 2]}, provenance={"msr:0x480": "read"})
    p.virtual_memory.add(0x2000, b"\x01\x02")
    c = p.copy()
    assert c == p
    c.msr[0x480] = 2
    c.vmcs[0x681E] = 0x2000
    c.segments["cs"].selector = 0x10
    c.tables["gdtr"].limit = 0xFF
    c.state["listy"].append(3)
    c.virtual_memory.add(0x2000, b"\xff")
    assert p.msr[0x480] == 1 and p.vmcs[0x681E] == 0x1000
    assert p.segments["cs"].selector == 8 and p.tables["gdtr"].limit == 0x7F
    assert p.state["listy"] == [1, 2] and p.virtual_memory.read(0x2000, 1) == b"\x01"
    assert isinstance(c.virtual_memory, Memory) and c.virtual_memory.read(0x2000, 2) == b"\xff\x02"


def test_a_stop_snapshot_changed_afterwards_does_not_change_the_next_stops_view():
    """What a stop's snapshot holds for each processor is a copy of the stepper's record:
    changing it (as a caller keeping snapshots might) leaves the next stop's snapshot as read."""
    fake = FakeLive(cores=2)
    sites = find_vmx_instructions(PROGRAM, CODE)
    stepper = Stepper(fake, sites)
    seen = []
    plain = stepper.predict

    def predict(snap, cpu, instruction):
        seen.append({c: dict(p.registers) for c, p in snap.processors.items()})
        verdict = plain(snap, cpu, instruction)
        for p in snap.processors.values():
            p.registers["cr4"] = 0            # vandalise this stop's view of every processor, once used
        return verdict
    stepper.predict = predict
    results = stepper.run(timeout=5)
    assert results and all(r.match for r in results)
    later = [view for view in seen if len(view) == 2]
    assert later and all(regs.get("cr4") for view in later for regs in view.values())
