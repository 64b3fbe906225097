"""The saved booted KVM machine (vmxdbg.hypervisors.linux_kvm.booted) and how a run chooses between it and a
cold boot (demo.boot), without Bochs: Bochs' save is stood in for by a process that writes a folder
the way BochsProcess.save_state leaves it, and the machine by a backend that reports a magic stop."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional

import pytest

from vmxdbg.backends.bochs_process import BochsMachine
from vmxdbg.common.errors import VmxdbgError
from vmxdbg.hypervisors.linux_kvm import booted, demo

SECTIONS = {".text": 0xFFFFFFFFC031F000, ".noinstr.text": 0xFFFFFFFFC0351110}


class FakeSave:
    """A Bochs process whose save writes the files a Bochs state folder holds (config first)."""

    def __init__(self, fail_after: Optional[int] = None) -> None:
        self.fail_after = fail_after
        self.saved: List[Path] = []
        self.killed = False

    def save_state(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.saved.append(folder)
        for k, (name, data) in enumerate([("config", b"megs: 512\n"), ("cpu0", b"c0" * 100), ("cpu1", b"c1" * 100),
                                          ("memory.ram", b"\0" * 4096)]):
            if self.fail_after is not None and k == self.fail_after:
                raise VmxdbgError("Bochs did not write its state (stand-in)")
            (folder / name).write_bytes(data)

    def kill(self) -> None:
        self.killed = True


def _saved(tmp_path: Path, key: str = "k1", cpus: int = 2) -> Path:
    folder = booted.state_dir(tmp_path, cpus, key)
    booted.save(FakeSave(), folder, key, cpus, {"kvm_intel": SECTIONS}, log=lambda line: None)
    return folder


def test_a_saved_machine_is_read_back_with_its_sections(tmp_path):
    folder = _saved(tmp_path)
    assert folder.name == "state-2cpu-k1"
    assert booted.check(folder, "k1", 2, "kvm_intel") == SECTIONS
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]       # no temporary folder left


@pytest.mark.parametrize("damage, says", [
    (lambda f: (f / booted.MANIFEST).unlink(), "no vmxdbg-state.json (the save did not finish)"),
    (lambda f: (f / booted.MANIFEST).write_text("{"), "vmxdbg-state.json is unreadable"),
    (lambda f: (f / "memory.ram").unlink(), "memory.ram is missing"),
    (lambda f: (f / "memory.ram").write_bytes(b"\0" * 100), "memory.ram has 100 bytes, the save wrote 4096"),
    (lambda f: (f / "cpu1").write_bytes(b"c2" * 100), "cpu1 has changed since it was saved"),
])
def test_a_partial_or_damaged_saved_machine_is_one_line_naming_the_folder(tmp_path, damage, says):
    folder = _saved(tmp_path)
    damage(folder)
    with pytest.raises(booted.BadState) as exc:
        booted.check(folder, "k1", 2, "kvm_intel")
    assert says in str(exc.value) and str(folder) in str(exc.value) and "\n" not in str(exc.value)
    said: List[str] = []
    assert booted.find(tmp_path, "k1", 2, "kvm_intel", log=said.append) is None     # discarded, saying why
    assert not folder.exists() and len(said) == 1 and says in said[0]


def test_a_saved_machine_is_not_used_for_another_processor_count_or_key(tmp_path):
    folder = _saved(tmp_path, "k1", 2)
    with pytest.raises(booted.BadState, match="not key k1 and 3"):
        booted.check(folder, "k1", 3, "kvm_intel")
    with pytest.raises(booted.BadState, match="not key k2 and 2"):
        booted.check(folder, "k2", 2, "kvm_intel")
    assert booted.find(tmp_path, "k1", 3, "kvm_intel") is None       # another folder: state-3cpu-k1
    assert folder.exists()


def test_the_key_follows_the_image_the_bochsrc_and_the_bochs_binary_not_the_session_paths(tmp_path):
    bochs = tmp_path / "bochs-bin"
    bochs.write_bytes(b"bochs 2.7")
    m = BochsMachine(floppy="", cdrom="/cache/boot.iso", serial="/tmp/a/serial.txt", cpus=2, megs=512)
    key = booted.state_key("img1", m, str(bochs))
    assert booted.state_key("img1", replace(m, serial="/tmp/b/serial.txt"), str(bochs)) == key
    others = [booted.state_key("img2", m, str(bochs)), booted.state_key("img1", replace(m, cpus=3), str(bochs)),
              booted.state_key("img1", replace(m, megs=256), str(bochs)),
              booted.state_key("img1", replace(m, ips=4_000_000), str(bochs))]
    bochs.write_bytes(b"bochs 2.8")
    others.append(booted.state_key("img1", m, str(bochs)))
    assert len({key, *others}) == 6


def test_a_save_that_fails_half_way_leaves_no_folder(tmp_path):
    folder = booted.state_dir(tmp_path, 2, "k1")
    with pytest.raises(VmxdbgError, match="stand-in"):
        booted.save(FakeSave(fail_after=2), folder, "k1", 2, {"kvm_intel": SECTIONS}, log=lambda line: None)
    assert list(tmp_path.iterdir()) == []


def test_leftover_temporary_folders_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f".state-2cpu-k1.tmp-{dead.pid}"
    mine = tmp_path / f".state-2cpu-k1.tmp-{os.getppid()}"     # a live process: still saving
    gone.mkdir()
    mine.mkdir()
    assert booted.clean_leftovers(tmp_path) == [gone]
    assert mine.exists() and not gone.exists()


# ------------------------------------------------------------------ demo.boot's choice

class FakeBackend:
    def __init__(self, machine: BochsMachine, runs: bool = True) -> None:
        self.machine, self.runs, self.closed = machine, runs, False
        self.proc = FakeSave()

    def go(self, timeout: float):
        if not self.runs:
            return SimpleNamespace(kind="timeout", cpu=None, detail="no stop (stand-in)")
        return SimpleNamespace(kind="magic", cpu=1, detail="")

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A cached image folder and a Bochs stand-in: every machine started is in `started`."""
    (tmp_path / "img").mkdir()
    image = SimpleNamespace(iso=tmp_path / "img" / "boot.iso", key="img1", traced_module="kvm_intel")
    started: List[BochsMachine] = []
    restores_run = {"ok": True}

    def open_(image, serial, cpus, restore=None):
        m = demo.machine(image.iso, serial, cpus, restore)
        started.append(m)   # type: ignore[arg-type]
        if not restore:
            Path(serial).write_text("vmxdbg-section kvm_intel .text 0xffffffffc031f000\n"
                                    "vmxdbg-section kvm_intel .noinstr.text 0xffffffffc0351110\n")
        return FakeBackend(m, runs=restores_run["ok"] if restore else True)   # type: ignore[arg-type]
    monkeypatch.setattr(demo, "_open", open_)
    monkeypatch.setattr("vmxdbg.backends.bochs_process.find_bochs", lambda: sys.executable)
    work = tmp_path / "work"
    work.mkdir()
    return SimpleNamespace(image=image, started=started, work=work, restores_run=restores_run,
                           boot=lambda cpus=2, cold=False, log=lambda line: None: demo.boot(
                               image, work, cpus, cold=cold, boot_timeout=5, log=log))


