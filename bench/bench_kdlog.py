"""Throughput and memory of the kd log parser, against the floor of any Python parser.

    python bench/bench_kdlog.py                  # 64 MB: the generated log and the real excerpts
    python bench/bench_kdlog.py --size 16M --size 1G --log generated
    python bench/bench_kdlog.py --size 64M --encoding utf-16

Two logs, both made to the chosen size:
  generated  a realistic session on four processors, repeated with values that change
             every round. A real log is mostly what vmxdbg does not read: each round has
             the commands it reads (`rdmsr`, a full `r`, `r cr4`, `.formats`, `!dq` of a
             page, `dg`, a `.cxr` context) and what surrounds them in a real session (a
             `!analyze -v` with its CONTEXT, a 30-frame stack, a module list).
  excerpts   every real kd excerpt of the tests (tests/data/kdreal, recordings/kdlogs),
             repeated.
Each log is parsed in a fresh child process, which reports wall time and its peak RSS
(a streaming parser's peak RSS does not grow with the log). In the same run, another
child times plain line iteration over the same file,
`sum(1 for _ in open(path, encoding='utf-8'))`: the floor of any Python parser, and
the first "x" column is parse time / floor time. Two more times, also / floor time:
"prompts only" is the same parser with no command's output read (every prompt still
found and decided); "find prompts" is the least any parser that follows kd's prompts
pays in Python (the file read as text in 64 KiB pieces, each line holding `kd>` found
with str.find and looked up in a dict), with the number of such lines.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXCERPTS = [ROOT / "tests" / "data" / "kdreal", ROOT / "recordings" / "kdlogs"]

_MODULES = "\n".join(f"fffff801`{0x30000000 + k * 0x100000:08x} fffff801`{0x300f0000 + k * 0x100000:08x}   "
                     f"mod{k:<10d} (deferred)" for k in range(40))
_FRAMES = "\n".join(f"{k:02x} ffffd001`1399{0xb658 + k * 8:04x} fffff803`71b{k:05x} nt!KiRoutine{k}+0x{k * 3:x}"
                    for k in range(30))
_ANALYZE = """*******************************************************************************
*                                                                             *
*                        Bugcheck Analysis                                    *
*                                                                             *
*******************************************************************************

SYSTEM_SERVICE_EXCEPTION (3b)
An exception happened while executing a system service routine.
Arguments:
Arg1: 00000000c0000005, Exception code that caused the bugcheck
Arg2: fffff80001dc87b8, Address of the instruction which caused the bugcheck
Arg3: fffff8801b90cc20, Address of the context record for the exception that caused the bugcheck
Arg4: 0000000000000000, zero.

Debugging Details:
------------------

EXCEPTION_CODE: (NTSTATUS) 0xc0000005 - The instruction at 0x%p referenced memory at 0x%p.

