"""Inputs the fuzzer (tests/fuzzkit.py, bench/fuzz_readers.py) found crashing a reader, one test each.

Each input is the smallest form of what the fuzzer produced; each test fails
on the reader as it was before its fix.
"""
from __future__ import annotations

import sys

import pytest

from vmxdbg.common.errors import InputError
from vmxdbg.common.numbers import parse_int

#: Python 3.11 (and 3.10.7, 3.9.14) refuse to convert integers of more than 4300 digits
INT_LIMIT = pytest.mark.skipif(not hasattr(sys, "get_int_max_str_digits"),
                               reason="this Python converts integers of any length")


@pytest.mark.parametrize("text", ["0n\u00b2", "0n\u0661\u0662", "\u0967", "0n1\u00b2"])
def test_parse_int_refuses_unicode_digits_with_an_input_error(text):
    # str.isdigit() accepts these, int() does not: this was a ValueError
    with pytest.raises(InputError, match="is not a hex number"):
        parse_int(text, what="--cpu")


def test_parse_int_error_stays_short_whatever_was_typed():
    with pytest.raises(InputError) as exc:
        parse_int("z" * 100000, what="value")
    assert len(str(exc.value)) < 120


def _snapshot(tmp_path, text):
    p = tmp_path / "s.vmxsnap.json"
    p.write_text(text, encoding="utf-8")
    return p


@INT_LIMIT
def test_snapshot_with_an_integer_too_long_for_python_is_an_input_error(tmp_path):
    from vmxdbg.state.snapshot import load_snapshot
    p = _snapshot(tmp_path, '{"format": "vmxdbg-snapshot", "version": 1, "source": ' + "9" * 5000 + "}")
    with pytest.raises(InputError, match=r"s\.vmxsnap\.json: not JSON"):   # was a ValueError
        load_snapshot(p)


@pytest.mark.parametrize("cpu", ["\u00b2", "9" * 5000, "99999999999"], ids=["superscript", "5000-digits", "2^36"])
def test_snapshot_processor_numbers_are_ascii_and_bounded(tmp_path, cpu):
    from vmxdbg.state.snapshot import load_snapshot
    p = _snapshot(tmp_path, '{"format": "vmxdbg-snapshot", "version": 1, "processors": {"%s": {}}}' % cpu)
    with pytest.raises(InputError, match=r"s\.vmxsnap\.json \[processors"):
        load_snapshot(p)


def test_snapshot_free_text_reaches_the_terminal_as_one_printable_line(tmp_path):
    from vmxdbg.report.render import render_text
    from vmxdbg.rules import check_snapshot
    from vmxdbg.state.snapshot import load_snapshot
    p = _snapshot(tmp_path, '{"format": "vmxdbg-snapshot", "version": 1, "source": "a\\u001b]0;owned\\u0007\\nb",'
                            ' "processors": {"0": {"registers": {"cr4": "0x0"},'
                            ' "provenance": {"reg:cr4": "log:1\\u001b[2J\\nFAKE LINE"}}}}')
    snap = load_snapshot(p)
    text = render_text(check_snapshot(snap), snap, verbose=True)
    assert "\x1b" not in text and "\x07" not in text and "\nFAKE LINE" not in text
    assert "\\x1b[2J\\nFAKE LINE" in text and "\n" not in snap.source


def test_error_messages_are_one_printable_line_with_a_bounded_key():
    from vmxdbg.common.errors import BackendError
    err = InputError("bad\nvalue \x1b[31mred", source="f.json", line=3, key="k" * 5000)
    assert "\n" not in str(err) and "\x1b" not in str(err) and len(str(err)) < 300
    assert str(err).endswith("bad\\nvalue \\x1b[31mred")
    assert str(BackendError("a\r\nb", backend="replay", cpu=0)) == "replay cpu 0: a\\r\\nb"


@pytest.mark.parametrize("cpu", ["\u00b2", "9" * 5000], ids=["superscript", "5000-digits"])
def test_report_processor_numbers_are_ascii_and_bounded(tmp_path, cpu):
    from vmxdbg.report.model import load_report
    p = tmp_path / "r.expected.json"
    p.write_text('{"format": "vmxdbg-report", "version": 1, "processors": {"%s": []}}' % cpu, encoding="utf-8")
    with pytest.raises(InputError, match=r"r\.expected\.json \[processors"):   # was a ValueError
        load_report(p)


