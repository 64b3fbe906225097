"""Make recordings/windbg/vmlaunch-inject-*.vmxrec.jsonl through the pykd stand-in (not a real WinDbg).

    python scripts/record-windbg-standin.py recordings/windbg/vmlaunch-inject-vmentry.vmxrec.jsonl

Runs `!vmxcheck trace --code hvdrv+0x1000 0x17 --inject --assume launch=clear
--assume blocking_by_mov_ss=0 --record FILE` (vmxdbg.bang.main)
against tests/fake_pykd: one processor of vmxdbg/examples/vmentry.vmxsnap.json, stopped at the
VMLAUNCH of a driver image the stand-in maps (tests/windbg_fixtures.py, inject_target). CPUID
and every VMCS field come from the stub vmxdbg writes into the driver's padding, which the
stand-in executes with iced-x86 against its processor. The single step of VMLAUNCH is scripted:
the entry succeeds and the processor continues at GUEST_RIP. Then writes NAME.expected.json
(`vmxdbg check NAME --format json`).
"""
from __future__ import annotations

import io
import sys
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from windbg_fixtures import DRIVER_BASE, inject_target  # noqa: E402

from vmxdbg import bang, cli  # noqa: E402

GUEST_RIP = 0x681E
# what no debugger shows, as the person running it states it: the driver ran VMCLEAR and VMPTRLD on
# this VMCS before (launch state clear), and the breakpoint's resume (IRETQ) leaves no MOV SS blocking
ASSUME = ("launch=clear", "blocking_by_mov_ss=0")


def record(path: Path) -> int:
    pk, t = inject_target(1)
    t.symbols["hvdrv+0x1000"] = DRIVER_BASE + 0x1000
    from fake_target import Stop

    def entered(target, cpu):   # VMLAUNCH succeeded: the processor runs the guest
        p = target.processors[cpu]
        p.regs["rip"] = p.vmcs[GUEST_RIP]
        p.vmx = "non-root"
    t.on_step = entered
    t.stops = [Stop(cpu=0, address=t.processors[0].regs["rip"])]
    t.processors[0].regs["rip"] = DRIVER_BASE + 0x1000 - 0x40     # running in the driver before it
    t.breakin_raises = False
    status = bang.main(["trace", "--code", "hvdrv+0x1000", "0x17", "--inject", "--timeout", "0.3"]
                       + [f"--assume={a}" for a in ASSUME] + ["--record", str(path), "--force", "--text"], pk)
    sys.stdout.write("".join(text for text, _ in t.output))
    return status


def main(argv: list) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    path = Path(argv[0])
    status = record(path)
    if not path.is_file() or status not in (0, 1):   # the session failed: write no expected report
        return 2
    out = io.StringIO()
    with redirect_stdout(out):
        cli.main(["check", str(path), "--format", "json"])
    path.with_name(path.name.replace(".vmxrec.jsonl", ".expected.json")).write_text(out.getvalue())
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
