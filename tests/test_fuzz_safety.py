"""Safe by construction: no input can make vmxdbg run code or write where it was not told to.

1. The package source has no eval/exec/compile, no pickle or marshal, no
   YAML loading but with a safe loader, no shell: an AST scan of vmxdbg/
   with a small allow-list, each entry with its reason.
2. Hostile inputs (a recording and a snapshot whose fields hold path
   traversal, format strings, shell and Python injections, YAML tags,
   huge numbers and terminal escapes; a layout file with Python tags; a
   probe dump; a kd log) go through every command in a subprocess that
   watches itself with an audit hook (PEP 578): no process is started, no
   code compiled or executed, nothing unpickled, nothing opened for writing
   but the `-o` files, and no escape sequence reaches the terminal.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vmxdbg"

FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "execfile", "breakpoint"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
FORBIDDEN_YAML = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "load_all", "Loader", "FullLoader",
                  "UnsafeLoader", "CLoader", "CFullLoader", "CUnsafeLoader", "UnsafeConstructor", "FullConstructor"}
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("os", "execv"), ("os", "execvp"), ("os", "execve"),
               ("os", "spawnv"), ("os", "spawnl"), ("pty", "spawn"), ("subprocess", "getoutput"),
               ("subprocess", "getstatusoutput")}
#: (file, what) -> why it is not on an input path, or why it is safe there
ALLOWED = {
    ("vmxdbg/decode/loader.py", "yaml.load"): "load_yaml: Loader is a parameter, the safe loader by default; "
                                              "every caller's loader is checked to be safe below",
    ("vmxdbg/backends/bochs_process.py", "subprocess.Popen"): "starts the Bochs emulator for a live session: argv "
                                                              "is built by vmxdbg, a list, never a shell",
    ("vmxdbg/hypervisors/minihv/build.py", "subprocess.run"): "runs nasm on the bundled minihv.asm to build the "
                                                              "test hypervisor: argv is built by vmxdbg, a list, never a shell",
    ("vmxdbg/backends/registry.py", "import_module"): "module names from the constant KINDS table; a name "
                                                      "that is not in it is refused before any import",
    ("vmxdbg/cli.py", "import_module"): "the modules of vmxdbg.commands, found by pkgutil in the package",
    ("vmxdbg/rules/__init__.py", "import_module"): "the rule modules of vmxdbg.rules, found by pkgutil",
    ("vmxdbg/inputs/sources.py", "import_module"): "module names from the constant KINDS table, not from the input",
    ("vmxdbg/record/recorded.py", "import_module"): "module names from the constant RUNNERS table; the recording's "
                                             "command only picks a key of it",
    ("vmxdbg/hypervisors/linux_kvm/image.py", "subprocess.run"): "`trace --hypervisor linux-kvm` builds its image with "
                                                                "gcc and genisoimage: argv lists built by vmxdbg "
                                                                "from its own files, no shell",
}


def _sources():
    for p in sorted(PACKAGE.rglob("*.py")):
        yield p.relative_to(ROOT).as_posix(), ast.parse(p.read_text(encoding="utf-8"), filename=str(p))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _hits(node: ast.AST) -> list:
    """What a node uses that FORBIDDEN_* or the allow-list is about."""
    hits = []
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        hits += [f"import {n}" for n in names if n.split(".")[0] in FORBIDDEN_MODULES]
    elif isinstance(node, ast.Attribute) and _dotted(node.value) == "yaml" and node.attr in FORBIDDEN_YAML:
        hits.append(f"yaml.{node.attr}")
    elif isinstance(node, ast.Call):
        name = _dotted(node.func)
        if name in FORBIDDEN_CALLS or tuple(name.split(".")[-2:]) in SHELL_CALLS or name == "yaml.load" \
                or name.startswith("subprocess."):
            hits.append(name)
        if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
               for k in node.keywords):
            hits.append(f"{name}(shell=...)")
        if name.rsplit(".", 1)[-1] in ("import_module", "exec_module", "spec_from_file_location", "run_path",
                                        "run_module", "load_module"):
            hits.append(name.rsplit(".", 1)[-1])
        if name == "getattr" and node.args and _dotted(node.args[0]) in ("os", "builtins", "subprocess"):
            hits.append(f"getattr({_dotted(node.args[0])}, ...)")
    return hits


def scan() -> list:
    """Every use of a forbidden construct in vmxdbg/, as (file, line, what), allow-listed ones left out."""
    return [(rel, getattr(node, "lineno", 0), hit) for rel, tree in _sources() for node in ast.walk(tree)
            for hit in _hits(node) if (rel, hit) not in ALLOWED]


def test_the_package_source_has_no_way_to_run_code_from_an_input():
    assert scan() == []


def test_the_scan_finds_what_it_forbids(tmp_path, monkeypatch):
    bad = PACKAGE / "_fuzz_scan_probe.py"
    bad.write_text("import pickle\nimport yaml, subprocess, os\n"
                   "def f(t):\n    eval(t)\n    yaml.load(t, Loader=yaml.Loader)\n    yaml.unsafe_load(t)\n"
                   "    subprocess.run(t, shell=True)\n    os.system(t)\n    __import__(t)\n")
    try:
        hits = {h for f, _, h in scan() if f.endswith("_fuzz_scan_probe.py")}
    finally:
        bad.unlink()
    assert hits == {"import pickle", "eval", "yaml.load", "yaml.Loader", "yaml.unsafe_load", "subprocess.run",
                    "subprocess.run(shell=...)", "os.system", "__import__"}


def test_every_yaml_loader_vmxdbg_passes_is_safe():
    from vmxdbg.decode import layouts, loader
    for cls in (loader._SafeUniqueLoader, layouts._SAFE):
        assert issubclass(cls, yaml.constructor.SafeConstructor)
        assert not issubclass(cls, (yaml.constructor.FullConstructor, yaml.constructor.UnsafeConstructor))
    # the only callers of load_yaml pass one of those (or nothing: the default)
    calls = [(rel, n) for rel, tree in _sources() for n in ast.walk(tree)
             if isinstance(n, ast.Call) and _dotted(n.func).endswith("load_yaml")]
    assert calls
    for rel, call in calls:
        passed = [_dotted(a) for a in call.args[2:3]] + [_dotted(k.value) for k in call.keywords if k.arg == "loader"]
        assert all(p in ("_SAFE", "_SafeUniqueLoader") for p in passed), (rel, call.lineno, passed)


def test_the_subprocesses_vmxdbg_starts_never_use_a_shell():
    for rel, tree in _sources():
        for n in ast.walk(tree):
            if isinstance(n, ast.Call) and _dotted(n.func).startswith("subprocess."):
                assert not any(k.arg == "shell" for k in n.keywords), (rel, n.lineno)
                assert n.args and not isinstance(n.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)), \
                    f"{rel}:{n.lineno}: a command line as one string"


# -- hostile inputs, through every command, in a process that audits itself -----------------------------

DRIVER = r'''
import contextlib, io, json, os, sys
sys.path.insert(0, os.environ["VMXDBG_ROOT"])
from vmxdbg import cli

def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as exc:
            status = exc.code
        except BaseException as exc:
            status = "exception " + type(exc).__name__ + ": " + str(exc)
    return {"argv": argv, "status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}

cases = json.loads(sys.stdin.read())
for argv in cases["warmup"]:
    run(argv)
allowed = set(cases["writable"])
events = []
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
BAD = ("exec", "compile", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
       "socket.", "pickle.", "marshal.", "ctypes.", "os.kill", "webbrowser.")

def hook(event, args):
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & WRITE)
        if writes and not isinstance(path, int) and os.path.abspath(os.fsdecode(path)) not in allowed:
            events.append(["write", str(path)])
    elif event in ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod",
                   "os.truncate", "shutil.rmtree"):
        paths = [os.path.abspath(os.fsdecode(a)) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        if not all(p in allowed for p in paths):
            events.append([event, repr(args)[:200]])
    elif event.startswith(BAD):
        events.append([event, repr(args)[:200]])

sys.addaudithook(hook)
# the hook sees what it looks for: compiling code, a process, a write outside
compile("1", "<selftest>", "eval")
with contextlib.suppress(OSError):
    open(os.path.join(os.getcwd(), "selftest-write.txt"), "w").close()
    os.remove(os.path.join(os.getcwd(), "selftest-write.txt"))
selftest, events[:] = list(events), []
results = [run(argv) for argv in cases["hostile"]]
print(json.dumps({"events": events, "selftest": selftest, "results": results}))
'''

ESC = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _hostile_files(d: Path, canary: Path) -> dict:
    """Inputs whose every free-text field tries something."""
    touch = f"touch {canary}"
    tricks = [f"../../../../..{canary}", f"$({touch})", f"`{touch}`", f"; {touch} #", "%s%s%n%x%p",
              "{0.__class__.__mro__[1].__subclasses__}", "{__import__('os').system('%s')}" % touch,
              f"__import__('os').system('{touch}')", f"!!python/object/apply:os.system ['{touch}']",
              "\x1b]0;owned\x07\x1b[2J", "0x" + "f" * 64, "9" * 400, "\u202e\u2028", "\x00"]
    from vmxdbg.rules.examples import baseline_tree
    tree = baseline_tree("vmentry")
    tree["source"] = " ".join(tricks)
    p0 = tree["processors"]["0"]
    p0["provenance"] = {f"reg:cr{i}": t for i, t in enumerate(tricks)}
    p0["operands"] = {tricks[0][:40]: "0x1000"}
    p0["linear"] = {"vmxon_region": "0x" + "f" * 16}
    p0["registers"][tricks[4]] = "0x1"
    tree["memory"]["0x" + "f" * 15] = "00"
    files = {"snap": d / "hostile.vmxsnap.json"}
    files["snap"].write_text(json.dumps(tree))

    from recfakes import two_cpu_snapshot
    from vmxdbg.backends.snapshot_backend import SnapshotBackend
    from vmxdbg.record.recorded import record_check
    rec = d / "hostile.vmxrec.jsonl"
    record_check(SnapshotBackend(two_cpu_snapshot()), rec, source=tricks[1], argv=tricks)
    lines = [json.loads(x) for x in rec.read_text().splitlines()]
    lines[0].update({"producer": tricks[5], "argv": ["--record", tricks[0], "--history", tricks[0]],
                     "params": {**lines[0].get("params", {}), "source": tricks[6]},
                     "backend": {"kind": tricks[0], "version": tricks[9]}, "target": {"x": tricks[7]},
                     "yaml": tricks[8], "command": "check"})
    for r in lines[1:]:
        if r.get("op") == "read_msr" and r.get("args", {}).get("index") == "0x3a":
            r.pop("result", None)
            r["error"] = {"type": tricks[7], "message": tricks[9] + tricks[4], "backend": tricks[0], "what": tricks[5]}
    rec.write_text("".join(json.dumps(x) + "\n" for x in lines))
    files["rec"] = rec

    from fake_live import CODE, PROGRAM, FakeLive
    from vmxdbg.trace.session import run_trace
    trace = d / "hostile-trace.vmxrec.jsonl"
    run_trace(FakeLive(cores=1), {CODE: PROGRAM}, record=trace, argv=tricks, source=tricks[2])
    tl = [json.loads(x) for x in trace.read_text().splitlines()]
    for r in tl[1:]:
        if "event" in r and isinstance(r["event"], dict):
            r["event"]["detail"] = tricks[9]
            r["event"]["log"] = [tricks[3], tricks[6]]
    trace.write_text("".join(json.dumps(x) + "\n" for x in tl))
    files["trace"] = trace

    files["layout"] = d / "hostile.yaml"
    files["layout"].write_text(f"layout: !!python/object/apply:os.system ['{touch}']\n")
    files["dump"] = d / "hostile-probe.txt"
    files["dump"].write_text("".join(f"vmxprobe {t}\n" for t in ("begin revision=0x2b", "data 0x0 2b000000",
                                                                     f"fail 0x2030 {tricks[1]}", "end")))
    files["log"] = d / "hostile.log"
    files["log"].write_text("\n".join(["0: kd> .shell " + touch, "0: kd> r cr4", "cr4=" + tricks[9],
                                       "0: kd> !vmxcheck " + tricks[5], "0: kd> rdmsr 3a",
                                       "msr[3a] = 00000000`00000005", "0: kd> r cr0", "cr0=0000000080050033", ""]))
    return files


def _commands(f: dict, out: Path, out2: Path) -> list:
    return [
        ["check", str(f["snap"]), "-v"], ["check", str(f["snap"]), "--format", "dml"],
        ["check", str(f["rec"]), "--format", "json"], ["check", str(f["log"])], ["check", str(f["trace"])],
        ["caps", str(f["rec"])], ["snapshot", str(f["rec"]), "-o", str(out)],
        ["snapshot", str(f["snap"]), "-o", str(out)], ["snapshot", str(f["log"]), "-o", str(out)],
        ["vmcs", "0x1a2b4000", "--source", str(f["snap"]), "--layout", str(f["layout"])],
        ["vmcs", "0x1a2b4000", "--source", str(f["snap"]), "--as", "vmxon"],
        ["trace", "--replay", str(f["trace"]), "-v"], ["trace", "--replay", str(f["trace"]), "--format", "json"],
        ["replay", str(f["trace"]), "-c", "!stops;g;r;rdmsr 3a;!vmxcheck -v;t-;!dq 1a2b3000"],
        ["replay", str(f["rec"]), "-c", "r;rdmsr 3a;!vmxcheck"],
        ["layout", "learn", str(f["dump"]), "-o", str(out2)],
        ["decode", "msr", "0x3a", "%s%n{0}"], ["decode", "vmcs-field", "__class__"],
    ]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    canary = Path("/tmp") / f"vmxdbg-pwned-{uuid.uuid4().hex}"
    files = _hostile_files(d, canary)
    out, out2 = d / "out.vmxsnap.json", d / "out.layout.yaml"
    from vmxdbg.rules.examples import baseline_tree
    benign = d / "benign.vmxsnap.json"
    benign.write_text(json.dumps(baseline_tree("vmentry")))
    warm = [[a if a not in {str(files["snap"])} else str(benign) for a in argv]
            for argv in _commands(files, d / "warm.vmxsnap.json", d / "warm.yaml")]
    warm += [argv for argv in _commands(files, d / "warm.vmxsnap.json", d / "warm.yaml")]   # the same paths, once
    before = {p.name for p in d.iterdir()}
    writable = [str(out), str(out) + ".tmp", str(out2)]
    cases = {"warmup": warm, "hostile": _commands(files, out, out2), "writable": writable}
    for p in (out, out2, d / "warm.vmxsnap.json", d / "warm.yaml"):
        if p.exists():
            p.unlink()
    before = {p.name for p in d.iterdir()}
    env = dict(os.environ, VMXDBG_ROOT=str(ROOT), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(cases), capture_output=True, text=True,
                          cwd=d, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    result.update(canary=canary, dir=d, before=before, out=out, out2=out2, files=files)
    return result


def test_hostile_inputs_run_no_code_start_no_process_and_write_nothing_unasked(hostile_run):
    assert [e[0] for e in hostile_run["selftest"]] == ["compile", "write", "os.remove"]   # the hook works
    assert hostile_run["events"] == []
    assert not hostile_run["canary"].exists()
    after = {p.name for p in hostile_run["dir"].iterdir()} - {"warm.vmxsnap.json", "warm.yaml"}   # the warm-up's
    assert after - hostile_run["before"] <= {hostile_run["out"].name, hostile_run["out2"].name}


def test_hostile_inputs_end_in_a_result_or_one_line_naming_the_file(hostile_run):
    for r in hostile_run["results"]:
        where = " ".join(r["argv"])[:200]
        assert r["status"] in (0, 1, 2), f"{where}: {r['status']}"
        assert "Traceback" not in r["stderr"] + r["stdout"], where
        if r["status"] == 2:
            errors = [ln for ln in r["stderr"].splitlines() if not ln.startswith(("vmxdbg: warning:", "vmxdbg: note:"))]
            assert len(errors) == 1, (where, r["stderr"])
        # nothing from the input reaches the terminal as a control sequence
        assert not ESC.search(r["stdout"]) and not ESC.search(r["stderr"]), (where, r["stdout"][:300], r["stderr"])
    statuses = {" ".join(r["argv"][:1]): r["status"] for r in hostile_run["results"]}
    assert statuses["check"] in (0, 1) and statuses["replay"] == 0 and statuses["trace"] in (0, 1)


def test_snapshot_output_is_the_named_file_and_nothing_else(hostile_run):
    from vmxdbg.state.snapshot import load_snapshot
    out = hostile_run["out"]
    assert out.is_file() and not Path(str(out) + ".tmp").exists()
    snap = load_snapshot(out)
    assert snap.processors            # the last `snapshot -o` (of the kd log) is what the file holds


def test_a_hostile_layout_file_is_refused_as_unsafe_yaml_without_running_it(hostile_run):
    r = next(r for r in hostile_run["results"] if "--layout" in r["argv"])
    assert r["status"] == 2 and "could not determine a constructor" in r["stderr"]
    assert str(hostile_run["files"]["layout"]) in r["stderr"]
