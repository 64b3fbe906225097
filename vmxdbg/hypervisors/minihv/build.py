"""Build minihv: nasm -> a 1.44 MB floppy image, its symbol map and a bochsrc.

    build(out_dir, config=None) -> Path     the image (minihv.img); also writes
                                            minihv.bin, minihv.map, minihv.lst
    symbols(out_dir) -> {label: address}    every code/data label, e.g.
                                            at_vmxon, stop_vmlaunch, cfg_stop
    bochsrc(image, cpus=...) -> str         the bochsrc.template filled in

Run as a script to build and print the planned stops and VMX instructions:
    python -m vmxdbg.hypervisors.minihv.build OUT_DIR [--cpus N] [--knob 1:wrong_revision]
"""
from __future__ import annotations

import os
import re
import shutil
import string
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Union

if __package__:
    from .knobs import Config, patch_image, read_layout
else:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from knobs import Config, patch_image, read_layout  # type: ignore[no-redef]

from vmxdbg.common.errors import VmxdbgError

SOURCE_DIR = Path(__file__).resolve().parent
SOURCE = SOURCE_DIR / "minihv.asm"
TEMPLATE = SOURCE_DIR / "bochsrc.template"
IMAGE_NAME, BIN_NAME, MAP_NAME, LIST_NAME = "minihv.img", "minihv.bin", "minihv.map", "minihv.lst"
NASM_TIMEOUT = 60

# The places a driver of minihv cares about (all are labels in minihv.asm).
VMX_INSTRUCTIONS = ("at_vmxon", "at_vmclear", "at_vmptrld", "at_vmlaunch", "at_vmxoff", "at_vmcall")
PLANNED_STOPS = ("cfg_stop", "stop_vmxon", "stop_vmclear", "stop_vmptrld", "stop_vmlaunch",
                 "stop_vmxoff", "end_stop")


class MinihvBuildError(VmxdbgError):
    """minihv cannot be built (nasm missing or failing); one line saying why."""


def find_nasm() -> str:
    """Path of nasm, or MinihvBuildError saying how to install it."""
    nasm = shutil.which("nasm")
    if not nasm:
        raise MinihvBuildError("nasm not found on PATH: minihv needs it (Debian: apt-get install nasm)")
    return nasm


def build(out_dir: Union[str, Path], config: Optional[Config] = None) -> Path:
    """Assemble minihv into out_dir and return the floppy image path.

    The image holds the default configuration block (magic, no knobs) unless
    `config` is given, which is written into it (knobs.patch_image).
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    nasm = find_nasm()
    cmd = [nasm, "-f", "bin", "-I", str(SOURCE_DIR) + os.sep, "-l", LIST_NAME, "-o", BIN_NAME, str(SOURCE)]
    try:
        # the map file name is fixed in minihv.asm ([map symbols minihv.map]): run in out_dir
        proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=NASM_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise MinihvBuildError(f"nasm did not finish in {NASM_TIMEOUT} s on {SOURCE}") from None
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["(no message)"])[0]
        raise MinihvBuildError(f"nasm failed on {SOURCE}: {first}")
    binary = (out / BIN_NAME).read_bytes()
    size = read_layout()["FLOPPY_SIZE"]
    if len(binary) > size:
        raise MinihvBuildError(f"{out / BIN_NAME}: {len(binary)} bytes do not fit a {size}-byte floppy")
    image = out / IMAGE_NAME
    image.write_bytes(binary + bytes(size - len(binary)))
    if config is not None:
        patch_image(image, config)
    return image


_SECTION_SYMBOL = re.compile(r"^\s*([0-9A-Fa-f]+)\s+([0-9A-Fa-f]+)\s+(\S+)\s*$")


def parse_map(text: str) -> Dict[str, int]:
    """Labels of a nasm `[map symbols]` file: {name: address} (the equ constants are left out)."""
    labels: Dict[str, int] = {}
    in_section = False
    for line in text.splitlines():
        if line.startswith("---- Section"):
            in_section = True
        elif line.startswith("---- No Section"):
            in_section = False
        elif in_section:
            m = _SECTION_SYMBOL.match(line)
            if m:
                labels[m.group(3)] = int(m.group(2), 16)
    return labels


def symbols(out_dir: Union[str, Path]) -> Dict[str, int]:
    """{label: physical (= linear) address} of the minihv built in out_dir."""
    path = Path(out_dir) / MAP_NAME
    try:
        labels = parse_map(path.read_text())
    except OSError as e:
        raise MinihvBuildError(f"{path}: cannot read the symbol map ({e.strerror}); build first") from None
    missing = [name for name in VMX_INSTRUCTIONS + PLANNED_STOPS if name not in labels]
    if missing:
        raise MinihvBuildError(f"{path}: labels missing: {', '.join(missing)}")
    return labels


def bochsrc(image: Union[str, Path], cpus: int = 2, *, magic_break: bool = False,
            log: Union[str, Path] = "/dev/null", megs: int = 64,
            bxshare: str = "/usr/share/bochs") -> str:
    """The bochsrc.template filled in for `image` and `cpus` processors (1-8)."""
    if not 1 <= cpus <= read_layout()["MAX_CPUS"]:
        raise MinihvBuildError(f"cpus={cpus}: minihv runs on 1-{read_layout()['MAX_CPUS']} processors")
    for what, path in (("image", str(image)), ("log", str(log))):
        if re.search(r"[\s,\"#]", path):
            raise MinihvBuildError(f"{what} path {path!r}: bochsrc cannot take spaces, commas, quotes or #")
    return string.Template(TEMPLATE.read_text()).substitute(
        image=str(image), cpus=cpus, magic_break=int(magic_break), log=str(log), megs=megs,
        bxshare=bxshare)


def main(argv: Optional[list] = None) -> int:
    """Script entry: build into OUT_DIR, write bochsrc, print the addresses."""
    import argparse

    if __package__:
        from .knobs import from_specs
    else:
        from knobs import from_specs  # type: ignore[no-redef]
    ap = argparse.ArgumentParser(description="Build the minihv floppy image and a bochsrc.")
    ap.add_argument("out_dir")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--knob", action="append", default=[], help="CPU:KNOB[,KNOB] (see knobs.py)")
    ap.add_argument("--magic-break", action="store_true")
    ap.add_argument("--shutdown", action="store_true", help="Bochs exits when every core is done")
    args = ap.parse_args(argv)
    try:
        config = from_specs(args.knob, shutdown=args.shutdown, expect_cpus=args.cpus)
        image = build(args.out_dir, config)
        rc = Path(args.out_dir) / "bochsrc"
        rc.write_text(bochsrc(image.resolve(), args.cpus, magic_break=args.magic_break))
        labels = symbols(args.out_dir)
    except VmxdbgError as e:
        print(f"build.py: {e}", file=sys.stderr)
        return 2
    print(f"image   {image}\nbochsrc {rc}   (run: bochs-bin -q -f {rc}, then `c`)")
    for name in PLANNED_STOPS + VMX_INSTRUCTIONS:
        print(f"{labels[name]:#010x}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
