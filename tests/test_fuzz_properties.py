"""Property-based fuzzing (hypothesis) of every reader, with a fixed budget and derandomized.

Hypothesis builds inputs shaped like each format (so they reach past the
first checks) with arbitrary values where the format has values: any JSON
value where a snapshot or recording has a number, any text where a person
types one. Every input goes through tests/fuzzkit.py's judge: a result, or a
VmxdbgError of one line naming the file; no other exception, no hang, no
write outside the input's directory.
"""
from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fuzzkit
from vmxdbg.common.errors import InputError
from vmxdbg.record.recording import OPS
from vmxdbg.common.statekeys import SEGMENTS, TABLES
from vmxdbg.state.snapshot import PART_BITS, snapshot_from_json, snapshot_to_json
from vmxdbg.common.numbers import hexs, parse_int, vmcs_field_bits, windbg_hex

BUDGET = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def judged(reader: str, data: bytes, work) -> fuzzkit.Outcome:
    """Run one input through a reader; fail the example on a crash, else return the outcome."""
    o = fuzzkit.run_one(fuzzkit.READERS[reader], data, work)
    fuzzkit.clean(work)
    assert o.crash is None, f"{reader}: {o.crash}\ninput: {data[:400]!r}"
    return o


# -- leaves: any JSON value, with the ones vmxdbg's formats use made likely ----------------------------
U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
HEXS = st.one_of(U64.map(hexs), U64.map(windbg_hex), U64.map(lambda n: f"0n{n}"), U64.map(lambda n: f"{n:x}"))
ODD = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=30), st.sampled_from(["", "0x", "0n", "`", "0n\u00b2", "1" * 80, "-1", "0y2"]))
LEAF = st.one_of(HEXS, HEXS, ODD)
JSONISH = st.recursive(LEAF, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                     st.dictionaries(st.text(max_size=8), inner, max_size=5)),
                       max_leaves=12)


# -- values people type ---------------------------------------------------------------------------------

@BUDGET
@given(U64, st.sampled_from(["{:#x}", "{:x}", "{:X}", "0X{:X}", " {:#x} ", "{:#_x}"]))
def test_every_form_windbg_prints_parses_back(n, form):
    assert parse_int(form.format(n)) == n
    assert parse_int(windbg_hex(n)) == n and parse_int(f"0n{n}") == n and parse_int(f"0y{n:b}") == n


@BUDGET
@given(st.text(max_size=90))
def test_any_typed_text_is_a_number_or_one_line_naming_what(text):
    try:
        n = parse_int(text, what="--cpu")
    except InputError as exc:
        assert str(exc).startswith("--cpu: ") and "\n" not in str(exc) and len(str(exc)) < 200
    else:
        assert isinstance(n, int) and n >= 0


@BUDGET
@given(st.lists(st.one_of(st.sampled_from(fuzzkit.KD_COMMANDS), st.text(max_size=40)), min_size=1, max_size=4))
def test_any_console_line_gives_output_or_one_line_error(work, lines):
    judged("kdcmd", "\n".join(lines).encode("utf-8", "replace"), work)


# -- snapshots ------------------------------------------------------------------------------------------

SECTION = st.sampled_from(["cpuid", "msr", "registers", "state", "vmcs", "operands", "linear", "provenance",
                           "vmxon_pointer", "vmcs_pointer", "vmcs_launch_state"])


@BUDGET
@given(st.dictionaries(SECTION, JSONISH, max_size=4), st.dictionaries(st.text(max_size=6), LEAF, max_size=3),
       st.sampled_from(["0", "1", "0x2", "4294967295", "-1", "x"]))
def test_a_snapshot_with_any_values_in_any_section_is_read_or_refused_in_one_line(work, proc, memory, cpu):
    tree = {"format": "vmxdbg-snapshot", "version": 1, "processors": {cpu: proc}, "memory": memory}
    judged("snapshot", json.dumps(tree).encode(), work)


REG = st.sampled_from(["cr0", "cr3", "cr4", "rflags", "efer", "dr7", "rip"])
SEG = st.fixed_dictionaries({}, optional={k: st.integers(0, (1 << PART_BITS.get(k, 64)) - 1)
                                          for k in ("selector", "base", "limit", "attributes")})
# a VMCS field's value fits its width (encoding bits 14:13); a wider one is bad input (issue 18)
VMCS_FIELDS = st.lists(st.integers(0, 0x7FFF).flatmap(
    lambda e: st.tuples(st.just(e), st.integers(0, (1 << vmcs_field_bits(e)) - 1))), max_size=6).map(dict)


@BUDGET
@given(st.dictionaries(REG, U64, max_size=5), st.dictionaries(st.sampled_from(SEGMENTS + TABLES), SEG, max_size=4),
       st.dictionaries(U64, U64, max_size=6), VMCS_FIELDS,
       st.fixed_dictionaries({}, optional={"cpl": st.integers(0, 3), "vmx": st.sampled_from(["off", "root", "non-root"]),
                                           "smm": st.booleans(), "a20m": st.booleans()}))
