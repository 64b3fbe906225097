"""Build (once) and cache a bootable image that runs Linux KVM under Bochs.

The image is an isolinux CD: Debian's installed kernel (linux-image-amd64),
an initramfs with busybox, the kernel modules to load (by default irqbypass,
kvm, kvm-intel, found through modules.dep) and `kvmtest` (vmxdbg/hypervisors/linux_kvm/kvm_guest.c,
built static with gcc), which stops once at Bochs' magic breakpoint and then
creates a VM and runs a tiny guest on each processor. `/init` prints, on the
serial console, every code section address of the traced module
(`/sys/module/<name>/sections/`), so the host can find the module's VMX
instructions by disassembling the `.ko` it put in the image.

The image depends only on its inputs (kernel, modules, busybox, the test
program's source, the command line): its cache key is their hash, and the
initramfs is written with fixed timestamps.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ...common.errors import InputError, VmxdbgError

HERE = Path(__file__).resolve().parent
GUEST_SOURCE = HERE / "kvm_guest.c"
#: Debian packages the image is built from (scripts/setup.sh installs them as root).
PACKAGES = ("linux-image-amd64", "busybox-static", "isolinux", "syslinux-common", "genisoimage", "gcc")
#: The kernel command line: serial console, fixed module addresses (nokaslr), and
#: every boot-time check that costs emulated seconds and tests nothing here off.
CMDLINE = ("console=ttyS0,115200 earlyprintk=serial,ttyS0,115200 nokaslr cryptomgr.notests mitigations=off "
           "tsc=reliable no_timer_check nowatchdog nmi_watchdog=0 audit=0 rdinit=/init panic=-1 "
           "8250.nr_uarts=1 quiet loglevel=4")
SECTION_TAG = "vmxdbg-section"
READY_TAG = "vmxdbg-ready"
DONE_TAG = "kvmtest done"
ISOLINUX = (Path("/usr/lib/ISOLINUX/isolinux.bin"), Path("/usr/lib/syslinux/modules/bios/ldlinux.c32"))


def cache_root() -> Path:
    """Where built images live: $VMXDBG_CACHE, else $XDG_CACHE_HOME/vmxdbg, else ~/.cache/vmxdbg."""
    env = os.environ.get("VMXDBG_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmxdbg"


@dataclass
class ImageSpec:
    """What goes into the image. `modules`: .ko files loaded in order (the last is traced)."""

    kernel: Path
    modules: List[Path]
    traced_module: str                 # its name under /sys/module (kvm_intel)
    cmdline: str = CMDLINE
    extra_files: Dict[str, Path] = field(default_factory=dict)   # path in the initramfs -> host file


@dataclass
class Image:
    """A built image: the ISO and the uncompressed traced module it holds."""

    iso: Path
    module: Path                       # the traced .ko, uncompressed
    test_program: Path                 # kvmtest as put in the image (its symbols)
    traced_module: str
    key: str
    kernel_release: str


def missing_tools() -> List[str]:
    """The Debian packages the build needs that are not installed (by the file each provides)."""
    need = {"busybox-static": Path("/bin/busybox"), "isolinux": ISOLINUX[0], "syslinux-common": ISOLINUX[1]}
    out = [pkg for pkg, path in need.items() if not path.exists() and not (pkg == "busybox-static"
                                                                           and shutil.which("busybox"))]
    for pkg, tool in (("genisoimage", "genisoimage"), ("gcc", "gcc")):
        if shutil.which(tool) is None:
            out.append(pkg)
    if not installed_kernels():
        out.append("linux-image-amd64")
    return out


def installed_kernels() -> List[str]:
    """Kernel releases with both /boot/vmlinuz-R and /lib/modules/R/modules.dep, newest last."""
    boot = Path("/boot")
    rel = []
    for vm in sorted(boot.glob("vmlinuz-*")) if boot.is_dir() else []:
        r = vm.name[len("vmlinuz-"):]
        if (Path("/lib/modules") / r / "modules.dep").exists():
            rel.append(r)
    return rel


def module_chain(release: str, name: str) -> List[Path]:
    """The .ko files of module `name` (e.g. kvm-intel) and what it depends on, in load order (modules.dep)."""
    root = Path("/lib/modules") / release
    deps: Dict[str, List[str]] = {}
    for line in (root / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod] = rest.split()
    wanted = [m for m in deps if Path(m).name.split(".ko")[0].replace("_", "-") == name.replace("_", "-")]
    if not wanted:
        raise InputError(f"module {name}: not in {root / 'modules.dep'}")
    order = list(reversed(deps[wanted[0]])) + [wanted[0]]
    return [root / m for m in order]


def kvm_spec(release: Optional[str] = None) -> ImageSpec:
    """The default image: the newest installed Debian kernel with kvm-intel."""
    kernels = installed_kernels()
    if release is None:
        if not kernels:
            raise VmxdbgError("no installed kernel (/boot/vmlinuz-* with /lib/modules/*/modules.dep); "
                              "install it with: apt-get install linux-image-amd64")
        release = kernels[-1]
    return ImageSpec(kernel=Path("/boot") / f"vmlinuz-{release}", modules=module_chain(release, "kvm-intel"),
                     traced_module="kvm_intel")


def read_ko(path: Path) -> bytes:
    """A module's ELF bytes (.ko, .ko.xz, .ko.gz, .ko.zst when zstandard is there)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            raise VmxdbgError(f"{path}: a zstd-compressed module needs the zstandard Python package") from None
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 28)
    return data