FAULTING_IP:
nt!ObpCaptureHandleInformation+68
fffff800`01dc87b8 8a4128          mov     al,byte ptr [rcx+28h]

CONTEXT:  fffff8801b90cc20 -- (.cxr 0xfffff8801b90cc20)
rax=000000000000002d rbx=00000000000004cc rcx=0000000000000000
rdx=fffff88016992fb0 rsi=fffff8a00ebb0330 rdi=0000000000237578
rip=fffff80001dc87b8 rsp=fffff8801b90d5f8 rbp=0000000000000000
 r8=fffff8a00ebb0330  r9=fffffa80085e8a50 r10=00000000000d0f88
r11=fffff8801b90d688 r12=fffff8a00f2fd320 r13=000000000359abd0
r14=fffff880168c2040 r15=fffff8801b90d6b8
iopl=0         nv up ei pl zr na po nc
cs=0010  ss=0018  ds=002b  es=002b  fs=0053  gs=002b             efl=00010246
nt!ObpCaptureHandleInformation+0x68:
fffff800`01dc87b8 8a4128          mov     al,byte ptr [rcx+28h] ds:002b:00000000`00000028=??
Resetting default scope

DEFAULT_BUCKET_ID:  VISTA_DRIVER_FAULT
BUGCHECK_STR:  0x3B
PROCESS_NAME:  MiniCtrl.exe
CURRENT_IRQL:  0
LAST_CONTROL_TRANSFER:  from fffff80001e53b8d to fffff80001dc87b8
SYMBOL_NAME:  nt!ObpCaptureHandleInformation+68
FOLLOWUP_NAME:  MachineOwner
MODULE_NAME: nt
IMAGE_NAME:  ntkrnlmp.exe
FAILURE_BUCKET_ID:  X64_0x3B_nt!ObpCaptureHandleInformation+68
Followup: MachineOwner
---------"""


def _round(i: int) -> str:
    cpu = i % 4
    cr4 = 0x3506F8 | ((i & 1) << 13)
    page = 0x1A2B0000 + (i % 16) * 0x1000
    rows = "\n".join(
        f"#{page + off:8x} {i:08x}`{off:08x} 00000000`{(i * 7) & 0xFFFFFFFF:08x}" for off in range(0, 0x80, 0x10))
    return f"""{cpu}: kd> rdmsr 0x480
msr[480] = 00da0400`{i & 0xFFFFFFFF:08x}
{cpu}: kd> rdmsr 3a
msr[3a] = 00000000`00000005
{cpu}: kd> r
rax=0000000000000000 rbx=fffff80002c4fe80 rcx=0000000000000001
rdx=0000000000000000 rsi=0000000000000000 rdi=fffff80002c4fe80
rip=fffff80002a7e490 rsp=fffff80000b9cb88 rbp=fffff80000b9cc20
 r8=0000000000000000  r9=0000000000000000 r10=0000000000000000
r11=fffff80000b9cb88 r12=0000000000000000 r13=0000000000000000
r14=0000000000000000 r15=0000000000000000
iopl=0         nv up ei pl zr na po nc
cs=0010  ss=0018  ds=002b  es=002b  fs=0053  gs=002b             efl=00000246
nt!DbgBreakPointWithStatus:
fffff800`02a7e490 cc              int     3
{cpu}: kd> r cr4
cr4={cr4:016x}
{cpu}: kd> .formats cr4
Evaluate expression:
  Hex:     00000000`{cr4:08x}
  Decimal: {cr4}
{cpu}: kd> !dq {page:x} L10
{rows}
{cpu}: kd> dg 10
                                                    P Si Gr Pr Lo
Sel        Base              Limit          Type    l ze an es ng Flags
---- ----------------- ----------------- ---------- - -- -- -- -- --------
0010 00000000`00000000 00000000`00000000 Code RE Ac 0 Nb By P  Lo 0000029b
{cpu}: kd> .cxr ffffb70dd7eb6860
rax=fffff80ad4bc7214 rbx=fffff80ad4bf62a0 rcx=0000000000000000
cs=0010  ss=0018  ds=002b  es=002b  fs=0053  gs=002b             efl=00050246
{cpu}: kd> .cxr
{cpu}: kd> !analyze -v
{_ANALYZE}
{cpu}: kd> k
 # Child-SP          RetAddr           Call Site
{_FRAMES}
{cpu}: kd> lm
start             end                 module name
{_MODULES}
KDTARGET: Refreshing KD connection {i}
"""


def _write(path: Path, size: int, encoding: str, text_of_round) -> int:
    written = 0
    i = 0
    with open(path, "wb") as f:
        if encoding == "utf-16":
            f.write(b"\xff\xfe")
        while written < size:
            chunk = text_of_round(i).replace("\n", "\r\n")
            data = chunk.encode("utf-16-le" if encoding == "utf-16" else "utf-8")
            f.write(data)
            written += len(data)
            i += 1
    return written


def generate(path: Path, size: int, encoding: str) -> int:
    """Write about `size` bytes of generated log to `path`; returns the bytes written."""
    return _write(path, size, encoding, lambda i: "".join(_round(i * 64 + k) for k in range(64)))


def excerpts(path: Path, size: int, encoding: str) -> int:
    """Write the real excerpts, repeated, to about `size` bytes."""
    text = "".join(p.read_text(encoding="utf-8").rstrip("\n") + "\n"
                   for d in EXCERPTS for p in sorted(d.glob("*.log")))
    return _write(path, size, encoding, lambda i: text)


_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from vmxdbg.inputs.kdlog import parse_file
if sys.argv[3] == "prompts":
    # prompts only: every prompt found and decided (processor, context, side effects), no
    # command's output read: what any parser that follows kd's prompts in Python pays
    from vmxdbg.inputs.kdlog import parser
    parser.MAKERS.clear()
t = time.perf_counter()
log = parse_file(Path(sys.argv[1]))
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "lines": log.lines, "warnings": len(log.warnings),
                  "cpus": len(log.snapshot.processors),
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


_FLOOR = """
import json, sys, time
t = time.perf_counter()
n = sum(1 for _ in open(sys.argv[1], encoding=sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - t, "lines": n}))
"""


_FIND_PROMPTS = """
import json, sys, time
t = time.perf_counter()
seen, n = {}, 0
with open(sys.argv[1], encoding=sys.argv[2], errors="replace") as f:
    while True:
        text = f.read(1 << 16)
        if not text:
            break
        find, rfind, search = text.find, text.rfind, 0
        while True:
            k = find("kd>", search)
            if k < 0:
                break
            start, end = rfind("\\n", 0, k) + 1, find("\\n", k)
            search = end + 1 if end >= 0 else len(text)
            seen.get(text[start:end])
            n += 1
print(json.dumps({"seconds": time.perf_counter() - t, "prompts": n}))
"""


def find_prompts(path: Path, encoding: str) -> dict:
    """The least a parser that follows kd's prompts pays in Python: the file read as text in
    64 KiB pieces and every line holding `kd>` found (str.find) and looked up in a dict."""
    out = subprocess.run([sys.executable, "-c", _FIND_PROMPTS, str(path), "utf-16" if encoding == "utf-16" else "utf-8"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def measure(path: Path, what: str = "parse") -> dict:
    """The parse of `path` in a fresh process (`what`: "parse", or "prompts": prompts only)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(ROOT), what],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def floor(path: Path, encoding: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _FLOOR, str(path), "utf-16" if encoding == "utf-16" else "utf-8"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", action="append", help="log size, e.g. 16M or 1G (repeatable; default 64M)")
    ap.add_argument("--log", action="append", choices=("generated", "excerpts"),
                    help="which log (repeatable; default both)")
    ap.add_argument("--encoding", choices=("utf-8", "utf-16"), default="utf-8")
    ap.add_argument("--keep", type=Path, help="write the (last) log here and keep it")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in (args.size or ["64M"])]
    makers = {"generated": generate, "excerpts": excerpts}
    for size in sizes:
        for name in args.log or ["generated", "excerpts"]:
            with tempfile.TemporaryDirectory() as tmp:
                path = args.keep or Path(tmp) / "bench.log"
                nbytes = makers[name](path, size, args.encoding)
                r = measure(path)
                f = floor(path, args.encoding)
                prompts = measure(path, "prompts")
                least = find_prompts(path, args.encoding)
                mb = nbytes / 1e6
                print(f"{name:9s} {mb:8.1f} MB {args.encoding:6s} {r['lines']:>11,} lines  {r['seconds']:6.2f} s  "
                      f"{mb / r['seconds']:6.1f} MB/s  peak RSS {r['peak_rss_kb'] / 1024:5.1f} MiB  "
                      f"floor {f['seconds']:5.2f} s {mb / f['seconds']:6.1f} MB/s  x{r['seconds'] / f['seconds']:4.1f}  "
                      f"prompts only x{prompts['seconds'] / f['seconds']:3.1f}  "
                      f"find prompts x{least['seconds'] / f['seconds']:3.1f} ({least['prompts']:,})",
                      flush=True)
                if args.keep is None:
                    os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
