"""The KVM-under-Bochs machinery that needs neither Bochs nor a kernel: finding VMX instructions in
a relocatable ELF object, the knobs injected through the debugger, the image's pieces."""
from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from vmxdbg.hypervisors.linux_kvm import image as kvm_image
from vmxdbg.trace.elfcode import module_vmx_sites
from vmxdbg.common.errors import InputError
from vmxdbg.trace.faults import injector, parse_knobs
from vmxdbg.trace.stepper import find_vmx_instructions

ASM = """
    .text
    .globl enable
    .type enable, @function
enable:
    push %rbp
    vmxon 8(%rsp)
    pop %rbp
    ret
    .size enable, .-enable
    .byte 0xf3, 0x0f, 0xc7, 0x74    # data between functions: no function symbol covers it
    .globl run
    .type run, @function
run:
    vmptrld (%rdi)
    vmlaunch
    vmresume
    ret
    .size run, .-run
    .section .noinstr.text, "ax"
    .type clear, @function
clear:
    vmclear (%rax)
    ret
    .size clear, .-clear
"""


@pytest.fixture(scope="module")
def object_file(tmp_path_factory) -> bytes:
    if shutil.which("as") is None:
        pytest.skip("needs the GNU assembler (binutils; scripts/setup.sh installs gcc as root)")
    d = tmp_path_factory.mktemp("elf")
    (d / "m.s").write_text(ASM)
    subprocess.run(["as", "--64", "-o", str(d / "m.o"), str(d / "m.s")], check=True)
    return (d / "m.o").read_bytes()


def test_module_sites_are_found_per_function_with_their_section_offsets(object_file):
    sites = module_vmx_sites(object_file, "m.o")
    got = [(s.section, s.instruction, s.function, s.length) for s in sites]
    assert got == [(".noinstr.text", "vmclear", "clear", 4),
                   (".text", "vmxon", "enable", 6),
                   (".text", "vmptrld", "run", 3), (".text", "vmlaunch", "run", 3),
                   (".text", "vmresume", "run", 3)]
    vmxon = sites[1]
    text = _section_bytes(object_file, ".text")
    assert text[vmxon.offset:vmxon.offset + 6] == bytes.fromhex("f30fc7742408")
    # the stray bytes between the functions are not decoded as an instruction
    assert [s.offset for s in sites if s.section == ".text"][1] > vmxon.offset + 6 + 4
    assert [s.section for s in module_vmx_sites(object_file, "m.o", sections=[".text"])] == [".text"] * 4


def _section_bytes(data: bytes, name: str) -> bytes:
    import struct
    shoff, = struct.unpack_from("<Q", data, 0x28)
    _, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    hdr = [struct.unpack_from("<IIQQQQ", data, shoff + i * 64) for i in range(shnum)]
    strtab = hdr[shstrndx][4]
    for n, _t, _f, _a, off, size in hdr:
        if data[strtab + n:data.index(b"\0", strtab + n)].decode() == name:
            return data[off:off + size]
    raise KeyError(name)


def test_not_an_elf_object_is_one_clear_error(object_file):
    with pytest.raises(InputError, match="not an ELF file"):
        module_vmx_sites(b"MZ" + b"\0" * 100, "driver.sys")
    with pytest.raises(InputError, match="section header table"):
        module_vmx_sites(object_file[:200], "cut.o")


class FakeTarget:
    """Answers what the knobs read and keeps what they write (the calls are what a recording holds)."""

    def __init__(self) -> None:
        self.regs = {"cr4": 0x3626f0, "rsp": 0x1000}
        self.memory = {0x1008: (0x5000).to_bytes(8, "little"), 0x5000: (0x4).to_bytes(4, "little")}
        self.vmcs = {0x4000: 0x16, 0x6820: 0x2, 0x680E: 0}
        # IA32_VMX_BASIC with bit 55; TRUE pin-based: allowed-1 bits 0-7 except 5 (bits 5 and 8+ must be 0)
        self.msrs = {0x480: 1 << 55 | 4, 0x48D: 0xDF << 32 | 0x16}
        self.writes: List[Tuple[str, int, int]] = []

    def read_register(self, cpu: int, name: str) -> int:
        return self.regs[name]

    def read_virtual(self, cpu: int, address: int, size: int) -> bytes:
        return self.memory[address][:size]

    def read_physical(self, address: int, size: int) -> bytes:
        return self.memory[address][:size]

    def read_msr(self, cpu: int, index: int) -> int:
        return self.msrs[index]

    def read_vmcs(self, cpu: int, encoding: int) -> int:
        return self.vmcs[encoding]

    def write_cr4(self, cpu: int, value: int) -> None:
        self.writes.append(("cr4", cpu, value))

    def write_physical(self, address: int, data: bytes) -> None:
        self.writes.append(("mem", address, int.from_bytes(data, "little")))

    def write_vmcs(self, cpu: int, encoding: int, value: int) -> None:
        self.writes.append(("vmcs", encoding, value))