def test_report_file_errors_name_the_file_and_line(tmp_path):
    from vmxdbg.report.model import load_report
    p = tmp_path / "r.expected.json"
    p.write_text('{"format": "vmxdbg-report",\n "version": 1,\n "processors": {"0": [}}', encoding="utf-8")
    with pytest.raises(InputError, match=r"r\.expected\.json:3: not JSON"):
        load_report(p)
    if hasattr(sys, "get_int_max_str_digits"):
        p.write_text('{"format": "vmxdbg-report", "version": 1, "processors": {"0": ' + "9" * 5000 + "}}")
        with pytest.raises(InputError, match=r"r\.expected\.json: not JSON"):
            load_report(p)
    p.write_text("[" * 100000, encoding="utf-8")
    with pytest.raises(InputError, match=r"r\.expected\.json"):
        load_report(p)


def _recorded(tmp_path, name, make):
    """A real recording made by vmxdbg's recorder, as a list of JSON lines."""
    import json
    path = tmp_path / name
    make(path)
    return path, [json.loads(line) for line in path.read_text().splitlines()]


def _write_lines(path, lines):
    import json
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_a_recorded_backend_error_in_a_check_recording_names_the_recording(tmp_path):
    from recfakes import two_cpu_snapshot
    from vmxdbg.backends.snapshot_backend import SnapshotBackend
    from vmxdbg.record.recorded import record_check
    from vmxdbg.inputs.sources import load_any
    path, lines = _recorded(tmp_path, "c.vmxrec.jsonl", lambda p: record_check(SnapshotBackend(two_cpu_snapshot()), p))
    first = next(x for x in lines if x.get("op") == "processors")
    del first["result"]
    first["error"] = {"type": "TargetGone", "message": "the target\nwent away", "backend": "bochs"}
    _write_lines(path, lines)
    with pytest.raises(InputError) as exc:     # was a TargetGone naming only "bochs"
        load_any(path)
    assert str(exc.value).startswith(f"{path}: replaying it: bochs") and "\n" not in str(exc.value)


def test_a_trace_recording_whose_backend_cannot_step_names_the_recording(tmp_path):
    from fake_live import CODE, PROGRAM, FakeLive
    from vmxdbg.record.recording import read_recording
    from vmxdbg.trace.session import replay_trace, run_trace
    path, lines = _recorded(tmp_path, "t.vmxrec.jsonl", lambda p: run_trace(FakeLive(cores=1), {CODE: PROGRAM}, record=p))
    lines[0]["capabilities"].remove("execution")
    _write_lines(path, lines)
    with pytest.raises(InputError, match=rf"^{path}: replaying it: replay: stepping needs"):  # was a NotAvailable
        replay_trace(read_recording(path))


BOMB = "".join(f"{c}: &{c} [" + ", ".join([f"*{p}" if p else "x"] * 9) + "]\n"
               for p, c in zip([""] + list("abcdefg"), "abcdefgh"))


@pytest.mark.parametrize("text, message", [
    pytest.param("layout:\n  name: " + "9" * 5000 + "\n", "integer string conversion", marks=INT_LIMIT),
    (BOMB + "layout: [*h, *h, *h, *h, *h, *h, *h, *h]\n", "aliases expand to more than"),   # was minutes of work
    ("layout: !!python/object/apply:os.system [\"touch pwned\"]\n", "could not determine a constructor"),
    ("layout: {name: x\x00}\n", "unacceptable character"),    # was a message of several lines
], ids=["huge-int", "billion-laughs", "python-tag", "nul"])
def test_layout_files_that_are_not_safe_yaml_are_one_line_definition_errors(tmp_path, text, message):
    from vmxdbg.decode.layouts import load_layout
    from vmxdbg.common.errors import DefinitionError
    p = tmp_path / "l.yaml"
    p.write_text(text)
    with pytest.raises(DefinitionError) as exc:
        load_layout(p)
    assert str(exc.value).startswith(str(p)) and message in str(exc.value) and "\\n" not in str(exc.value)
    assert not (tmp_path / "pwned").exists()


