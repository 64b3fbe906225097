"""A trace recorded through the recorder replays to the same table and report."""
from __future__ import annotations

import json

import pytest

from fake_live import CODE, PROGRAM, FakeLive
from vmxdbg.common.errors import Divergence, InputError
from vmxdbg.record.recording import read_recording
from vmxdbg.trace.session import render_trace, replay_trace, run_trace, trace_report_json


def test_record_then_replay_gives_the_same_trace(tmp_path):
    fake = FakeLive(cores=2)
    fake.cpus[1].registers["cr4"] &= ~0x2000
    path = tmp_path / "t.vmxrec.jsonl"
    live = run_trace(fake, {CODE: PROGRAM}, record=path)
    again = replay_trace(read_recording(path))
    assert trace_report_json(again) == trace_report_json(live)
    assert render_trace(again) == render_trace(live)
    rep = trace_report_json(live)
    assert rep["processors"]["1"][0]["actual"] == "#UD" and rep["processors"]["1"][0]["match"] is True


def test_table_shows_mismatch_loudly():
    fake = FakeLive(cores=1)
    fake.cpus[0].msr[0x3A] = 0x1
    text = render_trace(run_trace(fake, {CODE: PROGRAM}))
    assert text.startswith("!!! 1 MISMATCH")
    assert "MISMATCH" in text.splitlines()[2]


def test_replay_of_a_changed_stepper_diverges_at_the_first_call(tmp_path):
    path = tmp_path / "t.vmxrec.jsonl"
    run_trace(FakeLive(cores=1), {CODE: PROGRAM}, record=path)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["params"]["code"] = {hex(CODE + 6): PROGRAM[6:].hex()}   # a different breakpoint set
    path.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    with pytest.raises(Divergence, match="seq"):
        replay_trace(read_recording(path))


def test_no_vmx_instruction_is_bad_input():
    with pytest.raises(InputError, match="no VMXON"):
        run_trace(FakeLive(cores=1), {CODE: b"\x90\x90"})
