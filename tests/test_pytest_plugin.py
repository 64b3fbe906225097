"""The pytest plugin, run with pytester in a throwaway project."""
from __future__ import annotations

import json

import pytest

from recfakes import POINTERS, two_cpu_snapshot, two_cpu_tree
from vmxdbg.backends.snapshot_backend import SnapshotBackend
from vmxdbg.record.recorded import record_check
from vmxdbg.report.model import dumps_report
from vmxdbg.rules import check_snapshot
from vmxdbg.state.snapshot import snapshot_from_json

pytest_plugins = ["pytester"]

# pytester's in-process runs drop the modules first imported inside them; import
# every rule module (and the replay layers) here, so that all runs share them.
import vmxdbg.record.cassette  # noqa: E402,F401
import vmxdbg.pytest_plugin  # noqa: E402,F401
from vmxdbg.rules.engine import all_rules  # noqa: E402

all_rules()


@pytest.fixture
def project(pytester, request):
    """recordings/a/s.vmxrec.jsonl with its expected report; -p loads the plugin if no entry point did."""
    rec_dir = pytester.path / "recordings" / "a"
    rec_dir.mkdir(parents=True)
    path = rec_dir / "s.vmxrec.jsonl"
    snap = record_check(SnapshotBackend(two_cpu_snapshot()), path, vmxon_pointers=POINTERS)
    (rec_dir / "s.expected.json").write_text(dumps_report(check_snapshot(snap)) + "\n", encoding="utf-8")
    # a recording without an expected report is not an item
    record_check(SnapshotBackend(two_cpu_snapshot()), rec_dir / "lonely.vmxrec.jsonl", vmxon_pointers=POINTERS)
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    loaded = request.config.pluginmanager.hasplugin("vmxdbg")
    args = ["-p", "no:benchmark", "-p", "no:hypothesispytest"] + ([] if loaded else ["-p", "vmxdbg.pytest_plugin"])
    return pytester, path, args


def test_inert_without_the_option(project):
    pytester, _, args = project
    result = pytester.runpytest(*args, "recordings", "test_plain.py")
    result.assert_outcomes(passed=1)


def test_replays_and_passes(project):
    pytester, _, args = project
    result = pytester.runpytest(*args, "--vmxdbg-recordings", "recordings", "-v", "test_plain.py")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*s.vmxrec.jsonl::s.vmxrec.jsonl PASSED*"])


def test_ini_value_enables_a_checkout(project):
    pytester, _, args = project
    pytester.makeini("[pytest]\nvmxdbg_recordings = recordings\n")
    result = pytester.runpytest(*args, "recordings")
    result.assert_outcomes(passed=1)


def test_failure_names_processor_instruction_and_rules(project):
    pytester, path, args = project
    expected = path.with_name("s.expected.json")
    data = json.loads(expected.read_text(encoding="utf-8"))
    v = next(v for v in data["processors"]["1"] if v["instruction"] == "vmxon")
    v["outcome"] = "ok"
    v["findings"] = [f for f in v["findings"] if f["status"] != "fail"] + [
        {"id": "VMXON999", "status": "fail", "sdm": "", "inputs": [], "message": "", "fix": ""}]
    expected.write_text(json.dumps(data), encoding="utf-8")
    result = pytester.runpytest(*args, "--vmxdbg-recordings", "recordings", "test_plain.py")
    result.assert_outcomes(passed=1, failed=1)
    got = check_snapshot(snapshot_from_json(two_cpu_tree())).verdict(1, "vmxon")
    result.stdout.fnmatch_lines([
        "*s.vmxrec.jsonl: replayed verdicts differ from s.expected.json:*",
        f"cpu 1 vmxon: outcome {got.outcome}, expected ok",
        "cpu 1 vmxon: rules that differ: *VMXON002 (fail, expected absent)*VMXON999 (absent, expected fail)*",
        "*--vmxdbg-update-expected*",
    ])
    assert "Traceback" not in result.stdout.str()


def test_update_expected_rewrites_then_passes(project):
    pytester, path, args = project
    expected = path.with_name("s.expected.json")
    good = expected.read_text(encoding="utf-8")
    data = json.loads(good)
    data["processors"]["1"][0]["outcome"] = "VMfailInvalid"
    expected.write_text(json.dumps(data), encoding="utf-8")
    only = ("--vmxdbg-recordings", "recordings", "recordings")
    pytester.runpytest(*args, *only).assert_outcomes(failed=1)
    result = pytester.runpytest(*args, *only, "--vmxdbg-update-expected")
    result.assert_outcomes(passed=1)
    assert json.loads(expected.read_text(encoding="utf-8")) == json.loads(good)
    pytester.runpytest(*args, *only).assert_outcomes(passed=1)


def test_divergence_fails_in_one_line(project):
    pytester, path, args = project
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2], lines[3] = lines[3].replace('"seq":3', '"seq":2'), lines[2].replace('"seq":2', '"seq":3')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = pytester.runpytest(*args, "--vmxdbg-recordings", "recordings", "recordings")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["s.vmxrec.jsonl: *replay diverged at seq 2: recorded cpuid(cpu 0, leaf=0x1*"])


def test_record_mode_all_uses_the_live_hook(project):
    pytester, path, args = project
    pytester.makeconftest(f"""
CALLS = []

def pytest_vmxdbg_live_backend(header, path):
    from vmxdbg.backends.snapshot_backend import SnapshotBackend
    from vmxdbg.state.snapshot import snapshot_from_json
    import json
    tree = {json.dumps(two_cpu_tree())!r}
    CALLS.append(header.get("command"))
    return lambda: SnapshotBackend(snapshot_from_json(json.loads(tree)))

def pytest_sessionfinish(session):
    print("LIVE CALLS", CALLS)
""")
    before, inode = path.read_text(encoding="utf-8"), path.stat().st_ino
    result = pytester.runpytest(*args, "-s", "--vmxdbg-recordings", "recordings", "recordings",
                               "--vmxdbg-record-mode", "all")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*LIVE CALLS *check*"])
    after = path.read_text(encoding="utf-8")
    assert path.stat().st_ino != inode            # written anew and renamed into place
    assert json.loads(after.splitlines()[0])["params"] == json.loads(before.splitlines()[0])["params"]
    # without a live target the mode says so, in one line
    pytester.makeconftest("")
    result = pytester.runpytest(*args, "--vmxdbg-recordings", "recordings", "recordings",
                               "--vmxdbg-record-mode", "all")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["s.vmxrec.jsonl: *record mode all needs a live target*"])


def test_a_recording_without_its_expected_report_is_said_in_the_summary(project):
    """Issue 18: lonely.vmxrec.jsonl was skipped without a word."""
    pytester, _, args = project
    result = pytester.runpytest(*args, "--vmxdbg-recordings", "recordings", "test_plain.py")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["vmxdbg: 1 recording(s) have no .expected.json next to them and were not run: "
                                 "*lonely.vmxrec.jsonl*"])


def test_a_partial_recording_does_not_suggest_an_option_pytest_lacks(project):
    pytester, path, args = project
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")        # the recorder did not finish
    result = pytester.runpytest(*args, "--vmxdbg-recordings", "recordings", "recordings")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*s.vmxrec.jsonl: *partial recording*a partial recording is not a test*"])
    assert "pass --partial" not in result.stdout.str()
