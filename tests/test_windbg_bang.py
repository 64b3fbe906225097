"""`!vmxcheck` through the pykd stand-in: the CLI's commands on a live target, DML and text, errors, cleanup."""
from __future__ import annotations

import html
import json
import re
import runpy
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from windbg_fixtures import (FAKE_DIR, broken_pair, fake_target, make_recording, output_text, snapshot_with,
                             target_with)

from vmxdbg import bang, cli
from vmxdbg.backends.windbg import WinDbgBackend
from vmxdbg.state.collect import collect
from vmxdbg.commands import windbg_setup
from vmxdbg.report.render import render_text
from vmxdbg.rules import check_snapshot

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "recordings" / "windbg"
TAG = re.compile(r"<[^>]+>")


def dml_as_text(dml: str) -> str:
    return html.unescape(TAG.sub("", dml))


def test_summary_is_dml_with_a_link_per_processor_and_per_finding():
    pk, t = broken_pair()
    assert bang.main([], pk) == 1                       # a check failed (VMXON #UD on cpu 1)
    out = output_text(t)
    assert all(dml for _, dml in t.output)
    assert '<link cmd="!vmxcheck cpu 0">0</link>' in out and '<link cmd="!vmxcheck cpu 1">1</link>' in out
    assert '<link cmd="!vmxcheck rule VMXON002">VMXON002</link>' in out
    assert '<col fg="errfg">#UD</col>' in out
    assert t.breakpoints == {}


def test_plain_text_when_dml_is_off_and_dml_stripped_is_the_text():
    pk, t = broken_pair()
    t.prefer_dml = False
    bang.main([], pk)
    text = output_text(t)
    assert not any(dml for _, dml in t.output) and "<link" not in text
    assert "cpu 1 vmxon: #UD" in text and "VMXON002" in text
    pk, t = broken_pair()
    bang.main([], pk)
    assert dml_as_text(output_text(t)) == text


def test_the_summary_is_what_vmxdbg_check_gives_for_the_same_state():
    """One implementation: `!vmxcheck` prints exactly `check`'s report of what the backend collects."""
    pk, t = broken_pair()
    bang.main(["--text"], pk)
    shown = output_text(t)
    pk2, _ = broken_pair()
    snap = collect(WinDbgBackend(pk2))
    assert shown == render_text(check_snapshot(snap, sorted(snap.processors)), snap)


def test_text_and_dml_switches():
    pk, t = broken_pair()
    bang.main(["--text"], pk)
    assert not any(d for _, d in t.output)
    pk, t = broken_pair()
    t.prefer_dml = False
    bang.main(["--dml"], pk)
    assert "<link" in output_text(t)


def test_cpu_n_reads_only_that_processor_and_shows_every_rule():
    pk, t = broken_pair()
    bang.main(["cpu", "1", "--text"], pk)
    out = output_text(t)
    assert out.splitlines()[1].startswith("1 ") and len(out.splitlines()[0:3]) == 3
    assert "cpu 0" not in out and "cpu 1 vmxon: #UD" in out
    assert "VMXON002" in out and "ENTRY001" in out     # every instruction of the processor, as -v shows
    assert {cpu for _, cpu, _ in t.reads} == {1}
    assert t.commands == ["~1s"]


def test_vmxon_pointer_option_reads_the_region_once():
    pk, t = broken_pair()
    bang.main(["--vmxon", "0=0x1a2b3000", "--text"], pk)
    out = output_text(t)
    assert "0x1a2b3000" in out.splitlines()[1]
    physical = [r[2] for r in t.reads if r[0] == "loadBytes" and r[2][2]]
    assert physical == [(0x1A2B3000, 0x1000, True)]       # the region's page, once, however the rules read it


def test_rule_link_target_explains_the_rule():
    pk, t = broken_pair()
    assert bang.main(["rule", "VMXON002"], pk) == 0
    out = output_text(t)
    assert out.startswith("VMXON002 CR4.VMXE must be 1 before VMXON") and "Fix:" in out
    assert not t.reads                                   # explaining a rule reads nothing


