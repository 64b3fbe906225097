"""Make recordings/snapshots/bochs-vmlaunch-cpu0.vmxsnap.json from a real Bochs run.

Boots the test hypervisor (vmxdbg/hypervisors/minihv) under Bochs on 2 processors,
runs to processor 0's VMLAUNCH (its magic stop), reads that processor's state
as a live check does (collect), adds the current VMCS page as Bochs keeps it in
memory (its own layout, revision 0x2b) and the VMXON region's page, and saves the snapshot. `vmxdbg vmcs
ADDR --source` and `vmxdbg check` can then be tried on a real VM-entry state.

    python scripts/snapshot-bochs.py [OUT]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmxdbg.backends.bochs import BochsBackend  # noqa: E402
from vmxdbg.backends.bochs_process import BochsMachine  # noqa: E402
from vmxdbg.state.collect import collect  # noqa: E402
from vmxdbg.hypervisors.minihv.demo import ASSUME, build_image, require_tools  # noqa: E402
from vmxdbg.state.snapshot import save_snapshot  # noqa: E402
from vmxdbg.state.assume import apply_assumptions  # noqa: E402


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "recordings/snapshots/bochs-vmlaunch-cpu0.vmxsnap.json"
    require_tools()
    with tempfile.TemporaryDirectory() as work:
        built = build_image(Path(work), 2, [])
        at = built["symbols"]["at_vmlaunch"]  # type: ignore[index]
        with BochsBackend(BochsMachine(floppy=str(built["image"]), cpus=2, magic_break=True)) as b:
            for _ in range(40):
                ev = b.go(timeout=30)
                if ev.kind in ("exited", "timeout"):
                    raise SystemExit(f"no VMLAUNCH stop on processor 0 ({ev.kind})")
                if ev.kind == "magic" and ev.cpu == 0 and b.read_register(0, "rip") == at:
                    break
            snap = collect(b, cpus=[0], source=f"Bochs 2.7 (corei7_skylake_x), the test hypervisor on 2 "
                                               f"processors, stopped at processor 0's VMLAUNCH (0x{at:x}); "
                                               "made by scripts/snapshot-bochs.py")
            ptr, vmxon = snap.processors[0].vmcs_pointer, snap.processors[0].vmxon_pointer
            assert ptr is not None and vmxon is not None
            snap.memory.add(ptr, b.read_physical(ptr, 4096))
            snap.memory.add(vmxon, b.read_physical(vmxon, 4096))
    apply_assumptions(snap, ASSUME)
    snap.processors[0].state.update(blocking_by_mov_ss=False, blocking_by_sti=False)
    snap.processors[0].provenance.update({"state:blocking_by_mov_ss": "the instruction before was xchg bx, bx",
                                          "state:blocking_by_sti": "the instruction before was xchg bx, bx"})
    save_snapshot(snap, out)
    print(f"wrote {out} (VMCS at 0x{ptr:x})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
