"""`vmxdbg check session.log` and `vmxdbg snapshot session.log -o ...` end to end."""
from __future__ import annotations

import json

from vmxdbg.cli import main
from vmxdbg.state.snapshot import load_snapshot
from vmxdbg.inputs.sources import kind_of

LOG = """Opened log file 'c:\\logs\\vmx.log'
0: kd> rdmsr 3a
msr[3a] = 00000000`00000005
0: kd> r cr4
cr4=00000000000406f8
0: kd> r cr4=426f8
0: kd> r cr4
cr4=00000000000426f8
"""


def write(tmp_path, text: str, encoding: str = "utf-8", name: str = "session.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def findings(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    report = json.loads(out)
    vmxon = [v for v in report["processors"]["0"] if v["instruction"] == "vmxon"][0]
    return code, {f["id"]: f["status"] for f in vmxon["findings"]}, vmxon, err


def test_kind_is_recognised_by_content_in_any_encoding(tmp_path):
    for enc in ("utf-8", "utf-16-le", "utf-16-be", "utf-16"):
        assert kind_of(write(tmp_path, LOG.replace("\n", "\r\n"), enc, f"x-{enc}.dat")) == "kd log"


def test_check_uses_the_state_at_the_line_asked_for(tmp_path, capsys):
    path = write(tmp_path, LOG, "utf-16")
    code, early, vmxon, _ = findings(capsys, ["check", str(path), "--format", "json", "--at", "5"])
    assert early.get("VMXON002") == "fail"          # CR4.VMXE = 0 at line 5
    assert vmxon["outcome"] in ("#UD", "unknown") and code == 1
    _, late, _, _ = findings(capsys, ["check", str(path), "--format", "json"])
    assert "VMXON002" not in late                     # fixed on line 6


def test_check_text_shows_where_a_value_came_from(tmp_path, capsys):
    path = write(tmp_path, LOG)
    main(["check", str(path), "--at", "5"])
    out = capsys.readouterr().out
    assert f"reg:cr4 from {path}:5" in out


def test_warnings_go_to_stderr_and_the_check_still_runs(tmp_path, capsys):
    path = write(tmp_path, LOG + "0: kd> rdmsr 480\nmsr[480] = 00da0400`0000zz04\n")
    code, _, _, err = findings(capsys, ["check", str(path), "--format", "json"])
    assert f"{path}:10: rdmsr output does not parse" in err
    assert code in (0, 1)


def test_snapshot_command_exports_what_was_understood(tmp_path, capsys):
    path = write(tmp_path, LOG)
    out = tmp_path / "out.vmxsnap.json"
    assert main(["snapshot", str(path), "-o", str(out)]) == 0
    snap = load_snapshot(out)
    p = snap.processors[0]
    assert p.msr[0x3A] == 5 and p.registers["cr4"] == 0x426F8
    assert p.provenance["reg:cr4"] == f"{path}:8"
    # a snapshot file is an input too, and exporting it again changes nothing
    again = tmp_path / "again.vmxsnap.json"
    assert main(["snapshot", str(out), "-o", str(again)]) == 0
    assert json.loads(again.read_text()) == json.loads(out.read_text())


def test_garbage_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "junk.bin"
    path.write_bytes(bytes(range(256)) * 40)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err


def test_garbage_inside_a_log_is_skipped(tmp_path, capsys):
    import random
    rnd = random.Random(3)
    junk = bytes(rnd.randrange(256) for _ in range(50000))
    path = tmp_path / "mixed.log"
    path.write_bytes(LOG.encode() + junk + b"\n0: kd> rdmsr 480\nmsr[480] = 00da0400`00000004\n")
    out = tmp_path / "o.json"
    assert main(["snapshot", str(path), "-o", str(out)]) == 0
    p = load_snapshot(out).processors[0]
    assert p.msr[0x480] == 0xDA040000000004 and p.registers["cr4"] == 0x426F8
