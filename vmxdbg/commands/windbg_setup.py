"""`vmxdbg windbg-setup`: the WinDbg commands that make `!vmxcheck` work with this installation.

Run it with the Python that pykd and vmxdbg are installed in
(`py -3.9 -m vmxdbg windbg-setup`): it says whether that Python fits pykd
(64-bit, 3.5-3.9 for pykd 0.3.4) and whether pykd is installed (found, not
imported), then prints the lines to type in WinDbg with this machine's paths.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import struct
import sys
from pathlib import Path
from typing import List

from .. import __version__
from ..common.errors import InputError

NAME = "windbg-setup"
HELP = "print the WinDbg commands that make !vmxcheck work with this Python and installation"
PYKD_PYTHONS = ((3, 5), (3, 9))     # pykd 0.3.4.15 wheels: 2.7 and 3.5-3.9
WINDBG_DIR = Path(__file__).resolve().parent.parent / "windbg"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--python", default=None, metavar="X.Y",
                        help="the Python version to name in !py (default: the one running this)")


def alias_command(version: str) -> str:
    """What `!vmxcheck` stands for."""
    return f"!py -{version} -g -m vmxdbg.bang"


def setup_lines(version: str) -> List[str]:
    """The lines to type in WinDbg (attached to the target, broken in)."""
    return [".load pykd", f"as !vmxcheck {alias_command(version)}", "!vmxcheck"]


SCRIPT_COPY = "C:\\vmxdbg\\vmxcheck.js"


def quoted(path: str) -> str:
    """A path as pykd-ext's !py reads it: its tokenizer honours "..." (sources/arglist.cpp)."""
    return f'"{path}"'


def launcher_line(script: str) -> str:
    return f"!py -g {quoted(script)} ARGS"


def scriptload_lines(script: str) -> List[str]:
    """`.scriptload` takes the rest of the line as the path and cannot take one with spaces: a path
    with spaces is copied to SCRIPT_COPY first (commands for cmd.exe, then the WinDbg line)."""
    if " " not in script:
        return [f".scriptload {script}"]
    folder = SCRIPT_COPY.rsplit("\\", 1)[0]
    return [f"(.scriptload cannot take a path with spaces; in cmd.exe: mkdir {folder} & "
            f"copy {quoted(script)} {SCRIPT_COPY}, then in WinDbg:)",
            f".scriptload {SCRIPT_COPY}"]


def pykd_python(text: str) -> str:
    """--python X.Y: a Python pykd 0.3.4.15 has a wheel for (2.7, 3.5-3.9); InputError otherwise."""
    m = re.fullmatch(r"([0-9])\.([0-9]{1,2})", text.strip())
    if m is None or not ((int(m[1]), int(m[2])) == (2, 7)
                         or PYKD_PYTHONS[0] <= (int(m[1]), int(m[2])) <= PYKD_PYTHONS[1]):
        raise InputError(f"--python {text}: expected X.Y of a Python pykd 0.3.4.15 has wheels for "
                         f"(2.7, 3.5 to 3.9), e.g. --python 3.9")
    return f"{int(m[1])}.{int(m[2])}"


def run(args: argparse.Namespace) -> int:
    v = sys.version_info
    version = pykd_python(args.python) if args.python is not None else f"{v.major}.{v.minor}"
    bits = struct.calcsize("P") * 8
    out = [f"vmxdbg {__version__} in {sys.executable} (Python {v.major}.{v.minor}.{v.micro}, {bits}-bit)"]
    if not (PYKD_PYTHONS[0] <= (v.major, v.minor) <= PYKD_PYTHONS[1]) and args.python is None:
        out.append(f"  note: pykd 0.3.4 has no wheel for Python {v.major}.{v.minor}; install vmxdbg into "
                   "Python 3.9 (64-bit) and run this with it: py -3.9 -m vmxdbg windbg-setup")
    if bits != 64:
        out.append("  note: a 64-bit WinDbg needs a 64-bit Python (and the x64 pykd.dll)")
    if importlib.util.find_spec("pykd") is None:
        out.append(f"  note: pykd is not installed in this Python: {sys.executable} -m pip install pykd==0.3.4.15")
    out += ["", "In WinDbg, attached to the target and broken in (the bootstrapper pykd.dll in the extension "
            "folder, docs/windbg.md):", ""]
    out += [f"    {line}" for line in setup_lines(version)]
    out += ["", "or, for the first two lines, load the script that runs them:", ""]
    out += [f"    {line}" for line in scriptload_lines(str(WINDBG_DIR / "vmxcheck.js"))]
    out += ["", "or without the alias (pykd.pyd loaded directly, no bootstrapper):", "",
            f"    {launcher_line(str(WINDBG_DIR / 'vmxcheck.py'))}", ""]
    if version != "3.9":
        out.append(f"(vmxcheck.js names Python 3.9: change its PYTHON line to \"-{version}\")")
    sys.stdout.write("\n".join(out) + "\n")
    return 0
