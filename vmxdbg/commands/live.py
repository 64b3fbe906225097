"""Commands on a live target: how a host lends a backend to the CLI's command modules.

The CLI's commands read files. A host that holds a live target (the WinDbg
`!vmxcheck`, a console) builds each command's parser with
`attach(parser, backend)` *before* calling the command's
`add_arguments(parser)`, then runs the command's own `run(args)`: one
implementation serves both. Inside a command:

- `is_live(parser)` (in add_arguments): the FILE argument may be left out and
  the live-only options (`add_live_check_arguments`) exist;
- `live_backend(args)` (in run): the Backend, or None on the command line.

Nothing here imports a particular backend.
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from ..backends.base import Backend
from ..state.collect import collect
from ..common.errors import BackendError, InputError, NotAvailable, refuse_existing
from ..state.snapshot import Snapshot
from ..common.numbers import parse_count, parse_int

KEY = "backend"


def attach(parser: argparse.ArgumentParser, backend: Backend) -> None:
    """Lend `backend` to the command whose parser this is (call before add_arguments)."""
    parser.set_defaults(**{KEY: backend})


def is_live(parser: argparse.ArgumentParser) -> bool:
    """True when a host attached a live backend to this parser."""
    return parser.get_default(KEY) is not None


def live_backend(args: argparse.Namespace) -> Optional[Backend]:
    """The backend a host attached, or None (the command line)."""
    return getattr(args, KEY, None)


def parse_cpu(text: object, processors: Sequence[int], option: str = "--cpu") -> int:
    """A processor number as typed (decimal unless 0x/0n), checked against the target's processors."""
    n = parse_count(str(text), what=option)
    if n not in processors:
        have = ", ".join(str(c) for c in processors) or "none"
        raise InputError(f"{option} {text}: no such processor (the target has: {have})")
    return n


def add_live_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Options a check has only on a live target."""
    parser.add_argument("--vmxon", action="append", default=None, metavar="[CPU=]ADDR",
                        help="check VMXON with this operand (physical address of the VMXON region), "
                             "on every processor or on CPU")
    parser.add_argument("--record", default=None, metavar="FILE",
                        help="record the session to FILE (.vmxrec.jsonl) for `vmxdbg check FILE` later")
    parser.add_argument("--force", action="store_true", help="replace the --record FILE if it exists")
    add_inject_argument(parser)


def add_inject_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inject", action="store_true",
                        help="execute CPUID, and in VMX root operation VMPTRST/VMREAD, on the processor the "
                             "target stopped on (writes a stub into padding of the driver's code and puts "
                             "everything back; docs/windbg.md)")


def enable_injection(args: argparse.Namespace, backend: Backend) -> None:
    """--inject: turn on the backend's injection (a backend without it refuses in one line)."""
    if not getattr(args, "inject", False):
        return
    enable = getattr(backend, "enable_injection", None)
    if not callable(enable):
        raise InputError(f"--inject: the {backend.name} backend cannot execute instructions on the target")
    enable()


def vmxon_pointers(values: Optional[Iterable[str]], cpus: Sequence[int]) -> Dict[int, int]:
    """--vmxon values as processor -> physical address ("ADDR" is every processor in `cpus`)."""
    out: Dict[int, int] = {}
    for v in values or ():
        where, sep, addr = str(v).rpartition("=")
        address = parse_int(addr, what="--vmxon address", bits=64)
        if sep:
            out[parse_cpu(where, cpus, "--vmxon")] = address
        else:
            for c in cpus:
                out[c] = address
    return out


def chosen_cpus(backend: Backend, asked: Optional[Iterable[object]]) -> List[int]:
    """The processors named with --cpu (every one by default), checked against the target."""
    have = backend.processors()
    return list(have) if not asked else [parse_cpu(c, have) for c in asked]