def test_a_layout_file_is_read_bounded():
    from vmxdbg.decode.layouts import load_layout
    from vmxdbg.common.errors import DefinitionError
    with pytest.raises(DefinitionError, match=r"^/dev/zero: more than the \d+ bytes"):   # was unbounded
        load_layout("/dev/zero")


def test_structs_definitions_refuse_alias_bombs_and_huge_integers(tmp_path):
    import shutil
    from vmxdbg.decode.loader import default_directory, load_definitions
    from vmxdbg.common.errors import DefinitionError
    for f in default_directory().glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "controls.yaml").write_text(BOMB + "controls: {x: *h}\n")
    with pytest.raises(DefinitionError, match=r"controls\.yaml: aliases expand"):
        load_definitions(tmp_path)
    if hasattr(sys, "get_int_max_str_digits"):
        (tmp_path / "controls.yaml").write_text("controls: {x: " + "1" * 5000 + "}\n")
        with pytest.raises(DefinitionError, match=r"controls\.yaml: malformed YAML: Exceeds"):
            load_definitions(tmp_path)


def test_a_huge_console_line_is_refused_in_one_short_line():
    from vmxdbg.backends.snapshot_backend import SnapshotBackend
    from vmxdbg.console.kdcmds import KdState, execute
    from vmxdbg.state.snapshot import Snapshot
    state = KdState(SnapshotBackend(Snapshot()))
    for line in ("r cr" + "\x00" * (1 << 20), "g" + "x" * (1 << 20)):   # was echoed whole, seconds per line
        with pytest.raises(InputError, match="at most 4096 are read") as exc:
            execute(state, line)
        assert len(str(exc.value)) < 100