def test_first_run_boots_cold_and_saves_later_runs_restore(world):
    backend, cpu, sections = world.boot()
    assert [bool(m.restore) for m in world.started] == [False, True]     # cold boot (saved), then the restore
    assert cpu == 1 and sections == SECTIONS and backend.machine.restore
    saved = Path(world.started[1].restore)
    assert saved.parent == world.image.iso.parent and saved.name.startswith("state-2cpu-")
    world.boot()
    assert [bool(m.restore) for m in world.started] == [False, True, True]     # no boot from the CD again


def test_another_processor_count_does_not_reuse_the_saved_machine(world):
    world.boot(cpus=2)
    world.boot(cpus=3)
    assert [(m.cpus, bool(m.restore)) for m in world.started] == [(2, False), (2, True), (3, False), (3, True)]
    assert world.started[1].restore != world.started[3].restore


def test_cold_boot_never_reads_or_writes_a_saved_machine(world):
    backend, cpu, sections = world.boot(cold=True)
    assert [bool(m.restore) for m in world.started] == [False] and sections == SECTIONS
    assert not list(world.image.iso.parent.iterdir())


def test_a_saved_machine_that_does_not_run_is_removed_and_saved_again_once(world):
    world.boot()
    world.restores_run["ok"] = False
    said: List[str] = []
    with pytest.raises(VmxdbgError, match="does not run when restored .*--cold-boot") as exc:
        world.boot(log=said.append)
    # the old one failed: removed and booted cold to save it again; the new one failed too: a clear error
    assert [bool(m.restore) for m in world.started] == [False, True, True, False, True]
    assert any("booting cold to save it again" in line for line in said)
    assert "\n" not in str(exc.value)
    assert not [p for p in world.image.iso.parent.iterdir() if p.name.startswith("state-")]


def test_a_damaged_saved_machine_is_saved_again(world):
    world.boot()
    folder = Path(world.started[1].restore)
    (folder / "memory.ram").write_bytes(b"x")
    said: List[str] = []
    world.boot(log=said.append)
    assert [bool(m.restore) for m in world.started] == [False, True, False, True]
    assert any("memory.ram has 1 bytes" in line for line in said)
    assert json.loads((folder / booted.MANIFEST).read_text())["files"]["memory.ram"]["size"] == 4096


