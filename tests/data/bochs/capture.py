"""Re-capture the real Bochs 2.7 debugger output the parser tests read.

    PYTHONPATH=. python tests/data/bochs/capture.py     (needs bochs-bin, nasm)

Boots minihv (2 processors, planned stops on both, cpu1 with a wrong VMXON
revision id) and saves the answer to each command verbatim in NAME.txt.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent.parent))
from vmxdbg.hypervisors.minihv import build, knobs  # noqa: E402

from vmxdbg.backends.bochs_process import BochsMachine, BochsProcess  # noqa: E402


def main() -> None:
    out = tempfile.mkdtemp(prefix="minihv-capture-")
    config = knobs.Config(cores={0: knobs.CoreKnobs(stops=True),
                                 1: knobs.CoreKnobs(stops=True, wrong_revision=True)}, expect_cpus=2)
    image = build.build(out, config)
    sym = build.symbols(out)
    p = BochsProcess(BochsMachine(floppy=str(image), cpus=2))

    def save(name: str, text: str) -> None:
        (HERE / f"{name}.txt").write_text(text)

    def cmd(name: str, command: str) -> str:
        text = p.command(command)
        save(name, text)
        return text

    save("startup", p.banner)
    save("c_magic_cfg_stop", p.run("c", 20)[0])                  # cpu0 at cfg_stop, cpu1 halted in the BIOS
    cmd("r_cpu0_long64", "r")
    cmd("creg_cpu0_long64", "creg")
    cmd("dreg_cpu0", "dreg")
    cmd("sreg_cpu0_long64", "sreg")
    for group in ("CS", "TR", "LDTR", "GDTR", "MSR", "activity_state"):
        cmd(f"show_cpu0_{group}", f'show "cpu0.{group}"')
    cmd("show_cpu0_VMX_off", 'show "cpu0.VMX"')
    cmd("u_cpu0_at_vmxon", f"u /4 {sym['at_vmxon']:#x}")
    p.command("set $cpu = 1")
    cmd("r_cpu1_real_halted", "r")
    cmd("show_cpu1_activity_state_halted", 'show "cpu1.activity_state"')
    cmd("u_cpu1_real_mode_at_vmxon", f"u /4 {sym['at_vmxon']:#x}")
    cmd("set_cpu_invalid", "set $cpu = 7")
    cmd("set_rcx_not_long_mode", "set rcx = 0x3a")
    cmd("xp_bytes", f"xp /24bx {sym['config_block']:#x}")
    cmd("xp_giant", f"xp /4gx {sym['config_block']:#x}")
    cmd("page_mapped", f"page {sym['at_vmxon']:#x}")
    cmd("setpmem_out_of_bounds", "setpmem 0xfffffff000 1 0x0")
    cmd("lb_answer", f"lb {sym['vm_exit_handler']:#x}")
    cmd("pb_answer", f"pb {sym['guest_entry']:#x}")
    cmd("blist_two", "blist")
    save("c_magic_cpu1_stop_vmxon_with_e9", p.run("c", 20)[0])      # cpu1 at stop_vmxon (E9 lines before)
    p.command("set $cpu = 1")
    cmd("page_unmapped", "page 0x7f0000000000")
    cmd("s_cpu1_vmxon_failinvalid", "s 1 1")
    cmd("r_cpu1_after_vmxon_fail", "r")
    save("log_vmx_lines", "\n".join(x for x in p.read_log() if "e[CPU" in x or "VM" in x) + "\n")
    seen = set()
    for _ in range(12):
        text, interrupted = p.run("c", 3.0)
        if interrupted:
            save("c_interrupted_sigint", text)
            break
        kind = ("breakpoint" if ") Breakpoint" in text else "vmexit" if "Caught" in text
                else "magic" if "Magic breakpoint" in text else "other")
        if kind in seen:
            continue
        seen.add(kind)
        save(f"c_stop_{kind}", text)
        if kind == "breakpoint":
            p.command("set $cpu = 0")
            cmd("show_cpu0_VMX_guest", 'show "cpu0.VMX"')
            cmd("vmexitbp_answer", "vmexitbp")
        if kind == "vmexit":
            cmd("show_cpu0_VMX_root_after_exit", 'show "cpu0.VMX"')
            cmd("s_cpu0_one", "s 0 1")
            cmd("d_answer", "d 1")
            cmd("blist_one", "blist")
            cmd("vmexitbp_off_answer", "vmexitbp")
    p.quit()
    print(f"saved to {HERE}")


if __name__ == "__main__":
    main()