def test_decode_reads_an_msr_from_the_current_processor():
    pk, t = broken_pair()
    t.current = 1
    assert bang.main(["decode", "msr", "0x480"], pk) == 0
    out = output_text(t)
    assert "IA32_VMX_BASIC" in out and "00da0400`00000004" in out and "read from cpu 1" in out
    assert ("rdmsr", 1, 0x480) in t.reads
    pk, t = broken_pair()
    bang.main(["decode", "cr4", "--cpu", "1"], pk)
    assert "CR4 (64-bit) = 00000000`003706f8" in output_text(t)


def test_vmcs_at_a_physical_address_is_read_in_one_call(tmp_path):
    from test_vmcs_command import VMCS, region_snapshot

    from vmxdbg.state.snapshot import load_snapshot
    snap = load_snapshot(region_snapshot(tmp_path, "bochs"))
    pk = __import__("pykd")
    t = pk.attach(fake_target.FakeTarget.from_snapshot(snap))
    status = bang.main(["vmcs", hex(VMCS), "--cpu", "0"], pk)
    out = output_text(t)
    assert "VMCS region at 0x1a2b4000" in out and "Guest-state fields" in out
    assert "VM-entry checks on cpu 0" in out and status in (0, 1)
    assert [r[2] for r in t.reads if r[0] == "loadBytes" and r[2][2]] == [(VMCS, 0x1000, True)]


def test_record_makes_a_recording_that_checks_to_the_same_report(tmp_path):
    path = tmp_path / "live.vmxrec.jsonl"
    assert make_recording(str(path)) == 1
    assert path.exists() and not Path(str(path) + ".partial").exists()
    assert cli.main(["check", str(path), "--format", "json"]) == 1


def _fails(report):
    """processor -> instruction -> (outcome, ids of the failing findings): what the expected file pins."""
    return {cpu: {v["instruction"]: (v["outcome"], sorted(f["id"] for f in v["findings"] if f["status"] == "fail"))
                  for v in verdicts} for cpu, verdicts in report["processors"].items()}


def test_committed_recording_replays_to_its_expected_report(capsys):
    rec = RECORDINGS / "two-cpus-cr4-vmxe-clear.vmxrec.jsonl"
    expected = json.loads((RECORDINGS / "two-cpus-cr4-vmxe-clear.expected.json").read_text())
    assert "stand-in" in (RECORDINGS / "README.md").read_text()
    assert cli.main(["check", str(rec), "--format", "json"]) == 1
    got = _fails(json.loads(capsys.readouterr().out))
    assert got == _fails(expected)
    assert got["1"]["vmxon"] == ("#UD", ["VMXON002"])


def test_recording_again_gives_the_same_report_as_the_committed_one(tmp_path, capsys):
    path = tmp_path / "again.vmxrec.jsonl"
    make_recording(str(path))
    capsys.readouterr()
    reports = []
    for rec in (path, RECORDINGS / "two-cpus-cr4-vmxe-clear.vmxrec.jsonl"):
        cli.main(["check", str(rec), "--format", "json"])
        reports.append(json.loads(capsys.readouterr().out)["processors"])
    assert reports[0] == reports[1]


@pytest.mark.parametrize("words, message", [
    (["cpu", "9"], "--cpu 9: no such processor (the target has: 0, 1)"),
    (["cpu"], "cpu: which processor?"),
    (["decode", "msr", "zz"], "MSR index: 'zz' is not a hex number"),
    (["rule", "NOPE999"], "no rule 'NOPE999'"),
])
def test_bad_input_is_one_line_and_status_2(words, message):
    pk, t = broken_pair()
    assert bang.main(words, pk) == 2
    out = output_text(t)
    assert message in out and "Traceback" not in out and out.count("\n") == 1


def test_unknown_command_prints_usage_not_a_traceback():
    pk, t = broken_pair()
    assert bang.main(["frobnicate"], pk) == 2
    out = output_text(t)
    assert "invalid choice: 'frobnicate'" in out and "Traceback" not in out


