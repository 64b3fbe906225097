"""CLI smoke tests; also run under Python 3.9 (pykd's interpreter) by scripts/test.sh."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import vmxdbg

EXAMPLES = Path(vmxdbg.__file__).resolve().parent / "examples"


ROOT = str(Path(vmxdbg.__file__).resolve().parent.parent)


def run(*args: str, cwd: str = "/"):
    """The CLI in a subprocess, importing the same vmxdbg as these tests."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "vmxdbg", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_help_everywhere():
    top = run("--help")
    assert top.returncode == 0 and "check" in top.stdout
    assert run("check", "--help").returncode == 0


def test_check_clean_baseline_exit_0():
    r = run("check", str(EXAMPLES / "vmxon.vmxsnap.json"))
    assert r.returncode == 0, r.stderr
    assert "vmxon" in r.stdout and "ok" in r.stdout


def test_check_json_is_the_report_format(tmp_path):
    r = run("check", "--format", "json", str(EXAMPLES / "vmxon.vmxsnap.json"))
    data = json.loads(r.stdout)
    assert data["format"] == "vmxdbg-report" and data["version"] == 1
    insns = [v["instruction"] for v in data["processors"]["0"]]
    assert insns[:1] == ["vmxon"] and "vmlaunch" in insns and "vmresume" in insns


def test_check_failing_snapshot_exit_1(tmp_path):
    tree = json.loads((EXAMPLES / "vmxon.vmxsnap.json").read_text())
    tree["processors"]["0"]["registers"]["cr4"] = "0x3706f8"
    f = tmp_path / "bad.vmxsnap.json"
    f.write_text(json.dumps(tree))
    r = run("check", "--format", "json", str(f))
    assert r.returncode == 1
    vmxon = json.loads(r.stdout)["processors"]["0"][0]
    assert vmxon["outcome"] == "#UD"
    assert [x["id"] for x in vmxon["findings"] if x["status"] == "fail"] == ["VMXON002"]


def test_bad_inputs_exit_2_one_line(tmp_path):
    cases = {
        "missing.json": None,
        "nonhex.json": '{"format":"vmxdbg-snapshot","version":1,"processors":{"0":{"msr":{"0x480":"0xzz"}}}}',
        "garbage.json": "\x00\x01not json at all",
        "future.json": '{"format":"vmxdbg-snapshot","version":7,"processors":{}}',
    }
    for name, text in cases.items():
        f = tmp_path / name
        if text is not None:
            f.write_text(text)
        r = run("check", str(f))
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and "Traceback" not in r.stderr, (name, r.stderr)


def test_unknown_cpu_is_bad_input():
    r = run("check", "--cpu", "7", str(EXAMPLES / "vmxon.vmxsnap.json"))
    assert r.returncode == 2 and "no such processor" in r.stderr


def test_keys_equal_by_value_that_conflict_are_bad_input(tmp_path):
    for section, a, b in (("msr", "0x3a", "0x03a"), ("vmcs", "0x0802", "0X802")):
        tree = json.loads((EXAMPLES / "vmxon.vmxsnap.json").read_text())
        tree["processors"]["0"].setdefault(section, {})
        tree["processors"]["0"][section][a] = "0x5"
        tree["processors"]["0"][section][b] = "0x1"
        f = tmp_path / f"dup-{section}.json"
        f.write_text(json.dumps(tree))
        r = run("check", str(f))
        assert r.returncode == 2 and "same entry as an earlier key" in r.stderr and b in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_bad_key_is_named_as_a_key():
    import vmxdbg.state.snapshot as s
    try:
        s.snapshot_from_json({"format": "vmxdbg-snapshot", "version": 1,
                              "processors": {"0": {"msr": {"0xqq": "0x1"}}}}, source="k.json")
    except Exception as exc:  # noqa: BLE001
        assert "MSR index" in str(exc) and "0xqq" in str(exc)
    else:
        raise AssertionError("a non-hex MSR index must be refused")


def test_outputs_never_replace_a_device(tmp_path):
    """`-o /dev/null` (as root, a rename would turn the device into a regular file) is refused."""
    import stat
    r = run("snapshot", str(EXAMPLES / "vmxon.vmxsnap.json"), "-o", "/dev/null")
    assert r.returncode == 2 and "not a regular file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    from vmxdbg.record.recorder import Recorder
    from vmxdbg.backends.snapshot_backend import SnapshotBackend
    from vmxdbg.common.errors import InputError
    from vmxdbg.state.snapshot import load_snapshot
    import pytest
    with pytest.raises(InputError, match="not a regular file"):
        Recorder(SnapshotBackend(load_snapshot(EXAMPLES / "vmxon.vmxsnap.json")), "/dev/null", command="check")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not os.path.exists("/dev/null.partial")
