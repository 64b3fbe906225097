"""The booted KVM machine, saved once and restored for every later run.

Booting the image cold takes minutes under Bochs, most of it the kernel
decompressing itself. So the first run boots cold to the test program's magic
stop (kvm_intel loaded, KVM's first VMXON not run yet), reads the module's
section addresses from the serial console, and saves the whole machine with
Bochs' own save (vmxdbg.backends.bochs_process.BochsProcess.save_state) in a
folder next to the image; later runs start Bochs from that folder
(`BochsMachine(restore=...)`) and are at the test program's next stop at once.

A saved machine is only reused for the same machine: its folder name carries a
key over the image, the bochsrc vmxdbg writes for it (processor count, model,
memory, ips, ...; the per-session log and serial paths left out), and the
Bochs binary and ROM images. The folder is written under a temporary name and
renamed when complete; its manifest (`vmxdbg-state.json`, written last) names
every file with its size and SHA-256, so a partial or damaged folder is found
before Bochs reads it (`check` says what is wrong) and is built again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

from ...common.errors import VmxdbgError

MANIFEST = "vmxdbg-state.json"
FORMAT = 1
#: a saved Bochs state without these files is not one (Bochs writes `config` first, RAM whole)
REQUIRED = ("config", "memory.ram", "cpu0")


class BadState(VmxdbgError):
    """A saved machine that cannot be used (partial, damaged, for another machine); the message says why."""


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def state_key(image_key: str, machine: object, bochs: str) -> str:
    """The key of a saved machine: the image, the bochsrc (without the per-session paths), the
    Bochs binary and its ROM images. Anything that changes what Bochs restores changes it."""
    from ...backends.bochs_process import machine_rc
    template = replace(machine, serial="SERIAL" if machine.serial else "", restore="")  # type: ignore[type-var]
    h = hashlib.sha256(f"booted-state-{FORMAT}\0{image_key}\0".encode())
    h.update(machine_rc(template, "LOG").encode())   # type: ignore[arg-type]
    bxshare = Path(machine.bxshare)                  # type: ignore[attr-defined]
    for p in (Path(bochs), bxshare / "BIOS-bochs-latest", bxshare / "VGABIOS-lgpl-latest"):
        try:
            h.update(p.name.encode() + b"\0" + _digest(p).encode())
        except OSError:
            h.update(p.name.encode() + b"\0missing")
    return h.hexdigest()[:16]


def state_dir(image_dir: Path, cpus: int, key: str) -> Path:
    """Where the machine booted with `cpus` processors is saved, next to its image."""
    return image_dir / f"state-{cpus}cpu-{key}"


def check(folder: Path, key: str, cpus: int, traced_module: str) -> Dict[str, int]:
    """The traced module's section addresses saved with the machine in `folder`; BadState (one
    line naming the folder and what is wrong) when it is not a complete save of this machine."""
    where = f"saved machine {folder}"
    try:
        meta = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise BadState(f"{where}: no {MANIFEST} (the save did not finish)") from None
    except (OSError, ValueError) as exc:
        raise BadState(f"{where}: {MANIFEST} is unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadState(f"{where}: {MANIFEST} is not format {FORMAT}")
    if meta.get("key") != key or meta.get("cpus") != cpus:
        raise BadState(f"{where}: saved for key {meta.get('key')} and {meta.get('cpus')} processors, "
                       f"not key {key} and {cpus}")
    files, sections = meta.get("files"), meta.get("sections", {}).get(traced_module)
    if not isinstance(files, dict) or not all(n in files for n in REQUIRED):
        raise BadState(f"{where}: {MANIFEST} lists no complete Bochs state")
    if not isinstance(sections, dict) or not sections or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in sections.values()):
        raise BadState(f"{where}: {MANIFEST} has no section addresses of {traced_module}")
    for name, entry in sorted(files.items()):
        path = folder / name
        if not isinstance(entry, dict) or Path(name).name != name:
            raise BadState(f"{where}: {MANIFEST}: bad entry for {name!r}")
        try:
            size = path.stat().st_size
        except OSError:
            raise BadState(f"{where}: {name} is missing") from None
        if size != entry.get("size"):
            raise BadState(f"{where}: {name} has {size} bytes, the save wrote {entry.get('size')}")
        if _digest(path) != entry.get("sha256"):
            raise BadState(f"{where}: {name} has changed since it was saved (SHA-256 differs)")
    return {str(k): int(v) for k, v in sections.items()}


def save(proc: object, folder: Path, key: str, cpus: int, sections: Dict[str, Dict[str, int]],
         log=print) -> None:
    """Save the machine `proc` (a BochsProcess stopped at a prompt) as `folder`, atomically: into a
    temporary folder beside it, the manifest last, then renamed. A folder another run completed
    first is kept. `proc` is left in Bochs' dialog after the save: kill it after."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    clean_leftovers(folder.parent)
    try:
        proc.save_state(tmp)  # type: ignore[attr-defined]
        names = sorted(f.name for f in tmp.iterdir())
        missing = [n for n in REQUIRED if n not in names]
        if missing:
            raise VmxdbgError(f"Bochs' save in {tmp} lacks {', '.join(missing)}")
        files = {n: {"size": (tmp / n).stat().st_size, "sha256": _digest(tmp / n)} for n in names}
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "key": key, "cpus": cpus,
                                                "sections": sections, "files": files}, indent=1) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / MANIFEST).exists():     # not a complete folder of another run: ours replaces it
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(tmp, folder)
        log(f"saved the booted machine in {folder}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clean_leftovers(image_dir: Path) -> List[Path]:
    """Remove temporary save folders whose process is gone (a run killed while saving)."""
    removed = []
    for d in image_dir.glob(".state-*.tmp-*") if image_dir.is_dir() else []:
        try:
            pid = int(d.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def discard(folder: Path) -> None:
    """Remove a saved machine that cannot be used (renamed away first, so no run sees half of it)."""
    if not folder.exists():
        return
    gone = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(gone, ignore_errors=True)
    try:
        os.replace(folder, gone)
    except OSError:
        gone = folder
    shutil.rmtree(gone, ignore_errors=True)


def find(image_dir: Path, key: str, cpus: int, traced_module: str,
         log=print) -> Optional[Dict[str, int]]:
    """The sections of the usable saved machine for this key, or None (a bad one is discarded, saying why)."""
    folder = state_dir(image_dir, cpus, key)
    if not folder.exists():
        return None
    try:
        return check(folder, key, cpus, traced_module)
    except BadState as exc:
        log(f"{exc}: removing it; the machine is booted cold and saved again")
        discard(folder)
        return None


__all__ = ["BadState", "state_key", "state_dir", "check", "save", "find", "discard", "clean_leftovers"]
