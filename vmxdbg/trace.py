"""A trace: the stepper's run, recorded, replayed and shown as a per-core table.

A trace recording's header holds what the stepper was given (`params`: the
VMX instruction sites with their addresses, the code bitness, physical or
linear breakpoints, the stop limit); replaying it re-runs the same stepper
against the strict replay backend, so the table and the report are the ones
the live session gave and any change in behaviour is a divergence at the
first call that differs.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Sequence, Union

from .backends.base import Backend
from .backends.recorder import Recorder
from .backends.replay import ReplayBackend
from .assume import parse_assumptions
from .errors import BackendError, InputError, one_line
from .recording import Recording
from .report import FORMAT as REPORT_FORMAT, VERSION as REPORT_VERSION
from .stepper import StepResult, Stepper, VmxSite, deviations, find_vmx_instructions, mismatches
from .values import hexs, parse_int
from .kvm_knobs import injector

TRACE = "trace"


def trace_params(code: Dict[int, bytes], *, physical: bool, bitness: int, max_stops: int,
                 breakpoints: bool = True, assume: Optional[Dict[str, Any]] = None,
                 source: str = "", knobs: Sequence[str] = ()) -> Dict[str, Any]:
    """Header params of a trace: the code the sites were decoded from, by address, and the
    faults injected through the debugger (`knobs`, vmxdbg.kvm_knobs; left out when none)."""
    params = {"code": {hexs(a): b.hex() for a, b in sorted(code.items())}, "bitness": bitness,
              "physical": physical, "breakpoints": breakpoints, "assume": dict(assume or {}),
              "max_stops": max_stops, "source": source}
    if knobs:
        params["knobs"] = list(knobs)
    return params


def sites_from_params(rec: Recording) -> Dict[str, Any]:
    """The stepper's arguments from a trace recording's header; InputError names a bad key."""
    p = rec.params

    def bad(key: str, msg: str) -> InputError:
        return InputError(msg, source=rec.path, line=1, key=f"params.{key}")
    code = p.get("code")
    if not isinstance(code, dict) or not code:
        raise bad("code", "a trace recording needs the code its VMX instructions were found in")
    bitness = p.get("bitness", 64)
    if bitness not in (16, 32, 64):
        raise bad("bitness", "expected 16, 32 or 64")
    sites: List[VmxSite] = []
    for addr_s, hexbytes in code.items():
        try:
            sites += find_vmx_instructions(bytes.fromhex(str(hexbytes)), parse_int(addr_s, what="address"), bitness)
        except (ValueError, InputError) as exc:
            raise bad(f"code.{addr_s}", str(exc)) from None
    max_stops = p.get("max_stops", 1000)
    if not isinstance(max_stops, int) or isinstance(max_stops, bool) or max_stops < 1:
        raise bad("max_stops", "expected a positive number")
    assume = p.get("assume", {})
    if not isinstance(assume, dict):
        raise bad("assume", "expected an object of state key -> value")
    try:
        assumed = parse_assumptions(f"{k}={str(v).lower()}" for k, v in assume.items())
    except InputError as exc:
        raise bad("assume", exc.detail) from None
    knobs = p.get("knobs", [])
    if not isinstance(knobs, list) or not all(isinstance(k, str) for k in knobs):
        raise bad("knobs", "expected a list of CPU:KNOB strings")
    try:
        prepare = injector(knobs)
    except InputError as exc:
        raise bad("knobs", exc.detail) from None
    return {"sites": sites, "physical": bool(p.get("physical", False)),
            "breakpoints": bool(p.get("breakpoints", True)), "assume": assumed, "max_stops": max_stops,
            "prepare": prepare}


def run_trace(backend: Backend, code: Dict[int, bytes], *, bitness: int = 64, physical: bool = False,
              timeout: float = 60.0, max_stops: int = 1000, record: Optional[Union[str, "os.PathLike[str]"]] = None,
              argv: Optional[List[str]] = None, source: str = "", breakpoints: bool = True,
              assume: Optional[Dict[str, Any]] = None, knobs: Sequence[str] = ()) -> List[StepResult]:
    """Find the VMX instructions in `code` (address -> bytes) and step the target through them,
    recording the session to `record` when given."""
    sites: List[VmxSite] = []
    for address, data in sorted(code.items()):
        sites += find_vmx_instructions(data, address, bitness)
    if not sites:
        raise InputError("no VMXON, VMCLEAR, VMPTRLD, VMLAUNCH or VMRESUME in the code range given")
    prepare = injector(knobs)
    if record is None:
        return Stepper(backend, sites, physical=physical, breakpoints=breakpoints, assume=assume,
                       prepare=prepare).run(timeout=timeout, max_stops=max_stops)
    params = trace_params(code, physical=physical, bitness=bitness, max_stops=max_stops,
                          breakpoints=breakpoints, assume=assume, source=source, knobs=knobs)
    with Recorder(backend, record, command=TRACE, argv=argv or [TRACE], params=params) as rec:
        return Stepper(rec, sites, physical=physical, breakpoints=breakpoints, assume=assume,
                       prepare=prepare).run(timeout=timeout, max_stops=max_stops)


def replay_trace(rec: Recording) -> List[StepResult]:
    """Re-run a recorded trace against the strict replay backend; a backend error on the way
    (recorded, or a call the recording cannot answer) is an InputError naming the recording."""
    args = sites_from_params(rec)
    replay = ReplayBackend(rec, strict=True)
    try:
        return Stepper(replay, args["sites"], physical=args["physical"], breakpoints=args["breakpoints"],
                       assume=args["assume"], prepare=args["prepare"]).run(max_stops=args["max_stops"])
    except BackendError as exc:   # a recorded error the stepper does not handle, or a call past the end
        raise InputError(f"replaying it: {exc}", source=rec.path) from None


# ------------------------------------------------------------------ output

def trace_report_json(results: Sequence[StepResult]) -> Dict[str, Any]:
    """DESIGN.md's report format, one verdict per stop in order, with the extra keys
    `address`, `operand`, `actual` and `match` (readers ignore unknown keys)."""
    procs: Dict[str, List[Dict[str, Any]]] = {}
    for r in results:
        if r.verdict is None:
            continue
        v = r.verdict.to_json()
        v.update({"address": hexs(r.address), "actual": r.actual, "match": r.match})
        if r.deviations:
            v["deviation"] = [{"implementation": d.implementation, "rule": d.rule, "does": d.does,
                               "sdm": d.sdm, "requirement": d.requirement} for d in r.deviations]
        if r.operand is not None:
            v["operand"] = hexs(r.operand)
        procs.setdefault(str(r.cpu), []).append(v)
    return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "kind": TRACE, "processors": procs}


VMX_LOG = re.compile(r"VMX|VMFAIL|VMENTER|VMEXIT|VMLAUNCH|VMRESUME|VMPTRLD|VMCLEAR|VMCS|VMWRITE|VMREAD", re.I)


def vmx_log_lines(r: StepResult) -> List[str]:
    """The target's log lines about VMX for this stop's processor (Bochs prefixes lines `cpuN:`)."""
    out = []
    for line in r.log:
        m = re.match(r"\s*cpu(\d+):", line)
        if m and int(m.group(1)) != r.cpu:
            continue
        if VMX_LOG.search(line):
            out.append(line)
    return out


def render_trace(results: Sequence[StepResult], *, verbose: bool = False) -> str:
    """The per-core table of predicted vs actual (each core's stops in order), then the
    findings and the target's own VMX log lines (all of them with -v)."""
    results = sorted(results, key=lambda r: r.cpu)
    rows = [("cpu", "instruction", "address", "operand", "predicted", "actual", "match", "broken rules")]
    for r in results:
        if r.verdict is None:
            rows.append((str(r.cpu) if r.cpu >= 0 else "?", r.instruction, hexs(r.address), "", "-", r.actual,
                         "MISSED", r.note))
            continue
        fails = [f.id for f in r.verdict.findings if f.status == "fail"]
        fails += [f"{f.id}(advice)" for f in r.verdict.findings if f.status == "advice"]
        pred = r.verdict.outcome + (f" ({'/'.join(r.verdict.possible)})" if len(r.verdict.possible) > 1 else "")
        mark = "deviation" if r.deviations else {True: "ok", False: "MISMATCH", None: "?"}[r.match]
        rows.append((str(r.cpu), r.instruction, hexs(r.address), "" if r.operand is None else hexs(r.operand),
                     pred, r.actual, mark, ",".join(fails)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    bad = mismatches(results)
    if bad:
        lines.insert(0, f"!!! {len(bad)} MISMATCH(ES) between vmxdbg's prediction and what the processor did: "
                        "a bug in vmxdbg or in the target's VMX implementation !!!")
    known = deviations(results)
    if known:
        lines.insert(1 if bad else 0, f"{len(known)} stop(s) where the target deviates from the SDM in a known "
                                      "way (structs/deviations.yaml): vmxdbg's prediction is the SDM's")
    for r in results:
        if r.verdict is None:
            continue
        shown = [f for f in r.verdict.findings if (f.status != "unknown" and not f.advisory) or verbose
                 or f.status == "advice"]
        log = r.log if verbose else vmx_log_lines(r)
        if not shown and not log and r.match is not False:
            continue
        lines.append("")
        tail = "  <-- known deviation" if r.deviations else "  <-- MISMATCH" if r.match is False else ""
        lines.append(f"cpu {r.cpu} {r.instruction} at {hexs(r.address)}: predicted {r.verdict.outcome}, "
                     f"actual {r.actual}{tail}")
        for d in r.deviations:
            lines.append(f"  [DEVIATION] {d.rule} {d.implementation} {d.does}")
            lines.append(f"      SDM: {d.requirement} ({d.sdm})")
        for f in shown:
            lines.append(f"  [{f.status.upper()}] {f.id} {f.message}")
            lines.append(f"      SDM: {f.sdm}")
            if f.status == "fail":
                lines.append(f"      fix: {f.fix}")
        for line in log:
            lines.append(f"  target says: {line}")
    # the target's log lines, event details and notes come from the target or a recording
    return "\n".join(one_line(line) for line in lines) + "\n"


__all__ = ["run_trace", "replay_trace", "render_trace", "trace_report_json", "trace_params", "TRACE"]
