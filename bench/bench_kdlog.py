"""Throughput and memory of the kd log parser on a generated log of any size.

    python bench/bench_kdlog.py                  # 16 MB and 64 MB logs
    python bench/bench_kdlog.py --size 1G        # one ~1 GB log (needs ~1 GB of disk)
    python bench/bench_kdlog.py --size 64M --encoding utf-16

The log repeats a realistic session (rdmsr, full `r` dumps on 4 processors,
`r cr4`, `.formats`, `!dq` of a few pages, `dg`, a `.cxr` context, a stack, a
line of noise) with values that change every round, so the parser does real
work on every line while the state it keeps stays the same size. Each size is
parsed in a fresh child process, which reports wall time and its peak RSS: a
streaming parser's peak RSS does not grow with the log.
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
{cpu}: kd> k
 # Child-SP          RetAddr           Call Site
00 ffffd001`1399b658 fffff803`71bd1afe nt!KeBugCheckEx
01 ffffd001`1399b660 fffff803`71b5a80d nt!KiFatalExceptionHandler+0x22
KDTARGET: Refreshing KD connection {i}
"""


def generate(path: Path, size: int, encoding: str) -> int:
    """Write about `size` bytes of log to `path`; returns the bytes written."""
    written = 0
    i = 0
    with open(path, "wb") as f:
        if encoding == "utf-16":
            f.write(b"\xff\xfe")
        while written < size:
            chunk = "".join(_round(i + k) for k in range(64)).replace("\n", "\r\n")
            data = chunk.encode("utf-16-le" if encoding == "utf-16" else "utf-8")
            f.write(data)
            written += len(data)
            i += 64
    return written


_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from vmxdbg.inputs.kdlog import parse_file
t = time.perf_counter()
log = parse_file(Path(sys.argv[1]))
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "lines": log.lines, "warnings": len(log.warnings),
                  "cpus": len(log.snapshot.processors),
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(ROOT)],
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
    ap.add_argument("--size", action="append", help="log size, e.g. 16M or 1G (repeatable; default 16M and 64M)")
    ap.add_argument("--encoding", choices=("utf-8", "utf-16"), default="utf-8")
    ap.add_argument("--keep", type=Path, help="write the log here and keep it")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in (args.size or ["16M", "64M"])]
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = args.keep or Path(tmp) / "bench.log"
            nbytes = generate(path, size, args.encoding)
            r = measure(path)
            mb = nbytes / 1e6
            print(f"{mb:9.1f} MB {args.encoding:6s}  {r['lines']:>11,} lines  {r['seconds']:7.2f} s  "
                  f"{mb / r['seconds']:6.1f} MB/s  {r['lines'] / r['seconds'] / 1e3:7.0f} klines/s  "
                  f"peak RSS {r['peak_rss_kb'] / 1024:6.1f} MiB  warnings {r['warnings']}", flush=True)
            if args.keep is None:
                os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