def _site(code: str, address: int = 0x100):
    return find_vmx_instructions(bytes.fromhex(code), address)[0]


VMXON, VMLAUNCH = _site("f30fc7742408"), _site("0f01c2")


@pytest.mark.parametrize("knob, site, write", [
    ("vmxe_clear", VMXON, ("cr4", 1, 0x3626f0 & ~(1 << 13))),
    ("wrong_revision", VMXON, ("mem", 0x5000, 5)),
    ("pin_reserved", VMLAUNCH, ("vmcs", 0x4000, 0x16 | 1 << 5)),
    ("rflags_bit1", VMLAUNCH, ("vmcs", 0x6820, 0)),
    ("fs_base_noncanonical", VMLAUNCH, ("vmcs", 0x680E, 0x8000000000000000)),
])
def test_each_knob_writes_its_fault_once_on_its_processor_at_its_instruction(knob, site, write):
    target = FakeTarget()
    prepare = injector([f"1:{knob}"])
    other = VMLAUNCH if site is VMXON else VMXON
    prepare(target, 0, site)           # another processor: nothing
    prepare(target, 1, other)          # another instruction: nothing
    assert target.writes == []
    prepare(target, 1, site)
    prepare(target, 1, site)           # once only
    assert target.writes == [write]


def test_knob_specs_are_checked():
    assert injector([]) is None
    assert parse_knobs(["0:vmxe_clear", "3:rflags_bit1"], cpus=4) == [(0, "vmxe_clear"), (3, "rflags_bit1")]
    for bad, msg in (("vmxe_clear", "expected CPU:KNOB"), ("1:nope", "unknown knob 'nope'"),
                     ("x:vmxe_clear", "expected CPU:KNOB")):
        with pytest.raises(InputError, match=msg):
            parse_knobs([bad])
    with pytest.raises(InputError, match="names processor 2, but the machine has 2"):
        parse_knobs(["2:vmxe_clear"], cpus=2)


def test_pin_reserved_refuses_a_processor_that_allows_every_control():
    target = FakeTarget()
    target.msrs[0x48D] = 0xFFFFFFFF << 32
    with pytest.raises(InputError, match="every pin-based control may be 1"):
        injector(["0:pin_reserved"])(target, 0, VMLAUNCH)


def test_section_lines_are_read_from_the_serial_console():
    text = ("[    4.8] noise\nvmxdbg-section kvm_intel .text 0xffffffffc031f000\r\n"
            "vmxdbg-section kvm .text 0xffffffffc0100000\nvmxdbg-section kvm_intel .noinstr.text 0xffffffffc0351110\n")
    assert kvm_image.parse_sections(text, "kvm_intel") == {".text": 0xffffffffc031f000,
                                                          ".noinstr.text": 0xffffffffc0351110}
    with pytest.raises(InputError, match="not hex"):
        kvm_image.parse_sections("vmxdbg-section kvm_intel .text 0xzz\n", "kvm_intel")