def test_snapshot_output_that_cannot_be_written_is_one_line_naming_it(tmp_path, capsys):
    from vmxdbg.cli import main
    src = str(__import__("pathlib").Path(__file__).parent.parent / "vmxdbg" / "examples" / "vmxon.vmxsnap.json")
    (tmp_path / "adir").mkdir()
    for out in (tmp_path / "missing" / "x.vmxsnap.json", tmp_path / "adir"):   # were tracebacks
        assert main(["snapshot", src, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"vmxdbg: {out}: cannot write the snapshot")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["adir"]


def test_a_trace_recording_can_be_checked_in_the_state_it_ends_in(tmp_path):
    from fake_live import CODE, PROGRAM, FakeLive
    from vmxdbg.rules import check_snapshot
    from vmxdbg.inputs.sources import load_any
    from vmxdbg.trace.session import run_trace
    path = tmp_path / "t.vmxrec.jsonl"
    fake = FakeLive(cores=2)
    run_trace(fake, {CODE: PROGRAM}, record=path)
    snap = load_any(path)      # was "replay processors(): not in the recording": a trace never asks
    assert sorted(snap.processors) == [0, 1]
    assert check_snapshot(snap).processors[1]


def test_kd_log_warnings_reach_the_terminal_as_one_printable_line():
    from vmxdbg.inputs.kdlog import parse_text
    log = parse_text("0: kd> r cr4\ncr4=\x1b]0;owned\x07\x1b[2J\n", "f.log")
    shown = [w.format(log.source) for w in log.warnings]
    assert shown and all("\x1b" not in w and "\x07" not in w for w in shown)   # were printed raw
    assert "\\x1b]0;owned\\x07" in shown[0]


def test_recorded_event_details_and_target_lines_are_shown_printable(tmp_path):
    from fake_live import CODE, PROGRAM, FakeLive
    from vmxdbg.backends.base import StopEvent
    from vmxdbg.console.kdcmds import describe_stop
    from vmxdbg.record.recording import read_recording
    from vmxdbg.trace.session import render_trace, replay_trace, run_trace
    assert describe_stop(1, 2, StopEvent("step", cpu=0, detail="\x1b[2Jx\ny")) == "stop 1/2: step on cpu 0 (\\x1b[2Jx\\ny)"
    path, lines = _recorded(tmp_path, "t.vmxrec.jsonl", lambda p: run_trace(FakeLive(cores=1), {CODE: PROGRAM}, record=p))
    lines[0]["backend"]["kind"] = "\x1b]0;x\x07"
    for x in lines[1:]:
        if isinstance(x.get("event"), dict):
            x["event"]["log"] = ["\x1b[31mred\nFAKE: all ok"]
    _write_lines(path, lines)
    rec = read_recording(path)
    text = render_trace(replay_trace(rec), verbose=True)     # -v: every target line, not only VMX ones
    assert "\x1b" not in text and "\nFAKE" not in text and "\\x1b[31mred\\nFAKE: all ok" in text
    assert "\x1b" not in rec.describe()


@pytest.mark.parametrize("extra, message", [
    ("  extras: 5\n", r"\[layout\.extras\]: expected a list of extras, got int"),          # was a TypeError
    ("  fields:\n  - {encoding: 0x6800, name: GUEST_CR0, offset: 8, transform: [a]}\n",     # was unhashable
     r"\[layout\.fields\[0\]\.transform\]: \['a'\] is not one of"),
], ids=["extras-not-a-list", "transform-a-list"])
def test_layout_parts_of_the_wrong_type_are_definition_errors(tmp_path, extra, message):
    from vmxdbg.decode.layouts import load_layout
    from vmxdbg.common.errors import DefinitionError
    p = tmp_path / "l.yaml"
    fields = "" if "fields" in extra else "  fields:\n  - {encoding: 0x6800, name: GUEST_CR0, offset: 8}\n"
    p.write_text("layout:\n  name: x\n  revision_id: 0x7\n  sources: [test]\n" + extra + fields)
    with pytest.raises(DefinitionError, match=message):
        load_layout(p)


@pytest.mark.parametrize("option", [["--at", "\u00b2"], ["--cpu", "\u0661"]], ids=["at", "cpu"])
def test_check_options_refuse_unicode_digits_in_one_line(capsys, option):
    from pathlib import Path
    from vmxdbg.cli import main
    log = Path(__file__).parent.parent / "recordings" / "kdlogs" / "xinali-hevd-cr4.log"
    assert main(["check", str(log), *option]) == 2        # was a ValueError traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"vmxdbg: {option[0]}") and "decimal" in err[-1]


@pytest.mark.parametrize("width", [0, 31, 65, 255])
def test_an_impossible_linear_address_width_leaves_canonical_checks_unknown(width):
    from vmxdbg.rules import check_snapshot
    from vmxdbg.rules.examples import baseline_tree
    from vmxdbg.state.snapshot import snapshot_from_json
    tree = baseline_tree("vmentry")
    leaf = tree["processors"]["0"]["cpuid"]["0x80000008"]
    leaf[0] = hex(int(leaf[0], 16) & ~0xFF00 | width << 8)
    report = check_snapshot(snapshot_from_json(tree))        # was "negative shift count" (ValueError)
    unknown = [f for v in report.processors[0] for f in v.findings if f.status == "unknown"]
    assert any("cpuid:0x80000008" in f.inputs for f in unknown)


@pytest.mark.parametrize("verdict, key", [
    ('{"instruction": "vmxon", "outcome": "ok", "findings": null}', r"\[processors\.0\[0\]\.findings\]"),
    ('{"instruction": "vmxon", "outcome": "ok", "findings": [{"id": "X", "status": "fail", "inputs": 1.5}]}',
     r"\[processors\.0\[0\]\.findings\[0\]\.inputs\]"),
], ids=["findings-null", "inputs-a-number"])
def test_report_parts_of_the_wrong_type_are_input_errors(tmp_path, verdict, key):
    from vmxdbg.report.model import load_report
    p = tmp_path / "r.expected.json"
    p.write_text('{"format": "vmxdbg-report", "version": 1, "processors": {"0": [%s]}}' % verdict)
    with pytest.raises(InputError, match=key + ": expected a list"):   # were TypeErrors
        load_report(p)


def test_a_bit_range_of_thousands_of_digits_is_a_definition_error(tmp_path):
    import shutil
    from vmxdbg.decode.loader import default_directory, load_definitions
    from vmxdbg.common.errors import DefinitionError
    for f in default_directory().glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    text = (tmp_path / "registers.yaml").read_text()
    (tmp_path / "registers.yaml").write_text(text.replace('bits: "0", doc: "Locked', 'bits: "1:' + "9" * 5000
                                                           + '", doc: "Locked', 1))
    with pytest.raises(DefinitionError, match=r"registers\.yaml \[.*bits\]: .* is not a bit range"):  # was ValueError
        load_definitions(tmp_path)