def ko_name(path: Path) -> str:
    return path.name.split(".ko")[0] + ".ko"


def init_script(spec: ImageSpec) -> str:
    loads = "\n".join(f"insmod /lib/modules/{ko_name(m)} || echo 'vmxdbg-error insmod {ko_name(m)}'"
                      for m in spec.modules)
    return f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{loads}
for f in /sys/module/{spec.traced_module}/sections/.*text*; do
  echo "{SECTION_TAG} {spec.traced_module} ${{f##*/}} $(cat $f)"
done
echo {READY_TAG}
/kvmtest
poweroff -f
"""


def _cpio_newc(entries: Sequence[Tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive of (name, mode, data, rdev) with fixed owner and time (reproducible)."""
    out = bytearray()
    ino = 1
    for name, mode, data, rdev in list(entries) + [("TRAILER!!!", 0, b"", 0)]:
        nb = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(nb), 0]
        out += b"070701" + b"".join(b"%08X" % v for v in fields) + nb
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    return bytes(out)


def build_initramfs(spec: ImageSpec, kvmtest: bytes) -> bytes:
    busybox = Path("/bin/busybox") if Path("/bin/busybox").exists() else Path(shutil.which("busybox") or "")
    d, f, x, c = 0o040755, 0o100644, 0o100755, 0o020600
    entries: List[Tuple[str, int, bytes, int]] = [(n, d, b"", 0) for n in
                                                  ("bin", "dev", "proc", "sys", "lib", "lib/modules")]
    entries += [("dev/console", c, b"", (5 << 8) | 1), ("bin/busybox", x, busybox.read_bytes(), 0),
                ("init", x, init_script(spec).encode(), 0), ("kvmtest", x, kvmtest, 0)]
    entries += [(f"lib/modules/{ko_name(m)}", f, read_ko(m), 0) for m in spec.modules]
    entries += [(dest.lstrip("/"), x, src.read_bytes(), 0) for dest, src in sorted(spec.extra_files.items())]
    return gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0)


