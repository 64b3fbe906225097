"""pytest plugin: recorded sessions become test items that replay them and compare verdicts.

A recording `recordings/**/NAME.vmxrec.jsonl` with its expected report
`NAME.expected.json` next to it (the JSON of `vmxdbg check --format json`)
becomes one item. The item replays the session, checks the snapshot it
gives and compares, per processor and instruction, the outcome, the possible
outcomes (where the outcome is known) and the (rule id, status) pairs of the
fail and advice findings with the expected report (unknown findings, and the
outcomes an unknown leaves possible, come and go as rules are added; an
unknown that matters changes the outcome, which is compared); a failure names the processor, the instruction and the rules that
differ. A strict replay that diverges, or that leaves recorded calls unused,
fails too.

Inert unless asked: items are collected only under the directories given
with `--vmxdbg-recordings DIR` (which pytest then also walks) or listed in
the ini value `vmxdbg_recordings` (vmxdbg's own checkout lists
`recordings`). Options:

  --vmxdbg-recordings DIR      collect the recordings under DIR (repeatable)
  --vmxdbg-record-mode MODE    none (default: replay only), once, new_episodes, all;
                               the modes that need a live target get it from the
                               `pytest_vmxdbg_live_backend(header, path)` hook
  --vmxdbg-update-expected     write each NAME.expected.json from the replay instead
                               of comparing (review the diff, then commit it)

A recording without its expected report is not an item; the terminal
summary lists them, so none is left out silently.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest

from .backends.base import Backend
from .record.replay import ReplayBackend
from .common.errors import VmxdbgError
from .report.model import Report, dumps_report, report_from_json

RECORD_MODES = ("none", "once", "new_episodes", "all")
SUFFIX = ".vmxrec.jsonl"
EXPECTED_SUFFIX = ".expected.json"
_ROOTS = pytest.StashKey[List[Path]]()
_LONELY = pytest.StashKey[List[Path]]()     # recordings under the roots without an expected report


class _Hooks:
    @pytest.hookspec(firstresult=True)
    def pytest_vmxdbg_live_backend(self, header: Dict[str, Any], path: Path) -> Optional[Callable[[], Backend]]:
        """A callable opening a live backend to record `path` again (record modes
        other than none), or None when this conftest cannot provide one.
        `header` is the existing recording's header ({} if there is none)."""