def test_a_valid_snapshot_survives_its_json_form_and_the_checks(work, regs, segs, msrs, vmcs, state):
    raw = {"registers": {**{k: hexs(v) for k, v in regs.items()},
                         **{s: {k: hexs(v) for k, v in parts.items()} for s, parts in segs.items()}},
           "msr": {hexs(k): hexs(v) for k, v in msrs.items()}, "vmcs": {hexs(k): hexs(v) for k, v in vmcs.items()},
           "state": state}
    tree = {"format": "vmxdbg-snapshot", "version": 1, "processors": {"0": raw}}
    snap = snapshot_from_json(tree)
    again = snapshot_from_json(snapshot_to_json(snap))
    assert snapshot_to_json(again) == snapshot_to_json(snap)
    assert judged("snapshot", json.dumps(tree).encode(), work).ok


# -- reports --------------------------------------------------------------------------------------------

FINDING = st.fixed_dictionaries({"id": st.one_of(st.text(max_size=8), ODD),
                                 "status": st.sampled_from(["fail", "unknown", "advice", "bad", None])},
                                optional={"inputs": st.lists(LEAF, max_size=3), "sdm": LEAF, "message": LEAF})
VERDICT = st.fixed_dictionaries({"instruction": st.one_of(st.sampled_from(["vmxon", "vmlaunch"]), ODD),
                                 "outcome": st.one_of(st.sampled_from(["ok", "#UD", "VMfailValid:7"]), ODD)},
                                optional={"possible": st.one_of(st.lists(LEAF, max_size=3), LEAF),
                                          "findings": st.one_of(st.lists(FINDING, max_size=3), LEAF)})


@BUDGET
@given(st.dictionaries(st.sampled_from(["0", "1", "x", "\u00b2", "99999999999"]),
                       st.one_of(st.lists(VERDICT, max_size=3), LEAF), max_size=3), st.sampled_from([1, "1", "1.2", 2]))
def test_a_report_with_any_verdicts_is_read_or_refused_in_one_line(work, procs, version):
    tree = {"format": "vmxdbg-report", "version": version, "processors": procs}
    judged("report", json.dumps(tree).encode(), work)


# -- recordings -----------------------------------------------------------------------------------------

ARG_VALUE = {"int": st.one_of(HEXS, ODD), "str": st.one_of(REG, ODD), "strs": st.one_of(st.lists(REG, max_size=3), ODD),
             "bool": st.one_of(st.booleans(), ODD), "float": st.one_of(st.floats(allow_nan=True), ODD),
             "num": st.one_of(st.integers(0, 8), ODD),
             "bytes": st.one_of(st.binary(max_size=16).map(bytes.hex), ODD)}   # write_physical's data
RESULT = {"int": st.one_of(HEXS, ODD), "nums": st.one_of(st.lists(st.integers(0, 3), max_size=3), ODD),
          "int_map": st.one_of(st.dictionaries(REG, HEXS, max_size=3), ODD),
          "int4": st.one_of(st.lists(HEXS, min_size=4, max_size=4), ODD),
          "bytes": st.one_of(st.binary(max_size=16).map(bytes.hex), ODD),
          "vmx_state": st.one_of(st.fixed_dictionaries({}, optional={
              "vmx": st.sampled_from(["off", "root", "x"]), "cpl": HEXS, "vmcs_pointer": HEXS,
              "vmcs_launch_state": st.sampled_from(["clear", "launched", "bogus"]), "smm": ODD}), ODD),
          "num": st.one_of(st.integers(0, 8), ODD), "none": st.none()}
EVENT = st.fixed_dictionaries({"kind": st.sampled_from(["breakpoint", "step", "exited", "", "x"])},
                              optional={"cpu": st.one_of(st.integers(0, 2), ODD), "address": st.one_of(HEXS, ODD),
                                        "log": st.one_of(st.lists(st.text(max_size=10), max_size=2), ODD)})


@st.composite
def records(draw):
    op = draw(st.sampled_from(sorted(OPS) + ["bogus"]))
    spec = OPS.get(op)
    rec = {"op": op}
    if spec is None:
        return rec
    if spec.cpu:
        rec["cpu"] = draw(st.one_of(st.integers(0, 2), ODD))
    rec["args"] = {name: draw(ARG_VALUE[typ]) for name, typ in spec.args}
    if draw(st.integers(0, 9)) == 0:
        rec["error"] = {"type": draw(st.sampled_from(["NotAvailable", "TargetGone", "X"])), "message": draw(LEAF)}
    elif spec.result == "event":
        rec["event"] = draw(st.one_of(EVENT, ODD))
    else:
        rec["result"] = draw(RESULT[spec.result])
    return rec