@pytest.mark.parametrize("args, says", [
    (["--replay", "recordings/kvm/healthy-2cpu.vmxrec.jsonl", "--cold-boot"], "--cold-boot does not go with --replay"),
    (["--bochs", "--cold-boot"], "--cold-boot is for --hypervisor linux-kvm"),
])
def test_cold_boot_option_outside_a_live_kvm_run_is_bad_input(args, says, capsys, monkeypatch):
    from vmxdbg.cli import main
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    assert main(["trace", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_cold_boot_option_reaches_the_kvm_run(monkeypatch, capsys):
    from vmxdbg.cli import main
    seen: Dict[str, object] = {}

    def fake_trace(**kw):
        seen.update(kw)
        return []
    monkeypatch.setattr(demo, "kvm_trace", fake_trace)
    main(["trace", "--bochs", "--hypervisor", "linux-kvm", "--cold-boot"])
    assert seen["cold"] is True
    main(["trace", "--bochs", "--hypervisor", "linux-kvm"])
    assert seen["cold"] is False


def test_the_console_text_leaves_out_the_echoed_nul_bytes_of_a_restored_machine(tmp_path):
    serial = tmp_path / "serial.txt"
    serial.write_bytes(b"\0\0: 2 processors\n^@^@^@kvmtest cpu0: exit hlt\n^@\nkvmtest done\n")
    assert demo.serial_text(serial) == ": 2 processors\nkvmtest cpu0: exit hlt\n\nkvmtest done\n"
    assert demo.serial_tail(serial, 2) == "kvmtest cpu0: exit hlt | kvmtest done"


class SilentThenStop:
    """A cold boot stand-in: interrupted (timeout) `silent` times, the serial console growing while
    `grows`, then the test program's magic stop."""

    def __init__(self, serial: Path, silent: int, grows: bool) -> None:
        self.serial, self.silent, self.grows, self.calls, self.closed = serial, silent, grows, 0, False

    def go(self, timeout: float):
        self.calls += 1
        if self.calls <= self.silent:
            if self.grows:
                with open(self.serial, "a") as f:
                    f.write(f"line {self.calls}\n")
            return SimpleNamespace(kind="timeout", cpu=None, detail="interrupted (stand-in)")
        return SimpleNamespace(kind="magic", cpu=0, detail="")

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fast_clock(monkeypatch):
    """Each look at the clock is 10 s after the last (the watchdog's seconds without real waiting)."""
    now = {"t": 0.0}

    def tick() -> float:
        now["t"] += 10.0
        return now["t"]
    monkeypatch.setattr(demo.time, "monotonic", tick)


def test_a_cold_boot_whose_console_keeps_moving_is_waited_for(tmp_path, fast_clock):
    serial = tmp_path / "serial.txt"
    backend = SilentThenStop(serial, silent=100, grows=True)       # 100 interrupts, ~1000 s, never silent
    assert demo._to_ready(backend, serial, 5000, "Linux", stall=60) == 0


def test_a_cold_boot_whose_console_stops_is_said_stalled(tmp_path, fast_clock):
    serial = tmp_path / "serial.txt"
    serial.write_text("[    2.1] serial8250: ttyS0 at I/O 0x3f8\n")
    backend = SilentThenStop(serial, silent=10 ** 6, grows=False)
    with pytest.raises(demo.BootStalled, match="nothing new for .* s; serial console: .*ttyS0") as exc:
        demo._to_ready(backend, serial, 5000, "Linux", stall=60)
    assert backend.calls < 20 and "\n" not in str(exc.value)     # long before the 5000 s timeout


def test_a_stalled_cold_boot_is_started_once_more(tmp_path, monkeypatch):
    attempts: List[int] = []

    def once(image, serial, cpus, boot_timeout):
        attempts.append(1)
        if len(attempts) == 1:
            raise demo.BootStalled("Linux stopped booting (stand-in)")
        return "backend", 0, SECTIONS
    monkeypatch.setattr(demo, "_cold_boot_once", once)
    said: List[str] = []
    assert demo.cold_boot(None, tmp_path / "s.txt", 2, 100, said.append) == ("backend", 0, SECTIONS)
    assert len(attempts) == 2 and said == ["Linux stopped booting (stand-in); booting once more"]
    attempts.clear()
    monkeypatch.setattr(demo, "_cold_boot_once", lambda *a: (_ for _ in ()).throw(demo.BootStalled("again")))
    with pytest.raises(demo.BootStalled):
        demo.cold_boot(None, tmp_path / "s.txt", 2, 100)
