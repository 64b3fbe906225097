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
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..backends.base import Backend
from ..record.recorder import Recorder
from ..record.replay import PastEnd, ReplayBackend
from ..state.assume import parse_assumptions
from ..common import interrupt
from ..common.errors import BackendError, InputError, VmxdbgError, one_line
from ..record.recording import Recording
from ..report.model import FORMAT as REPORT_FORMAT, VERSION as REPORT_VERSION
from .stepper import (INTERRUPTED, NOT_REACHED, StepResult, Stepper, VmxSite, deviations, find_vmx_instructions,
                      mismatches, share_cross_findings)
from ..common.numbers import hexs, parse_int
from .faults import injector

TRACE = "trace"


def trace_params(code: Dict[int, bytes], *, physical: bool, bitness: int, max_stops: int,
                 breakpoints: bool = True, assume: Optional[Dict[str, Any]] = None,
                 source: str = "", timeout: Optional[float] = None, knobs: Sequence[str] = (),
                 approaches: Optional[Dict[int, bytes]] = None) -> Dict[str, Any]:
    """Header params of a trace: the code the sites were decoded from, by address, the
    timeout per stop (which the recorded go() calls carry), and the faults injected through
    the debugger (`knobs`, vmxdbg.trace.faults; left out when none)."""
    params = {"code": {hexs(a): b.hex() for a, b in sorted(code.items())}, "bitness": bitness,
              "physical": physical, "breakpoints": breakpoints, "assume": dict(assume or {}),
              "max_stops": max_stops, "source": source}
    if timeout is not None:
        params["timeout"] = float(timeout)
    if knobs:
        params["knobs"] = list(knobs)
    if approaches:
        params["approaches"] = {hexs(a): b.hex() for a, b in sorted(approaches.items())}
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
    timeout = p.get("timeout", 60.0)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise bad("timeout", "expected a positive number of seconds")
    knobs = p.get("knobs", [])
    if not isinstance(knobs, list) or not all(isinstance(k, str) for k in knobs):
        raise bad("knobs", "expected a list of CPU:KNOB strings")
    try:
        prepare = injector(knobs)
    except InputError as exc:
        raise bad("knobs", exc.detail) from None
    raw = p.get("approaches", {})
    if not isinstance(raw, dict):
        raise bad("approaches", "expected an object of address -> instruction bytes")
    approaches: Dict[int, bytes] = {}
    for addr_s, hexbytes in raw.items():
        try:
            approaches[parse_int(addr_s, what="address")] = bytes.fromhex(str(hexbytes))
        except (ValueError, InputError) as exc:
            raise bad(f"approaches.{addr_s}", str(exc)) from None
    return {"approaches": approaches, "sites": sites, "physical": bool(p.get("physical", False)), "timeout": float(timeout),
            "breakpoints": bool(p.get("breakpoints", True)), "assume": assumed, "max_stops": max_stops,
            "prepare": prepare}


def run_trace(backend: Backend, code: Dict[int, bytes], *, bitness: int = 64, physical: bool = False,
              timeout: float = 60.0, max_stops: int = 1000, record: Optional[Union[str, "os.PathLike[str]"]] = None,
              argv: Optional[List[str]] = None, source: str = "", breakpoints: bool = True,
              assume: Optional[Dict[str, Any]] = None, knobs: Sequence[str] = (),
              approaches: Optional[Dict[int, bytes]] = None) -> List[StepResult]:
    """Find the VMX instructions in `code` (address -> bytes) and step the target through them,
    recording the session to `record` when given (`approaches`: Stepper's)."""
    sites: List[VmxSite] = []
    for address, data in sorted(code.items()):
        sites += find_vmx_instructions(data, address, bitness)
    if not sites:
        raise InputError("no VMXON, VMCLEAR, VMPTRLD, VMLAUNCH or VMRESUME in the code range given")
    prepare = injector(knobs)
    if record is None:
        return Stepper(backend, sites, physical=physical, breakpoints=breakpoints, assume=assume,
                       prepare=prepare, approaches=approaches).run(timeout=timeout, max_stops=max_stops)
    params = trace_params(code, physical=physical, bitness=bitness, max_stops=max_stops,
                          breakpoints=breakpoints, assume=assume, source=source, timeout=timeout, knobs=knobs,
                          approaches=approaches)
    stepper: Optional[Stepper] = None
    try:
        with Recorder(backend, record, command=TRACE, argv=argv or [TRACE], params=params) as rec:
            stepper = Stepper(rec, sites, physical=physical, breakpoints=breakpoints, assume=assume,
                              prepare=prepare, approaches=approaches)
            return stepper.run(timeout=timeout, max_stops=max_stops)
    except (KeyboardInterrupt, SystemExit):
        done = len(stepper.results) if stepper is not None else 0
        interrupt.confirm(f"the recording {record} holds the {done} complete stop(s) and says where it was "
                          "interrupted (read it with `vmxdbg check` or `vmxdbg trace --replay`)")
        raise