def live_check_snapshot(args: argparse.Namespace, backend: Backend) -> Snapshot:
    """What `check` checks on a live target: collected (and recorded, with --record) now."""
    cpus = chosen_cpus(backend, getattr(args, "cpu", None))
    pointers = vmxon_pointers(getattr(args, "vmxon", None), cpus)
    enable_injection(args, backend)
    from ..state.assume import parse_assumptions
    if getattr(args, "inject", False) and parse_assumptions(getattr(args, "assume", None) or []).get("vmx") == "root":
        for c in cpus:      # the person says so: VMPTRST/VMREAD may run there
            backend.known_vmx_root(c, "--assume vmx=root")
    record = getattr(args, "record", None)
    refuse_existing(record, "the recording", bool(getattr(args, "force", False)))
    if record:
        try:
            from ..record.recorded import record_check
        except ImportError:
            raise NotAvailable("recording needs vmxdbg's recorder, which this version does not have",
                               backend=backend.name) from None
        argv = ["check"] + [f"--cpu={c}" for c in cpus] + [f"--vmxon={c}=0x{a:x}" for c, a in pointers.items()]
        return record_check(backend, record, cpus=cpus, vmxon_pointers=pointers or None,
                            source=f"{backend.name} live", argv=argv)
    return collect(backend, cpus=cpus, vmxon_pointers=pointers or None, source=f"{backend.name} live")


def current_cpu(backend: Backend) -> int:
    """The processor the debugger has selected, where the backend knows it; else the first one."""
    cpu = backend.current_processor()
    return cpu if cpu is not None else backend.processors()[0]


PAGE = 0x1000


def page_reader(backend: Backend) -> Callable[[int, int], Optional[bytes]]:
    """A physical-memory reader that reads each 4-KByte page once (one backend call per region).

    Decoding a VMCS reads ~150 fields; over a KD link each read is a packet
    exchange, so the page is read whole and the fields are cut from it. A page
    the backend cannot read is unknown (None), not an error.
    """
    pages: Dict[int, Optional[bytes]] = {}

    def page(base: int) -> Optional[bytes]:
        if base not in pages:
            try:
                pages[base] = backend.read_physical(base, PAGE)
            except BackendError:
                pages[base] = None
        return pages[base]

    def read(address: int, size: int) -> Optional[bytes]:
        out = b""
        at = address
        while at < address + size:
            base = at & ~(PAGE - 1)
            data = page(base)
            if data is None:
                return None
            take = min(address + size, base + PAGE) - at
            out += data[at - base:at - base + take]
            at += take
        return out
    return read


def address_of(backend: Backend, text: str, what: str = "address") -> int:
    """A number as typed, or a debugger expression (`mydrv!VmxOnEachCpu+0x10`) where the backend evaluates them."""
    try:
        return parse_int(text, what=what)
    except InputError:
        try:
            return int(backend.evaluate(text))
        except NotAvailable:
            raise InputError(f"{what} {text!r} is not a number, and {backend.name} does not evaluate "
                             "debugger expressions") from None


def add_live_trace_arguments(parser: argparse.ArgumentParser) -> None:
    """Options `trace` has on a live target."""
    parser.add_argument("--code", nargs=2, metavar=("ADDR", "LEN"), default=None,
                        help="live: the code to find VMX instructions in: linear address (or a debugger "
                             "expression such as mydrv!InitVmx) and length in bytes")
    parser.add_argument("--assume", action="append", default=[], metavar="KEY=VALUE",
                        help="state no debugger shows, e.g. vmx=root (fills only what is unknown)")
    add_inject_argument(parser)


def live_trace(args: argparse.Namespace, backend: Backend) -> list:
    """`trace` on a live target: the VMX instructions in --code, stepped on every core as they are reached."""
    from ..trace.session import run_trace
    if not getattr(args, "code", None):
        raise InputError("trace on a live target: give the code to watch, --code ADDR LEN "
                         "(e.g. --code mydrv!InitVmx 0x400)")
    address = address_of(backend, args.code[0], "--code address")
    length = parse_int(args.code[1], what="--code length")
    if not 0 < length <= 0x100000:
        raise InputError(f"--code length 0x{length:x}: expected 1 byte to 1 MiB")
    code = backend.read_virtual(current_cpu(backend), address, length)
    enable_injection(args, backend)
    from ..state.assume import parse_assumptions
    assume = parse_assumptions(getattr(args, "assume", None) or [])
    argv = ["trace", "--code", f"0x{address:x}", f"0x{length:x}"] + (["--inject"] if args.inject else []) + \
        [f"--assume={k}={str(v).lower()}" for k, v in assume.items()]
    return run_trace(backend, {address: code}, physical=False, timeout=args.timeout,
                     record=getattr(args, "record", None), argv=argv, source=f"{backend.name} live",
                     assume=assume or None)