def test_help_lists_the_verbs_and_every_cli_command():
    pk, t = broken_pair()
    assert bang.main(["help"], pk) == 0
    out = output_text(t)
    for mod in cli._command_modules():
        assert f"!vmxcheck {mod.NAME}" in out
    assert "!vmxcheck cpu N" in out and "check --cpu N -v" in out


def _trap_module(outcome):
    """A command that sets breakpoints on the live target, then fails, is interrupted, or ends."""
    def add_arguments(parser):
        pass

    def run(args):
        b = args.backend
        b.set_breakpoint(0xFFFFF80012340000)
        b.set_breakpoint(0xFFFFF80012350000)
        if outcome == "interrupt":
            b.go(timeout=5)                          # the stand-in raises KeyboardInterrupt (Ctrl+Break)
        if outcome == "error":
            b.read_physical(0x7FF000000000, 8)           # a BackendError half way
        return 0
    return types.SimpleNamespace(NAME="trap", HELP="sets breakpoints", add_arguments=add_arguments, run=run)


@pytest.mark.parametrize("outcome, status", [("interrupt", 130), ("error", 2), ("done", 0)])
def test_breakpoints_are_removed_however_the_command_ends(monkeypatch, outcome, status):
    real = cli._command_modules
    monkeypatch.setattr(cli, "_command_modules", lambda: real() + [_trap_module(outcome)])
    pk, t = broken_pair()
    t.stops = [fake_target.Stop(cpu=0, address=0, interrupt=True)]
    t.current = 1
    assert bang.main(["trap"], pk) == status
    assert t.breakpoints == {}
    assert t.current == 1                              # the processor current before is current again
    if outcome == "interrupt":
        assert "interrupted; breakpoints removed" in output_text(t)


def test_outside_windbg_it_says_so():
    out = subprocess.run([sys.executable, "-m", "vmxdbg.bang"], capture_output=True, text=True, cwd=str(ROOT))
    assert out.returncode == 2 and out.stderr.startswith("vmxdbg: windbg: pykd cannot be imported here")


def test_launcher_script_runs_vmxcheck(monkeypatch):
    pk, t = broken_pair()
    monkeypatch.setitem(sys.modules, "pykd", pk)
    monkeypatch.setattr(sys, "argv", ["vmxcheck.py", "cpu", "1", "--text"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "vmxdbg" / "windbg" / "vmxcheck.py"), run_name="__main__")
    assert exc.value.code == 1 and "cpu 1 vmxon: #UD" in output_text(t)


def test_setup_prints_the_alias_the_script_and_the_docs_use(capsys):
    assert cli.main(["windbg-setup", "--python", "3.9"]) == 0
    out = capsys.readouterr().out
    alias = windbg_setup.setup_lines("3.9")[1]
    assert alias == "as !vmxcheck !py -3.9 -g -m vmxdbg.bang" and alias in out
    assert alias in (ROOT / "docs" / "windbg.md").read_text()
    js = (ROOT / "vmxdbg" / "windbg" / "vmxcheck.js").read_text()
    assert 'var PYTHON = "-3.9";' in js and '"!py " + PYTHON + " -g -m vmxdbg.bang"' in js


NODE_HARNESS = r"""
const fs = require("fs"), vm = require("vm");
const executed = [];
class functionAlias { constructor(fn, name) { this.fn = fn; this.name = name; } }
class apiVersionSupport { constructor(a, b) { this.v = [a, b]; } }
const host = {functionAlias, apiVersionSupport, diagnostics: {debugLog: (s) => executed.push("log:" + s)},
  namespace: {Debugger: {Utility: {Control: {ExecuteCommand: (c) => { executed.push(c); return ["line 1", "line 2"]; }}}}}};
const ctx = vm.createContext({host});
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), ctx);
const reg = ctx.initializeScript();
const alias = reg.find((r) => r instanceof functionAlias);
const lines = alias.fn("cpu 1");
console.log(JSON.stringify({executed, name: alias.name, lines, version: reg.find((r) => r instanceof apiVersionSupport).v}));
"""