def replay_trace(rec: Recording) -> List[StepResult]:
    """Re-run a recorded trace against the strict replay backend; a backend error on the way
    (recorded, or a call the recording cannot answer) is an InputError naming the recording.

    A recording whose session ended early (interrupted, or a `.partial` left by a
    killed recorder) gives its complete stops, then one INTERRUPTED row naming
    the stop (or the wait) the session was in when it ended."""
    ended = rec.ended_early()
    if ended is not None and "code" not in rec.params:     # written before the target had booted
        return [interrupted_row(None, f"{ended}: no stop was reached (the target had not booted)")]
    args = sites_from_params(rec)
    replay = _EndAwareReplay(rec, strict=True)
    try:
        stepper = Stepper(replay, args["sites"], physical=args["physical"], breakpoints=args["breakpoints"],
                          assume=args["assume"], prepare=args["prepare"], approaches=args["approaches"])
    except (BackendError, VmxdbgError) as exc:
        raise InputError(f"replaying it: {exc}", source=rec.path) from None
    replay.stepper = stepper
    try:
        results = stepper.run(max_stops=args["max_stops"], timeout=args["timeout"])
    except BackendError as exc:   # a recorded error the stepper does not handle, or a call past the end
        if replay.end is None:
            raise InputError(f"replaying it: {exc}", source=rec.path) from None
        results = stepper.results
    if replay.end is None:
        return results
    done, at = replay.end
    results = results[:done]
    share_cross_findings(results)
    where = ("at this stop" if at else "before the first stop" if not done
             else f"while the target ran, after {done} stop(s)")
    return results + [interrupted_row(at, f"{ended}, {where}")]


class _EndAwareReplay(ReplayBackend):
    """Strict replay that notes where the stepper was when the recording ran out:
    (how many stops were complete, the stop being handled or None)."""

    stepper: Optional[Stepper] = None
    end: Optional[Tuple[int, Optional[Tuple[int, VmxSite]]]] = None

    def _strict(self, key):  # type: ignore[no-untyped-def]
        try:
            return super()._strict(key)
        except PastEnd:
            if self.end is None and self.stepper is not None:
                self.end = (len(self.stepper.results), self.stepper.at)
            raise


def interrupted_row(at: Optional[Tuple[int, VmxSite]], note: str) -> StepResult:
    """The row for where a session ended early: the stop it was in, or none ("?")."""
    if at is None:
        return StepResult(-1, "-", 0, None, INTERRUPTED, None, note=note)
    cpu, site = at
    return StepResult(cpu, site.instruction, site.address, None, INTERRUPTED, None, note=note)


def interruption(results: Sequence[StepResult]) -> Optional[StepResult]:
    """The INTERRUPTED row of a trace that ended early, or None."""
    return next((r for r in results if r.verdict is None and r.actual == INTERRUPTED), None)


# ------------------------------------------------------------------ output

def trace_report_json(results: Sequence[StepResult]) -> Dict[str, Any]:
    """The report format of docs/formats.md, one verdict per stop in order, with the extra keys
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
    out: Dict[str, Any] = {"format": REPORT_FORMAT, "version": REPORT_VERSION, "kind": TRACE, "processors": procs}
    missed = [{"cpu": r.cpu if r.cpu >= 0 else None, "instruction": r.instruction, "address": hexs(r.address),
               "actual": r.actual, "reason": r.note}
              for r in results if r.verdict is None and r.actual != INTERRUPTED]
    if missed:
        out["missed"] = missed
    cut = interruption(results)
    if cut is not None:
        out["interrupted"] = {"cpu": cut.cpu if cut.cpu >= 0 else None,
                              "instruction": cut.instruction if cut.cpu >= 0 else None,
                              "address": hexs(cut.address) if cut.cpu >= 0 else None, "detail": cut.note}
    return out


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
    results = sorted(results, key=lambda r: (r.actual == INTERRUPTED, r.cpu))
    rows = [("cpu", "instruction", "address", "operand", "predicted", "actual", "match", "broken rules")]
    for r in results:
        if r.verdict is None:
            cut = r.actual == INTERRUPTED
            rows.append((str(r.cpu) if r.cpu >= 0 else "?", r.instruction,
                         hexs(r.address) if r.cpu >= 0 or not cut else "-", "", "-", r.actual,
                         "INTERRUPTED" if cut else "-" if r.actual == NOT_REACHED else "MISSED", r.note))
            continue
        fails = [f.id for f in r.verdict.findings if f.status == "fail"]
        fails += [f"{f.id}(advice)" for f in r.verdict.findings if f.status == "advice"]
        pred = r.verdict.outcome + (f" ({'/'.join(r.verdict.possible)})" if len(r.verdict.possible) > 1 else "")
        pred += "*" if r.verdict.assumed else ""
        mark = "deviation" if r.deviations else {True: "ok", False: "MISMATCH", None: "?"}[r.match]
        rows.append((str(r.cpu), r.instruction, hexs(r.address), "" if r.operand is None else hexs(r.operand),
                     pred, r.actual, mark, ",".join(fails)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    assumed = sorted({k for r in results if r.verdict is not None for k in r.verdict.assumed})
    if assumed:
        lines.append(f"* the prediction rests on assumed values, not read from the target: "
                     f"{', '.join(assumed)}")
    bad = mismatches(results)
    if bad:
        lines.insert(0, f"!!! {len(bad)} MISMATCH(ES) between vmxdbg's prediction and what the processor did: "
                        "a bug in vmxdbg or in the target's VMX implementation !!!")
    cut = interruption(results)
    if cut is not None:
        lines.insert(0, f"the session ended early: {cut.note}; the table holds the "
                        f"{sum(1 for r in results if r.verdict is not None)} stop(s) reached before it")
    known = deviations(results)
    if known:
        lines.insert(1 if bad else 0, f"{len(known)} stop(s) where the target deviates from the SDM in a known "
                                      "way (structs/deviations.yaml): vmxdbg's prediction is the SDM's")
    for r in results:
        if r.verdict is None:
            said = r.log if verbose else vmx_log_lines(r) + [
                line for line in r.log if line.startswith("guest ")
                and re.search(rf"\b{re.escape(r.instruction)}\b.*\bfail", line, re.I)]
            if said:
                lines.append("")
                lines.append(f"cpu {r.cpu} {r.instruction} at {hexs(r.address)}: {r.actual}")
                lines += [f"  target says: {line}" for line in said]
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