def spec_key(spec: ImageSpec) -> str:
    h = hashlib.sha256()
    for p in [spec.kernel, *spec.modules, GUEST_SOURCE, *spec.extra_files.values()]:
        h.update(str(p).encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    h.update(spec.cmdline.encode() + spec.traced_module.encode() + init_script(spec).encode())
    h.update(b"image-format-1")
    return h.hexdigest()[:16]


def _run(cmd: List[str], what: str) -> None:
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = done.stdout.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise VmxdbgError(f"{what} failed ({' '.join(cmd[:2])}...): {tail[0]}")


def build(spec: Optional[ImageSpec] = None, cache: Optional[Path] = None, log=print) -> Image:
    """The image for `spec` (default: Debian's kernel with kvm-intel), built on first use and cached."""
    missing = missing_tools()
    if missing:
        raise VmxdbgError("building the KVM image needs Debian packages that are not installed: "
                          + " ".join(missing) + " (scripts/setup.sh installs them as root)")
    spec = spec or kvm_spec()
    for p in [spec.kernel, *spec.modules]:
        if not p.exists():
            raise InputError(f"{p}: no such file")
    key = spec_key(spec)
    out = (cache or cache_root()) / f"kvm-image-{key}"
    meta_path = out / "image.json"
    release = spec.kernel.name[len("vmlinuz-"):] if spec.kernel.name.startswith("vmlinuz-") else spec.kernel.name
    traced = out / ko_name(spec.modules[-1])
    if meta_path.exists() and (out / "boot.iso").exists() and traced.exists() and (out / "kvmtest").exists():
        return Image(out / "boot.iso", traced, out / "kvmtest", spec.traced_module, key, release)
    log(f"building the KVM image in {out} (once; kernel {release})")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vmxdbg-kvm-build-", dir=str(out.parent)) as tmp:
        t = Path(tmp)
        _run(["gcc", "-O2", "-static", "-o", str(t / "kvmtest"), str(GUEST_SOURCE)], "building kvmtest")
        iso_root = t / "iso"
        (iso_root / "isolinux").mkdir(parents=True)
        shutil.copyfile(spec.kernel, iso_root / "vmlinuz")
        (iso_root / "initrd.gz").write_bytes(build_initramfs(spec, (t / "kvmtest").read_bytes()))
        for src in ISOLINUX:
            shutil.copyfile(src, iso_root / "isolinux" / src.name)
        (iso_root / "isolinux" / "isolinux.cfg").write_text(
            f"default linux\nprompt 0\ntimeout 0\nlabel linux\n  kernel /vmlinuz\n"
            f"  append initrd=/initrd.gz {spec.cmdline}\n")
        _run(["genisoimage", "-quiet", "-o", str(t / "boot.iso"), "-b", "isolinux/isolinux.bin",
              "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
              "-input-charset", "utf-8", str(iso_root)], "genisoimage")
        stage = t / "out"
        stage.mkdir()
        os.replace(t / "boot.iso", stage / "boot.iso")
        (stage / traced.name).write_bytes(read_ko(spec.modules[-1]))
        shutil.copyfile(t / "kvmtest", stage / "kvmtest")
        (stage / "image.json").write_text(json.dumps(
            {"kernel": str(spec.kernel), "release": release, "modules": [str(m) for m in spec.modules],
             "traced_module": spec.traced_module, "cmdline": spec.cmdline}, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    return Image(out / "boot.iso", traced, out / "kvmtest", spec.traced_module, key, release)


def parse_sections(serial_text: str, module: str) -> Dict[str, int]:
    """`{section: address}` of `module` from the image's `vmxdbg-section` console lines."""
    out: Dict[str, int] = {}
    for line in serial_text.splitlines():
        parts = line.strip().split()
        if len(parts) == 4 and parts[0] == SECTION_TAG and parts[1] == module:
            try:
                out[parts[2]] = int(parts[3], 16)
            except ValueError:
                raise InputError(f"serial console: section line {line.strip()!r}: address is not hex") from None
    return out


__all__ = ["ImageSpec", "Image", "build", "kvm_spec", "parse_sections", "missing_tools", "cache_root",
           "module_chain", "read_ko", "CMDLINE", "PACKAGES"]