def pytest_addhooks(pluginmanager: Any) -> None:
    pluginmanager.add_hookspecs(_Hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vmxdbg", "vmxdbg recorded sessions")
    group.addoption("--vmxdbg-recordings", action="append", default=[], metavar="DIR",
                    help="collect DIR/**/*.vmxrec.jsonl that have a NAME.expected.json next to them "
                         "(the others are listed in the summary)")
    group.addoption("--vmxdbg-record-mode", choices=RECORD_MODES, default="none",
                    help="vcrpy-style record mode for recorded sessions (default: none = replay only)")
    group.addoption("--vmxdbg-update-expected", action="store_true", default=False,
                    help="rewrite each NAME.expected.json from the replayed report instead of comparing")
    parser.addini("vmxdbg_recordings", "directories whose recordings become test items", type="paths", default=[])


def pytest_configure(config: pytest.Config) -> None:
    base = Path(config.invocation_params.dir)
    given = [(base / d).resolve() for d in config.getoption("vmxdbg_recordings")]
    roots = given + [Path(p).resolve() for p in config.getini("vmxdbg_recordings")]
    config.stash[_ROOTS] = roots
    for d in given:            # an explicit directory is walked even outside testpaths
        if str(d) not in config.args:
            config.args.append(str(d))


def _inside(path: Path, roots: List[Path]) -> bool:
    for r in roots:
        try:
            path.relative_to(r)
            return True
        except ValueError:
            continue
    return False


def expected_path(recording: Path) -> Path:
    """NAME.expected.json next to NAME.vmxrec.jsonl."""
    return recording.with_name(recording.name[: -len(SUFFIX)] + EXPECTED_SUFFIX)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Optional[pytest.Collector]:
    if not file_path.name.endswith(SUFFIX):
        return None
    roots = parent.config.stash.get(_ROOTS, [])
    if not roots or not _inside(file_path.resolve(), roots):
        return None
    if not expected_path(file_path).exists():
        parent.config.stash.setdefault(_LONELY, []).append(file_path)
        return None
    return RecordingFile.from_parent(parent, path=file_path)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Recordings that are not tests because they have no expected report: said, not skipped silently."""
    lonely = config.stash.get(_LONELY, [])
    if lonely:
        shown = ", ".join(str(p) for p in lonely[:5]) + (f" and {len(lonely) - 5} more" if len(lonely) > 5 else "")
        terminalreporter.write_line(
            f"vmxdbg: {len(lonely)} recording(s) have no {EXPECTED_SUFFIX} next to them and were not run: {shown} "
            "(write one with `vmxdbg check REC --format json > NAME.expected.json`, or `vmxdbg trace --replay "
            "REC --format json` for a trace; review it, then commit it)")


# ------------------------------------------------------------------ comparing verdicts

COMPARED = ("fail", "advice")   # unknown findings come and go as rules are added; outcomes catch what matters
MAX_IDS = 12


def _findings(v: Any) -> Set[Tuple[str, str]]:
    return {(f.id, f.status) for f in v.findings if f.status in COMPARED} if v is not None else set()


def verdict_differences(expected: Report, got: Report) -> List[str]:
    """One line per processor/instruction whose verdict differs, naming the rules that differ."""
    out: List[str] = []
    for cpu in sorted(set(expected.processors) | set(got.processors)):
        if cpu not in got.processors:
            out.append(f"cpu {cpu}: expected verdicts, the replay has no such processor")
            continue
        if cpu not in expected.processors:
            out.append(f"cpu {cpu}: the replay has verdicts the expected report lacks")
            continue
        insns = [v.instruction for v in expected.processors[cpu]]
        insns += [v.instruction for v in got.processors[cpu] if v.instruction not in insns]
        for insn in insns:
            e, g = expected.verdict(cpu, insn), got.verdict(cpu, insn)
            where = f"cpu {cpu} {insn}"
            if e is None or g is None:
                out.append(f"{where}: {'missing from the replay' if g is None else 'not in the expected report'}")
                continue
            if e.outcome != g.outcome:
                out.append(f"{where}: outcome {g.outcome}, expected {e.outcome}")
            elif e.possible != g.possible and e.outcome != "unknown":
                out.append(f"{where}: possible {', '.join(g.possible)}, expected {', '.join(e.possible)}")
            fe, fg = _findings(e), _findings(g)
            if fe != fg:
                ids = sorted({i for i, _ in fe ^ fg})
                status = {i: s for i, s in fg}
                was = {i: s for i, s in fe}
                parts = [f"{i} ({status.get(i, 'absent')}, expected {was.get(i, 'absent')})" for i in ids]
                more = f", and {len(parts) - MAX_IDS} more" if len(parts) > MAX_IDS else ""
                out.append(f"{where}: rules that differ: {', '.join(parts[:MAX_IDS])}{more}")
    return out


def stop_differences(expected: Dict[str, Any], got: Dict[str, Any]) -> List[str]:
    """Trace reports: per stop, what the processor did must be what was recorded, and a
    prediction that agreed with it must still agree (a rule change must not break that)."""
    out: List[str] = []
    for cpu, stops in sorted(got.get("processors", {}).items()):
        before = expected.get("processors", {}).get(cpu, [])
        for i, stop in enumerate(stops):
            where = f"cpu {cpu} stop {i + 1} {stop.get('instruction')} at {stop.get('address')}"
            old = before[i] if i < len(before) and isinstance(before[i], dict) else {}
            if old.get("actual") != stop.get("actual"):
                out.append(f"{where}: the processor did {stop.get('actual')}, expected {old.get('actual')}")
            if stop.get("match") is False and old.get("match") is not False:
                out.append(f"{where}: predicted {stop.get('outcome')} ({', '.join(stop.get('possible', []))}) "
                           f"but the processor did {stop.get('actual')}: the prediction no longer matches")
    return out


# ------------------------------------------------------------------ items

class RecordingMismatch(AssertionError):
    """The replay does not match its recording or its expected report."""


class VerdictMismatch(RecordingMismatch):
    """The replayed verdicts are not the expected ones (one line per difference)."""


class RecordingFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        yield RecordingItem.from_parent(self, name=self.path.name)


def for_pytest(message: str) -> str:
    """A reader's message as a test says it: pytest has no --partial to pass."""
    head, sep, _ = message.partition("; pass --partial")
    if not sep:
        return message
    return (head + "; a partial recording is not a test: record the session again (`vmxdbg check FILE "
            "--partial` reads what it holds)")


class RecordingItem(pytest.Item):
    """Replays one recording and compares its verdicts with NAME.expected.json."""

    def _header(self) -> Dict[str, Any]:
        from .record.recording import read_recording
        try:
            return read_recording(self.path).header
        except VmxdbgError:
            return {}

    def _snapshot(self):  # type: ignore[no-untyped-def]
        from .record.cassette import open_cassette
        from .record.recorded import replay_session, runner
        from .record.recording import read_recording
        mode = self.config.getoption("vmxdbg_record_mode")
        if mode == "none":
            snap, replay = replay_session(read_recording(self.path))
            if replay.strict and replay.unused():
                raise RecordingMismatch(replay.unused_note())
            return snap
        header = self._header()
        run = runner(header.get("command"))
        if run is None:
            pytest.skip(f"record mode {mode}: vmxdbg cannot run a {header.get('command')!r} session again")
        live = self.config.hook.pytest_vmxdbg_live_backend(header=header, path=self.path)
        params = header.get("params") if isinstance(header.get("params"), dict) else {}
        command = {"command": header.get("command"), "argv": header.get("argv"), "params": params}
        with open_cassette(self.path, mode, live, command=command) as backend:
            snap = run(backend, params)
            if isinstance(backend, ReplayBackend) and backend.unused():
                raise RecordingMismatch(backend.unused_note())
        return snap

    def _trace_report(self) -> Dict[str, Any]:
        """A recorded trace replayed by the stepper: its report (one verdict per stop)."""
        from .record.recording import read_recording
        from .trace.session import replay_trace, trace_report_json
        if self.config.getoption("vmxdbg_record_mode") != "none":
            pytest.skip("traces are recorded with `vmxdbg trace --bochs --record FILE`, not by the plugin")
        return trace_report_json(replay_trace(read_recording(self.path)))

    def runtest(self) -> None:
        from .rules import check_snapshot
        trace = self._header().get("command") == "trace"
        data_got = self._trace_report() if trace else None
        report = report_from_json(data_got, source=str(self.path)) if data_got is not None \
            else check_snapshot(self._snapshot())
        exp_path = expected_path(self.path)
        if self.config.getoption("vmxdbg_update_expected"):
            text = json.dumps(data_got, indent=1) if data_got is not None else dumps_report(report)
            exp_path.write_text(text + "\n", encoding="utf-8")
            return
        try:
            data = json.loads(exp_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RecordingMismatch(f"{exp_path}: cannot read the expected report: {exc}") from None
        diffs = verdict_differences(report_from_json(data, source=str(exp_path)), report)
        if data_got is not None:
            diffs += stop_differences(data, data_got)
        if diffs:
            raise VerdictMismatch("\n".join(diffs))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Optional[str] = None) -> str:  # type: ignore[override]
        exc = excinfo.value
        if isinstance(exc, VerdictMismatch):
            return (f"{self.path.name}: replayed verdicts differ from {expected_path(self.path).name}:\n{exc}\n"
                    "(if the change is intended: pytest --vmxdbg-update-expected, review the diff, commit)")
        if isinstance(exc, (RecordingMismatch, VmxdbgError)):
            return f"{self.path.name}: {for_pytest(str(exc))}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> Tuple[Any, Optional[int], str]:
        return self.path, None, f"recording {self.path.name}"
