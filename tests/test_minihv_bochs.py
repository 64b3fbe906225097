"""minihv boots in Bochs and each processor reports every VMX step on port 0xE9.

Plain Bochs, no vmxdbg backend: `bochs-bin -q -f bochsrc` with the debugger's
`c` on stdin; minihv writes "Shutdown" to port 0x8900 at the end (CF_SHUTDOWN)
so Bochs exits by itself.  Bochs is killed if it has not ended after TIMEOUT.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest

from vmxdbg.hypervisors.minihv import build as minihv_build  # noqa: E402
from vmxdbg.hypervisors.minihv.knobs import Config, CoreKnobs  # noqa: E402

BOCHS = shutil.which("bochs-bin")
NASM = shutil.which("nasm")
TIMEOUT = 60
E9_LINE = re.compile(r"\[(cpu\d+|all)\] (.*)")

pytestmark = [
    pytest.mark.bochs,
    pytest.mark.skipif(not BOCHS, reason="bochs-bin not installed (Debian: apt-get install bochs bochsbios vgabios)"),
    pytest.mark.skipif(not NASM, reason="nasm not installed (Debian: apt-get install nasm)"),
]

HEALTHY = ["vmxon ok", "vmclear ok", "vmptrld ok", "vmcs written", "guest running", "vmlaunch ok",
           "exit reason=0x12 ", "vmxoff ok", "done"]
MSRS = {0x3A} | set(range(0x480, 0x494))


def run_minihv(tmp_path: Path, cpus: int, cores: Dict[int, CoreKnobs]) -> Tuple[Dict[str, List[str]], str]:
    """Boot minihv; return its E9 lines by "cpuN"/"all" and the Bochs log text."""
    config = Config(cores=cores, shutdown=True, expect_cpus=cpus)
    image = minihv_build.build(tmp_path, config)
    log = tmp_path / "bochs.log"
    rc = tmp_path / "bochsrc"
    rc.write_text(minihv_build.bochsrc(image, cpus, log=log))
    proc = subprocess.Popen([BOCHS, "-q", "-f", str(rc)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        out, _ = proc.communicate(b"c\n", timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"Bochs did not end within {TIMEOUT} s; output ends: {out[-500:]!r}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines: Dict[str, List[str]] = {}
    for raw in out.decode("latin-1").splitlines():
        m = E9_LINE.search(raw)
        if m:
            lines.setdefault(m.group(1), []).append(m.group(2))
    return lines, log.read_text(errors="replace") if log.exists() else ""


def assert_in_order(lines: Sequence[str], expected: Sequence[str], who: str) -> None:
    """Each expected prefix appears, in this order, among `lines`."""
    i = 0
    for want in expected:
        while i < len(lines) and not lines[i].startswith(want):
            i += 1
        assert i < len(lines), f"{who}: no {want!r} (in order) in {lines}"
        i += 1


def msrs_reported(lines: Sequence[str]) -> Dict[int, str]:
    """{msr: raw value or 'fault ...'} from the "msr 0x480=0x..." lines."""
    out = {}
    for line in lines:
        m = re.match(r"msr (0x[0-9a-f]+)(?:=(0x[0-9a-f]{16})| (fault .*))$", line)
        if m:
            out[int(m.group(1), 16)] = m.group(2) or m.group(3)
    return out


def test_two_cores_healthy(tmp_path: Path) -> None:
    lines, _ = run_minihv(tmp_path, 2, {})
    assert lines.get("all") == ["done cpus=2"], lines.get("all")
    for cpu in ("cpu0", "cpu1"):
        assert_in_order(lines[cpu], HEALTHY, cpu)
        assert lines[cpu][-1] == "done", lines[cpu]
        msrs = msrs_reported(lines[cpu])
        assert set(msrs) == MSRS, sorted(MSRS - set(msrs))
        assert int(msrs[0x480], 16) & 0x7FFFFFFF == 0x2B      # Bochs' VMCS revision id
        assert msrs[0x3A] == "0x0000000000000005"               # locked by the BIOS, VMXON outside SMX


def test_wrong_revision_on_cpu1_only(tmp_path: Path) -> None:
    lines, log = run_minihv(tmp_path, 2, {1: CoreKnobs(wrong_revision=True)})
    assert_in_order(lines["cpu0"], HEALTHY, "cpu0")
    cpu1 = lines["cpu1"]
    assert_in_order(cpu1, ["vmxon region=0x110000 ptr=0x110000 dword0=0x2a ", "vmxon fail CF=1 ZF=0", "done"],
                    "cpu1")
    assert not [x for x in cpu1 if x.startswith(("vmclear", "vmlaunch", "vmxoff"))], cpu1
    # Bochs' own log (the second oracle) blames cpu1's VMXON revision id, and only cpu1
    blamed = [x for x in log.splitlines() if "VMXON" in x and "revision" in x]
    assert blamed and all("[CPU1" in x for x in blamed), blamed


def test_each_pointer_knob_breaks_its_core(tmp_path: Path) -> None:
    lines, _ = run_minihv(tmp_path, 4, {1: CoreKnobs(misaligned=True), 2: CoreKnobs(too_wide=True),
                                        3: CoreKnobs(bit31=True)})
    assert_in_order(lines["cpu0"], HEALTHY, "cpu0")
    assert_in_order(lines["cpu1"], ["vmxon region=0x110000 ptr=0x110080 ", "vmxon fail CF=1 ZF=0", "done"], "cpu1")
    assert_in_order(lines["cpu2"], ["vmxon region=0x120000 ptr=0x10000120000 ", "vmxon fail CF=1 ZF=0", "done"],
                    "cpu2")
    assert_in_order(lines["cpu3"], ["vmxon region=0x130000 ptr=0x130000 dword0=0x8000002b ",
                                    "vmxon fail CF=1 ZF=0", "done"], "cpu3")


def test_vmxe_share_override_knobs(tmp_path: Path) -> None:
    lines, log = run_minihv(tmp_path, 4, {
        1: CoreKnobs(vmxe_clear=True),
        2: CoreKnobs(share_vmxon=True, share_with=0, vmcs_wrong_revision=True),
        3: CoreKnobs(overrides=((0x2800, 0),))})
    assert_in_order(lines["cpu0"], HEALTHY, "cpu0")
    assert_in_order(lines["cpu1"], ["cr0=", "vmxon fault #UD", "done"], "cpu1")
    assert [x for x in lines["cpu1"] if x.startswith("cr0=")][0].endswith("vmxe=0")
    assert_in_order(lines["cpu2"], ["vmxon region=0x100000 ", "vmxon ok", "vmcs region=0x121000 dword0=0x2a",
                                    "vmclear ok", "vmptrld fail CF=1 ZF=0", "vmxoff ok", "done"], "cpu2")
    assert_in_order(lines["cpu3"], ["override 0x2800=0x0 ok", "exit reason=0x80000021 qual=0x4 ", "vmxoff ok",
                                    "done"], "cpu3")
    assert "vmlaunch ok" not in lines["cpu3"]
    assert any("[CPU3" in x and "VMCS link pointer" in x for x in log.splitlines())


def test_guest_modes_enter_and_exit_with_vmcall(tmp_path: Path) -> None:
    """guest=real / unrestricted-pm / v86: VM entry succeeds and the guest's VMCALL exits (reason 0x12)."""
    modes = {1: "real", 2: "unrestricted-pm", 3: "v86"}
    lines, _ = run_minihv(tmp_path, 4, {cpu: CoreKnobs(guest=mode) for cpu, mode in modes.items()})
    assert_in_order(lines["cpu0"], HEALTHY, "cpu0")
    for cpu in modes:
        who = f"cpu{cpu}"
        mode_line = [x for x in lines[who] if x.startswith("guest mode")]
        assert mode_line and "secondary=0x82 " in mode_line[0] and mode_line[0].endswith("eptp=0x1801e"), lines[who]
        assert_in_order(lines[who], ["vmptrld ok", "guest mode", "vmcs written", "vmlaunch ok",
                                     "exit reason=0x12 ", "vmxoff ok", "done"], who)
        assert "guest running" not in lines[who]         # the 64-bit guest did not run
