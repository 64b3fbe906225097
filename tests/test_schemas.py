"""The JSON Schemas of vmxdbg/schemas/ against every shipped file, and the one-line errors
the readers give through them (docs/formats.md)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import fastjsonschema
import pytest

from vmxdbg.cli import main
from vmxdbg.common.errors import InputError
from vmxdbg.common.schema import NAMES, schema, validate
from vmxdbg.record.recording import read_recording
from vmxdbg.report.model import dumps_report, load_report
from vmxdbg.rules import check_snapshot
from vmxdbg.state.snapshot import load_snapshot, snapshot_from_json, snapshot_to_json

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOTS = sorted((ROOT / "vmxdbg" / "examples").glob("*.json")) + sorted(ROOT.glob("recordings/**/*.vmxsnap.json"))
REPORTS = sorted(ROOT.glob("recordings/**/*.expected.json"))
RECORDINGS = sorted(ROOT.glob("recordings/**/*.vmxrec.jsonl"))


@functools.lru_cache(maxsize=None)
def _compiled(name):
    return fastjsonschema.compile(schema(name))   # the schema alone, as another tool would use it


def _check(name, data):
    _compiled(name)(data)


def test_the_shipped_files_exist():
    assert len(SNAPSHOTS) >= 8 and len(REPORTS) >= 10 and len(RECORDINGS) >= 10


@pytest.mark.parametrize("name", sorted(NAMES))
def test_schemas_are_draft07_and_compile(name):
    s = schema(name)
    assert s["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert (ROOT / "vmxdbg" / "schemas" / f"{name}.schema.json").is_file()
    fastjsonschema.compile(s)


@pytest.mark.parametrize("path", SNAPSHOTS, ids=lambda p: p.name)
def test_every_shipped_snapshot_and_its_rewrite_validate(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    _check("snapshot", data)
    snap = load_snapshot(path)
    _check("snapshot", snapshot_to_json(snap))
    # the report of it, with the evidence stage's optional keys, validates too
    _check("report", json.loads(dumps_report(check_snapshot(snap))))


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.name)
def test_every_expected_report_validates(path):
    _check("report", json.loads(path.read_text(encoding="utf-8")))
    load_report(path)


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_every_recording_header_and_trailer_validate(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    _check("recording-header", json.loads(lines[0]))
    _check("recording-trailer", json.loads(lines[-1]))


def test_record_schema_follows_the_readers_table_of_operations():
    from vmxdbg.record.recording import OPS
    s = schema("recording-record")
    assert s["properties"]["op"]["enum"] == list(OPS) + [None]
    for branch in s["allOf"][1:]:
        op = branch["if"]["properties"]["op"]["const"]
        args = branch["then"]["properties"].get("args", {}).get("required", [])
        assert args == [n for n, _ in OPS[op].args], op
        assert ("cpu" in branch["then"].get("required", [])) == OPS[op].cpu, op


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_every_recorded_call_validates_against_the_record_schema(path):
    v = _compiled("recording-record")
    for line in path.read_text(encoding="utf-8").splitlines()[1:-1]:
        v(json.loads(line))


@pytest.mark.parametrize("line", [
    '{"seq": 1, "op": "format_disk"}',
    '{"seq": 1, "op": "read_msr", "cpu": 0, "args": {}, "result": "0x1"}',
    '{"seq": 1, "op": "read_msr", "args": {"index": "0x3a"}, "result": "0x1"}',
    '{"seq": 1, "op": "read_msr", "cpu": 0, "args": {"index": "0x3a"}}',
    '{"seq": 1, "op": "read_msr", "cpu": 0, "args": {"index": "0x3a"}, "result": "zz"}',
    '{"seq": 1, "op": "cpuid", "cpu": 0, "args": {"leaf": "0x1", "subleaf": "0x0"}, "result": ["0x1"]}',
    '{"seq": 1, "op": "go", "args": {"timeout": 1.0}}',
    '{"seq": 1}',
    '{"op": "stop"}',
])
def test_the_record_schema_refuses_what_the_reader_refuses(tmp_path, line):
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        _check("recording-record", json.loads(line))
    path = tmp_path / "r.vmxrec.jsonl"
    path.write_text('{"format": "vmxdbg-recording", "version": 1}\n' + line + '\n{"end": true, "events": 1}\n',
                    encoding="utf-8")
    with pytest.raises(InputError, match=r"r.vmxrec.jsonl:2"):
        read_recording(path)


def _snap(**proc):
    return {"format": "vmxdbg-snapshot", "version": 1, "processors": {"0": proc}}


@pytest.mark.parametrize("data,key,words", [
    (_snap(state={"cpl": 4}), "processors.0.state.cpl", "must be 0-3, got 4"),
    (_snap(state={"cpl": "0x4"}), "processors.0.state.cpl", "must be 0-3, got 4"),   # the reader's bound
    (_snap(state={"smm": "yes"}), "processors.0.state.smm", "expected true or false or null, got a string"),
    (_snap(state={"vmx": "on"}), "processors.0.state.vmx", "expected \"off\" or \"root\""),
    (_snap(vmcs_launch_state="running"), "processors.0.vmcs_launch_state", "\"clear\" or \"launched\""),
    (_snap(cpuid={"0x1": ["0x1", "0x2"]}), "processors.0.cpuid.0x1", "expected [eax, ebx, ecx, edx]"),
    (_snap(msr={"0x480": "zz"}), "processors.0.msr.0x480", "expected a hex integer"),
    (_snap(msr={"0xqq": "0x1"}), "processors.0.msr.0xqq", "MSR index"),
    (_snap(msr=[]), "processors.0.msr", "expected an object, got a list"),
    (_snap(registers={"cs": "0x10"}), "processors.0.registers.cs", "expected an object"),
    (_snap(registers={"CS": {"base": []}}), "processors.0.registers.CS.base", "got a list"),
    (_snap(virtual_memory=[]), "processors.0.virtual_memory", "expected an object"),
    (_snap(virtual_memory={"0x1000": "zz"}), "processors.0.virtual_memory.0x1000", "hex"),
    ({"format": "vmxdbg-snapshot", "version": 1, "memory": {"0x1000": 5}}, "memory.0x1000", "got an integer"),
    ({"format": "vmxdbg-snapshot", "version": 1, "processors": {"one": {}}}, "processors.one", "processor number"),
    ({"format": "vmxdbg-snapshot", "version": "2.0"}, "version", "version '2.0' is not supported"),
    ({"format": "vmxdbg-snapshot"}, "version", "missing"),
])
def test_bad_snapshots_name_the_key(data, key, words):
    with pytest.raises(InputError) as info:
        snapshot_from_json(data, source="s.vmxsnap.json")
    msg = str(info.value)
    assert msg.startswith(f"s.vmxsnap.json [{key}]: ") and words in msg and "\n" not in msg, msg


def test_snapshot_accepts_every_integer_form_and_a_virtual_memory_map():
    snap = snapshot_from_json(_snap(msr={"0x480": "00da0400`00000004", "3a": 5, "0n1161": "0y101"},
                                    state={"cpl": "0n3", "vmx": None},
                                    virtual_memory={"fffff800`00001000": "0f 01 c2"}), source="s")
    assert snap.processors[0].msr == {0x480: 0xDA040000000004, 0x3A: 5, 1161: 5}
    assert snap.processors[0].state == {"cpl": 3}


def _report(**verdict):
    v = {"instruction": "vmxon", "outcome": "ok", **verdict}
    return {"format": "vmxdbg-report", "version": 1, "processors": {"0": [v]}}


@pytest.mark.parametrize("data,key,words", [
    (_report(findings=[{"id": "VMXON001", "status": "broken"}]), "processors.0[0].findings[0].status",
     "expected \"fail\" or \"unknown\" or \"advice\""),
    (_report(findings=[{"status": "fail"}]), "processors.0[0].findings[0].id", "missing"),
    (_report(findings=[{"id": "X", "status": "fail", "inputs": [7]}]), "processors.0[0].findings[0].inputs[0]",
     "expected a string"),
    (_report(possible="ok"), "processors.0[0].possible", "expected a list"),
    (_report(outcome=3), "processors.0[0].outcome", "expected a string"),
    ({"format": "vmxdbg-report", "version": 1, "processors": {"x": []}}, "processors.x", "as key"),
    ({"format": "vmxdbg-report", "version": 1}, "processors", "missing"),
    ({"format": "vmxdbg-report", "version": 1, "processors": {},
      "evidence": {"0": {"hypervisor": "yes"}}}, "evidence.0.hypervisor", "an inference"),
])
def test_bad_reports_name_the_key(tmp_path, data, key, words):
    path = tmp_path / "r.expected.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_report(path)
    msg = str(info.value)
    assert msg.startswith(f"{path} [{key}]: ") and words in msg, msg


@pytest.mark.parametrize("header,key,words", [
    ({"capabilities": "msr"}, "capabilities", "expected a list, got a string"),
    ({"backend": {"kind": 3}}, "backend.kind", "expected a string"),
    ({"target": {"processors": [-1]}}, "target.processors[0]", "must be 0-4294967295"),
    ({"target": {"capability_msrs": {"0": {"0x480": "nope"}}}}, "target.capability_msrs.0.0x480", "hex integer"),
    ({"argv": "check"}, "argv", "expected a list"),
])
def test_bad_recording_headers_name_line_and_key(tmp_path, capsys, header, key, words):
    path = tmp_path / "h.vmxrec.jsonl"
    head = {"format": "vmxdbg-recording", "version": 1, **header}
    path.write_text(json.dumps(head) + '\n{"end": true, "events": 0}\n', encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_recording(path)
    assert str(info.value).startswith(f"{path}:1 [{key}]: ") and words in str(info.value), str(info.value)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f":1 [{key}]" in err and "Traceback" not in err


@pytest.mark.parametrize("trailer,words", [
    ('{"end": true}', "[events]: missing"),
    ('{"end": true, "events": "0"}', "[events]: expected an integer, got a string"),
    ('{"end": true, "events": 0, "exception": 5}', "[exception]: expected a string"),
])
def test_bad_trailers_name_line_and_key(tmp_path, trailer, words):
    path = tmp_path / "t.vmxrec.jsonl"
    path.write_text('{"format": "vmxdbg-recording", "version": 1}\n' + trailer + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_recording(path)
    assert str(info.value).startswith(f"{path}:2 ") and words in str(info.value), str(info.value)


def test_unknown_keys_are_ignored_everywhere():
    validate({**_snap(future={"x": 1}, msr={"0x3a": "0x5"}), "later": [1]}, "snapshot", "s")
    validate({**_report(findings=[{"id": "A", "status": "fail", "new": 1}], extra=2), "more": {}}, "report", "r")
    validate({"format": "vmxdbg-recording", "version": "1.4", "whatever": 1}, "recording-header", "h", line=1)