@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed: the WinDbg script is not exercised")
def test_windbg_script_loads_pykd_defines_the_alias_and_forwards(tmp_path):
    harness = tmp_path / "harness.js"
    harness.write_text(NODE_HARNESS)
    out = subprocess.run(["node", str(harness), str(ROOT / "vmxdbg" / "windbg" / "vmxcheck.js")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["name"] == "vmxtext" and got["lines"] == ["line 1", "line 2"]
    assert got["executed"] == [".load pykd", "as !vmxcheck !py -3.9 -g -m vmxdbg.bang",
                               "!py -3.9 -g -m vmxdbg.bang --text cpu 1"]


def test_fake_dir_is_the_pykd_found():
    assert Path(__import__("pykd").__file__).parent == FAKE_DIR
    assert snapshot_with(1).processors and target_with(1)


CODE, STACK, IDT_BASE, UD_HANDLER = 0xFFFFF80012340000, 0xFFFFF80012380000, 0xFFFFF80012390000, 0xFFFFF800123A0600
PROGRAM = bytes.fromhex("f30fc7742408") + bytes.fromhex("f4")      # vmxon [rsp+8] ; hlt


def _gate(handler):
    return (handler & 0xFFFF).to_bytes(2, "little") + b"\x10\x00\x00\x8e" + (handler >> 16 & 0xFFFF).to_bytes(
        2, "little") + (handler >> 32).to_bytes(4, "little") + bytes(4)


def trace_target():
    """Two cores about to run the driver's VMXON; core 1 has CR4.VMXE clear, so its VMXON raises #UD."""
    pk, t = broken_pair()
    t.virtual.add(CODE, PROGRAM)
    t.virtual.add(STACK, bytes(8) + (0x1A2B3000).to_bytes(8, "little"))
    t.virtual.add(IDT_BASE, bytes(16 * 6) + _gate(UD_HANDLER) + bytes(16 * 7) + _gate(UD_HANDLER + 0x700))
    for p in t.processors:
        p.regs.update(rsp=STACK, idtr=IDT_BASE, idtl=0xFFF)
    t.symbols["hvdrv!VmxOnThisCpu"] = CODE
    t.stops = [fake_target.Stop(cpu=1, address=CODE), fake_target.Stop(cpu=0, address=CODE)]

    def step(target, cpu):
        regs = target.processors[cpu].regs
        if regs["cr4"] >> 13 & 1:
            regs["rip"] += 6
            regs["efl"] &= ~0x41                     # VMsucceed: CF = ZF = 0
        else:
            regs["rip"] = UD_HANDLER
    t.on_step = step
    return pk, t


def test_trace_steps_each_core_through_its_vmxon_and_removes_its_breakpoints():
    pk, t = trace_target()
    status = bang.main(["trace", "--code", "hvdrv!VmxOnThisCpu", "7", "--timeout", "0.2", "--text"], pk)
    out = output_text(t)
    rows = [line.split() for line in out.splitlines() if line.startswith(("0 ", "1 "))]
    assert [r[:4] for r in rows] == [["0", "vmxon", "0xfffff80012340000", "0x1a2b3000"],      # each core's stops,
                                     ["1", "vmxon", "0xfffff80012340000", "0x1a2b3000"]]      # core by core
    assert rows[1][4:7] == ["#UD", "#UD", "ok"] and "VMXON002" in rows[1][7].split(",")     # predicted, actual, agree
    assert rows[0][4] == "unknown" and rows[0][-3:-1] == ["ok", "ok"]          # CPUID unknown from WinDbg
    assert rows[0][-1] == "XCPU001(advice)"      # both processors were given VMXON region 0x1a2b3000
    assert "MISMATCH" not in out and status == 1
    assert t.breakpoints == {} and t.calls["trace"] == 2
    assert all(re.match(r"^~\d+s$", c) for c in t.commands)


def test_trace_needs_the_code_to_watch():
    pk, t = trace_target()
    assert bang.main(["trace"], pk) == 2
    assert "--code ADDR LEN" in output_text(t)