@BUDGET
@given(st.lists(records(), max_size=25), st.sampled_from(["check", "trace", None]), st.booleans(),
       st.dictionaries(st.sampled_from(["cpus", "vmxon_pointers", "code", "bitness", "max_stops"]), JSONISH, max_size=2))
def test_a_recording_of_any_calls_is_read_or_refused_in_one_line(work, recs, command, complete, params):
    header = {"format": "vmxdbg-recording", "version": 1, "backend": {"kind": "fuzz"}, "command": command,
              "capabilities": ["registers", "msr", "cpuid", "physical", "vmcs", "vmx_state", "execution"],
              "params": params}
    lines = [header] + [{"seq": i, **r} for i, r in enumerate(recs, 1)]
    if complete:
        lines.append({"end": True, "events": len(recs)})
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    judged("partial", data, work)
    judged("recording", data, work)
    if command == "trace":
        judged("trace", data, work)


# -- layouts, probe dumps, structs ---------------------------------------------------------------------

FIELD = st.fixed_dictionaries({"encoding": st.one_of(st.sampled_from([0x6800, 0x4002, 0x0800, 0x2000, 0x6801]), ODD),
                               "name": st.one_of(st.sampled_from(["GUEST_CR0", "X_Y"]), ODD)},
                              optional={"offset": st.one_of(st.integers(-8, 0x1100), ODD),
                                        "size": st.one_of(st.sampled_from([1, 2, 4, 8, 3]), ODD),
                                        "transform": st.one_of(st.sampled_from(["ar_rotate8", "ar_pack16"]), JSONISH)})


@BUDGET
@given(st.lists(FIELD, max_size=6), st.one_of(st.integers(0, 1 << 33), ODD), st.one_of(st.integers(0, 0x2000), ODD),
       st.one_of(JSONISH, st.lists(st.text(max_size=5), min_size=1, max_size=2)), st.one_of(st.none(), JSONISH))
def test_a_layout_file_with_any_fields_is_read_or_refused_in_one_line(work, fields, revision, size, sources, extras):
    lay = {"name": "fuzz", "revision_id": revision, "size": size, "sources": sources, "fields": fields}
    if extras is not None:
        lay["extras"] = extras
    try:
        text = yaml.safe_dump({"layout": lay})
    except (yaml.YAMLError, ValueError):
        assume(False)
    judged("layout", text.encode(), work)


@BUDGET
@given(st.lists(st.tuples(st.sampled_from(["", "[cpu0] ", "[cpu1] "]),
                          st.sampled_from(["begin revision=0x2b", "begin", "end", "fail 0x2030 err=12", "fail",
                                           "data 0x0 2b000000", "data 0x8 c0de", "data 0xfff 00ff", "data zz 00",
                                           "data 0x0", "bogus"]),
                          st.text(alphabet="0123456789abcdef x=", max_size=12)), max_size=20))
def test_a_probe_dump_of_any_records_is_read_or_refused_in_one_line(work, lines):
    text = "".join(f"{prefix}vmxprobe {rec}{extra}\n" for prefix, rec, extra in lines)
    judged("probe", text.encode(), work)


@BUDGET
@given(st.sampled_from(fuzzkit.STRUCTS_FILES), st.data())
def test_a_definition_file_with_a_value_replaced_is_read_or_refused_in_one_line(work, name, data):
    raw = fuzzkit.corpus().structs[name].decode()
    spots = [i for i, ch in enumerate(raw) if ch == ":" and raw[i + 1:i + 2] == " "]
    at = data.draw(st.sampled_from(spots))
    end = raw.find("\n", at)
    value = data.draw(st.one_of(st.sampled_from(fuzzkit.YAML_TOKENS), st.text(max_size=12),
                                JSONISH.map(lambda v: json.dumps(v))))
    judged("structs", (raw[:at + 2] + value + raw[end:]).encode("utf-8", "replace"), work)


# -- kd logs ---------------------------------------------------------------------------------------------

@BUDGET
@given(st.lists(st.one_of(st.sampled_from(fuzzkit.KD_PIECES), st.text(max_size=30)), max_size=60),
       st.sampled_from(["\n", "\r\n", "\r"]), st.sampled_from(["utf-8", "utf-16-le", "utf-16", "utf-8-sig"]))
def test_a_kd_log_of_real_and_random_lines_is_read_and_checked(work, lines, end, encoding):
    assert judged("kdlog", end.join(lines).encode(encoding, "replace"), work).ok


# -- the command line ---------------------------------------------------------------------------------

@BUDGET
@given(st.sampled_from(fuzzkit.CLI_TEMPLATES), st.lists(st.tuples(st.integers(0, 20), st.sampled_from(fuzzkit.ARG_TOKENS)),
                                                        max_size=3))
def test_any_arguments_to_any_command_end_in_0_1_or_one_line_2(work, template, changes):
    argv = list(template)
    for at, token in changes:
        argv.insert(at % (len(argv) + 1), token)
    judged("cli", json.dumps({"argv": argv}).encode(), work)
