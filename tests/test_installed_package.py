"""vmxdbg installed with `pip install .` (not editable) works from another directory.

The package is built and installed into a temporary folder (`pip install --no-deps
--target`), so only what the wheel ships is there: structs/, the examples, the
test hypervisor's source, the schemas. The CLI then runs from a directory with no
checkout in sight.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    src = build / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "__pycache__",
                                                             "build", "recordings", "tests", "bench", "docs"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--disable-pip-version-check", "--target", str(target), str(src)],
                       capture_output=True, text=True, cwd=build)
    assert r.returncode == 0, r.stderr[-2000:]
    shutil.rmtree(src)
    return target


def run(installed: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(installed)
    return subprocess.run([sys.executable, "-m", "vmxdbg", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_it_is_the_installed_copy_that_runs(installed, tmp_path):
    r = subprocess.run([sys.executable, "-c", "import vmxdbg; print(vmxdbg.__file__)"], capture_output=True,
                       text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)})
    assert r.stdout.strip().startswith(str(installed)), r.stdout


def test_check_and_rule_work_on_the_packaged_examples(installed, tmp_path):
    examples = installed / "vmxdbg" / "examples"
    r = run(installed, "check", str(examples / "vmxon.vmxsnap.json"), cwd=tmp_path)
    assert r.returncode == 0 and "vmxon" in r.stdout, r.stderr
    r = run(installed, "rule", "VMXON002", cwd=tmp_path)
    assert r.returncode == 0 and "CR4.VMXE" in r.stdout and "defined in: vmxdbg/rules/vmxon.py" in r.stdout
    r = run(installed, "decode", "msr", "0x480", "0x00da040000000004", cwd=tmp_path)
    assert r.returncode == 0 and "revision" in r.stdout, r.stderr


def test_docs_are_generated_from_a_checkout_only(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    r = subprocess.run([sys.executable, "-m", "vmxdbg.rules.docs"], capture_output=True, text=True, cwd=tmp_path,
                       env=env)
    assert r.returncode == 2 and "source checkout" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.bochs
@pytest.mark.skipif(not (shutil.which("bochs-bin") and shutil.which("nasm")),
                    reason="bochs-bin and nasm not installed (Debian: apt-get install bochs bochsbios vgabios nasm)")
def test_trace_boots_the_bundled_test_hypervisor(installed, tmp_path):
    r = run(installed, "trace", "--bochs", "--cpus", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line[:1].isdigit()]
    assert {(row[0], row[1]) for row in rows} >= {(c, i) for c in "01" for i in ("vmxon", "vmlaunch")}