def _cpio_entries(data: bytes) -> Dict[str, Tuple[int, bytes]]:
    out, at = {}, 0
    while True:
        assert data[at:at + 6] == b"070701"
        f = [int(data[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize, mode = f[11], f[6], f[1]
        name = data[at + 110:at + 110 + namesize - 1].decode()
        at = (at + 110 + namesize + 3) & ~3
        body = data[at:at + filesize]
        at = (at + filesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_initramfs_is_newc_with_init_modules_and_test_program(tmp_path):
    if not Path("/bin/busybox").exists() and not shutil.which("busybox"):
        pytest.skip("needs busybox (busybox-static; scripts/setup.sh installs it as root)")
    ko = tmp_path / "kvm-intel.ko.xz"
    import lzma
    ko.write_bytes(lzma.compress(b"\x7fELF-module"))
    spec = kvm_image.ImageSpec(kernel=tmp_path / "vmlinuz", modules=[ko], traced_module="kvm_intel")
    archive = kvm_image.build_initramfs(spec, b"\x7fELF-test")
    assert archive == kvm_image.build_initramfs(spec, b"\x7fELF-test")      # reproducible
    entries = _cpio_entries(gzip.decompress(archive))
    assert entries["lib/modules/kvm-intel.ko"][1] == b"\x7fELF-module"      # decompressed
    assert entries["kvmtest"] == (0o100755, b"\x7fELF-test")
    init = entries["init"][1].decode()
    assert "insmod /lib/modules/kvm-intel.ko" in init and "/sys/module/kvm_intel/sections/" in init
    assert init.index("insmod") < init.index("vmxdbg-section") < init.index("/kvmtest")
    assert entries["dev/console"][0] == 0o020600


def test_a_saved_state_is_restored_through_a_per_session_view_with_its_own_log_and_serial(tmp_path):
    from vmxdbg.backends.bochs_process import session_copy_of_state
    state = tmp_path / "state"
    state.mkdir()
    (state / "config").write_text("megs: 256\nlog: /tmp/old/bochs.log\n"
                                  "com1: enabled=1, mode=file, dev=/tmp/old/serial.txt\n")
    (state / "memory.ram").write_bytes(b"\0" * 16)
    view = session_copy_of_state(state, tmp_path / "view", "/tmp/new/bochs.log", "/tmp/new/serial.txt")
    assert (view / "config").read_text() == ("megs: 256\nlog: /tmp/new/bochs.log\n"
                                             "com1: enabled=1, mode=file, dev=/tmp/new/serial.txt\n")
    assert (view / "memory.ram").is_symlink() and (view / "memory.ram").resolve() == (state / "memory.ram")
    assert "/tmp/old/bochs.log" in (state / "config").read_text()     # the saved state is not changed


def test_the_save_button_is_clicked_and_the_folder_typed_on_bochs_rfb_display():
    """Against a minimal RFB 3.3 server that answers as Bochs' rfb display does (gui/rfb.cc:
    version, security type 1, ServerInit of 720x530 named Bochs-RFB) and keeps what it gets."""
    import socket
    import struct
    import threading
    from vmxdbg.backends.bochs_process import KEY_RETURN, rfb_click, rfb_connect, rfb_key, rfb_type
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    got: List[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        conn.sendall(b"RFB 003.003\n")
        conn.recv(12)
        conn.sendall(struct.pack(">I", 1))
        conn.recv(1)
        conn.sendall(struct.pack(">HH16sI", 720, 530, b"\0" * 16, 9) + b"Bochs-RFB")
        data = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        got.append(data)
        conn.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    sock = rfb_connect(server.getsockname()[1])
    rfb_click(sock, 2)
    rfb_type(sock, "/a")
    rfb_key(sock, KEY_RETURN)
    sock.close()
    t.join(5)
    server.close()
    data = got[0]
    assert data[:12] == struct.pack(">BBHH", 5, 1, 720 - 64 + 16, 16) + struct.pack(">BBHH", 5, 0, 720 - 64 + 16, 16)
    keys = [struct.unpack(">BBxxI", data[12 + 8 * i:20 + 8 * i]) for i in range((len(data) - 12) // 8)]
    assert keys == [(4, 1, ord("/")), (4, 0, ord("/")), (4, 1, ord("a")), (4, 0, ord("a")),
                    (4, 1, 0xFF0D), (4, 0, 0xFF0D)]


def test_a_knob_whose_stop_never_came_is_said():
    from vmxdbg.trace.faults import unapplied
    stops = [(0, "vmxon"), (0, "vmlaunch"), (1, "vmxon"), (1, "vmresume")]
    said = unapplied(["1:rflags_bit1", "0:fs_base_noncanonical", "1:vmxe_clear"], stops)
    assert said == ["knob 1:rflags_bit1 was not applied: processor 1 made no VMLAUNCH stop (the target did not "
                    "run it, or the debugger missed that stop)"]
    assert unapplied([], stops) == []


ENTRY_ASM = """
    .text
    .globl enter
    .type enter, @function
enter:
    test $1, %bl
    jz 1f
    vmresume
    jmp 2f
1:  vmlaunch
2:  ret
    .size enter, .-enter
    .type after_ss, @function
after_ss:
    mov %ax, %ss
    vmlaunch
    vmptrld (%rdi)
    vmresume
    ret
    .size after_ss, .-after_ss
    .type on, @function
on:
    mov %rax, %cr4
    vmxon (%rsp)
    ret
    .size on, .-on
"""


def test_the_instructions_leading_into_a_vmx_instruction_are_found(tmp_path):
    from vmxdbg.trace.elfcode import approaches
    if shutil.which("as") is None:
        pytest.skip("needs the GNU assembler (binutils; scripts/setup.sh installs gcc as root)")
    (tmp_path / "e.s").write_text(ENTRY_ASM)
    subprocess.run(["as", "--64", "-o", str(tmp_path / "e.o"), str(tmp_path / "e.s")], check=True)
    got = [(a.function, a.offset, a.instruction) for a in approaches((tmp_path / "e.o").read_bytes(), "e.o")]
    # the conditional jump leads into both entries (taken: VMLAUNCH, not taken: VMRESUME); the
    # unconditional jump before VMLAUNCH does not; MOV SS falls into a VMLAUNCH; VMPTRLD before
    # VMRESUME is a stop of its own; MOV to CR4 falls into a VMXON
    assert got == [("enter", 3, "je"), ("after_ss", 14, "mov"), ("on", 26, "mov")]
