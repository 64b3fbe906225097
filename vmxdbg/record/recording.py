"""The recording format (`*.vmxrec.jsonl`): its reader and its line writer.

Specified in docs/formats.md; the header and trailer are checked against
vmxdbg/schemas/recording-{header,trailer}.schema.json, the call lines here
against OPS (fast: a recording holds up to millions of them). Line 1 is a header (format "vmxdbg-recording", version,
producer, created, backend identity and capabilities, target identity and
capability MSRs when known, the command that was run). Then one JSON object
per backend call or event, numbered by "seq" from 1:

    {"seq": 17, "op": "read_msr", "cpu": 0, "args": {"index": "0x480"}, "result": "0xda040000000004"}
    {"seq": 18, "op": "go", "args": {"timeout": 30.0}, "event": {"kind": "breakpoint", "cpu": 1, ...}}
    {"seq": 19, "op": "read_msr", "cpu": 1, "args": {"index": "0x3a"},
     "error": {"type": "NotAvailable", "message": "...", "backend": "bochs", "cpu": 1, "what": "..."}}

The last line is a trailer {"end": true, "events": N}, N = the number of
records. Integers are hex strings (JSON ints are accepted); byte strings are
hex; unknown keys are ignored; an unknown major version is refused.

A writer writes `NAME.partial`, flushing each line, and renames it to NAME
when closed. A killed writer leaves a `.partial` whose complete
(newline-terminated) lines all read back; `read_recording(..., partial=True)`
accepts it and says it is partial. Reading is bounded: MAX_LINE_BYTES per
line, MAX_FILE_BYTES per file; every problem is an InputError naming the file
and line (and the key, where one is wrong).
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, IO, Iterator, List, Optional, Tuple, Union

from .. import __version__
from ..backends.base import StopEvent
from ..common.statekeys import BOOL_STATES
from ..common import interrupt
from ..common.errors import InputError, one_line, refuse_special_output
from ..common.numbers import fits, hexs, parse_int, vmcs_field_bits
from ..common.schema import validate

FORMAT = "vmxdbg-recording"
VERSION = 1
PARTIAL_SUFFIX = ".partial"
#: exception names a trailer carries when the session was stopped from outside (Ctrl-C, SIGTERM)
INTERRUPTS = ("KeyboardInterrupt", "Terminated", "SystemExit")
SUFFIX = ".vmxrec.jsonl"
MAX_LINE_BYTES = 16 * 1024 * 1024   # one record; a physical read of 8 MiB fits
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_LIST = 4096                     # elements of a list-valued argument or result
class _Bad(Exception):
    """A value of the wrong type; `key` is its path inside the record."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


# ------------------------------------------------------------------ value codecs
# Each codec turns a Python value into its JSON form and back; `decode` raises
# _Bad naming the key. Values decoded from a recording are hashable.

def _enc_int(v: Any) -> str:
    return hexs(int(v))


_CANON_HEX = re.compile(r"0x[0-9a-f]{1,16}").fullmatch   # what the writer writes: the fast path


def _dec_int(v: Any, key: str) -> int:
    if type(v) is str and _CANON_HEX(v):
        return int(v, 16)
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise _Bad(key, f"expected a hex integer, got {_tname(v)}")
    try:
        return parse_int(v, bits=64)
    except InputError as exc:
        if "too wide" in exc.detail:
            raise _Bad(key, exc.detail) from None
        raise _Bad(key, f"expected a hex integer, got {_short(v)}") from None


def _check_width(rec: "Record") -> None:
    """A VMCS field or CPUID register value wider than its width is bad input (64 bits is
    every other value's limit, checked as it is decoded)."""
    try:
        if rec.op == "read_vmcs":
            fits(rec.result, vmcs_field_bits(rec.args[0]), f"VMCS field {hexs(rec.args[0])}")
        elif rec.op == "cpuid":
            for r in rec.result:
                fits(r, 32, "CPUID register")
    except InputError as exc:
        raise _Bad("result", exc.detail) from None


def _dec_small_int(v: Any, key: str) -> int:
    """A processor or breakpoint number: a JSON int (a hex string is accepted too)."""
    n = _dec_int(v, key)
    if n > 0xFFFFFFFF:
        raise _Bad(key, f"number {n} out of range")
    return n


def _dec_str(v: Any, key: str) -> str:
    if not isinstance(v, str):
        raise _Bad(key, f"expected a string, got {_tname(v)}")
    return v


def _dec_bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise _Bad(key, f"expected true or false, got {_tname(v)}")
    return v


def _dec_float(v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(key, f"expected a number, got {_tname(v)}")
    return float(v)


def _dec_list(v: Any, key: str) -> list:
    if not isinstance(v, list):
        raise _Bad(key, f"expected a list, got {_tname(v)}")
    if len(v) > MAX_LIST:
        raise _Bad(key, f"list of {len(v)} elements, more than {MAX_LIST}")
    return v


def _dec_obj(v: Any, key: str) -> dict:
    if not isinstance(v, dict):
        raise _Bad(key, f"expected an object, got {_tname(v)}")
    return v


def _dec_bytes(v: Any, key: str) -> bytes:
    if not isinstance(v, str):
        raise _Bad(key, f"expected a string of hex bytes, got {_tname(v)}")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise _Bad(key, "not a string of hex bytes") from None


def _dec_int_list(v: Any, key: str) -> Tuple[int, ...]:
    return tuple(_dec_small_int(x, f"{key}[{i}]") for i, x in enumerate(_dec_list(v, key)))


def _dec_str_list(v: Any, key: str) -> Tuple[str, ...]:
    return tuple(_dec_str(x, f"{key}[{i}]") for i, x in enumerate(_dec_list(v, key)))


def _dec_int4(v: Any, key: str) -> Tuple[int, int, int, int]:
    items = _dec_list(v, key)
    if len(items) != 4:
        raise _Bad(key, "expected [eax, ebx, ecx, edx]")
    return tuple(_dec_int(x, f"{key}[{i}]") for i, x in enumerate(items))  # type: ignore[return-value]


def _dec_int_map(v: Any, key: str) -> Dict[str, int]:
    return {str(k): _dec_int(x, f"{key}.{k}") for k, x in _dec_obj(v, key).items()}


_STATE_FLAGS = BOOL_STATES


def _enc_vmx_state(v: Dict[str, object]) -> Dict[str, Any]:
    return {k: (hexs(x) if (k.endswith("_pointer") or k == "cpl") and isinstance(x, int) and not isinstance(x, bool)
                else x) for k, x in v.items()}


def _dec_vmx_state(v: Any, key: str) -> Dict[str, object]:
    """vmx_state(): `*_pointer` and `cpl` values are integers, the flags of
    base.py's docstring booleans, every other value a string."""
    out: Dict[str, object] = {}
    for k, x in _dec_obj(v, key).items():
        k = str(k)
        if k.endswith("_pointer") or k == "cpl":
            out[k] = _dec_int(x, f"{key}.{k}")
        elif k in _STATE_FLAGS:
            if not isinstance(x, bool):
                raise _Bad(f"{key}.{k}", f"expected true or false, got {_tname(x)}")
            out[k] = x
        else:
            out[k] = _dec_str(x, f"{key}.{k}")
    return out


def encode_event(ev: StopEvent) -> Dict[str, Any]:
    """The JSON form of a StopEvent (None parts left out)."""
    out: Dict[str, Any] = {"kind": ev.kind}
    if ev.cpu is not None:
        out["cpu"] = ev.cpu
    if ev.address is not None:
        out["address"] = hexs(ev.address)
    if ev.breakpoint is not None:
        out["breakpoint"] = ev.breakpoint
    if ev.detail:
        out["detail"] = ev.detail
    if ev.log:
        log = list(ev.log)
        if len(log) > MAX_LIST:     # e.g. a guest rebooting in a loop: keep both ends, say what is left out
            keep = MAX_LIST // 2 - 1
            log = log[:keep] + [f"[vmxdbg: {len(log) - 2 * keep} log lines left out]"] + log[-keep:]
        out["log"] = log
    return out


def decode_event(v: Any, key: str = "event") -> StopEvent:
    raw = _dec_obj(v, key)
    kind = _dec_str(raw.get("kind"), f"{key}.kind")
    if not kind:
        raise _Bad(f"{key}.kind", "empty event kind")

    def opt(name: str, dec: Callable[[Any, str], Any]) -> Any:
        x = raw.get(name)
        return None if x is None else dec(x, f"{key}.{name}")
    return StopEvent(kind, cpu=opt("cpu", _dec_small_int), address=opt("address", _dec_int),
                     breakpoint=opt("breakpoint", _dec_small_int), detail=opt("detail", _dec_str) or "",
                     log=list(opt("log", _dec_str_list) or ()))


@dataclass(frozen=True)
class _Codec:
    encode: Callable[[Any], Any]
    decode: Callable[[Any, str], Any]


_C: Dict[str, _Codec] = {
    "int": _Codec(_enc_int, _dec_int),
    "num": _Codec(int, _dec_small_int),
    "str": _Codec(str, _dec_str),
    "bool": _Codec(bool, _dec_bool),
    "float": _Codec(float, _dec_float),
    "bytes": _Codec(lambda b: bytes(b).hex(), _dec_bytes),
    "nums": _Codec(lambda xs: [int(x) for x in xs], _dec_int_list),
    "strs": _Codec(lambda xs: [str(x) for x in xs], _dec_str_list),
    "int4": _Codec(lambda xs: [hexs(int(x)) for x in xs], _dec_int4),
    "int_map": _Codec(lambda m: {str(k): hexs(int(x)) for k, x in m.items()}, _dec_int_map),
    "vmx_state": _Codec(_enc_vmx_state, _dec_vmx_state),
    "none": _Codec(lambda v: None, lambda v, key: None),
    "event": _Codec(encode_event, decode_event),
}


@dataclass(frozen=True)
class OpSpec:
    """One Backend method as recorded: does it take a cpu, its arguments, its result type."""

    cpu: bool
    args: Tuple[Tuple[str, str], ...]
    result: str


#: Every Backend query and execution-control call a recording can hold.
OPS: Dict[str, OpSpec] = {
    "processors": OpSpec(False, (), "nums"),
    "read_register": OpSpec(True, (("name", "str"),), "int"),
    "read_registers": OpSpec(True, (("names", "strs"),), "int_map"),
    "read_msr": OpSpec(True, (("index", "int"),), "int"),
    "cpuid": OpSpec(True, (("leaf", "int"), ("subleaf", "int")), "int4"),
    "read_physical": OpSpec(False, (("address", "int"), ("size", "int")), "bytes"),
    "read_virtual": OpSpec(True, (("address", "int"), ("size", "int")), "bytes"),
    "read_vmcs": OpSpec(True, (("encoding", "int"),), "int"),
    "vmx_state": OpSpec(True, (), "vmx_state"),
    "set_breakpoint": OpSpec(False, (("address", "int"), ("physical", "bool")), "num"),
    "remove_breakpoint": OpSpec(False, (("bp", "num"),), "none"),
    "go": OpSpec(False, (("timeout", "float"),), "event"),
    "step": OpSpec(True, (), "event"),
    "stop": OpSpec(False, (), "none"),
    # faults injected through the debugger (vmxdbg.trace.faults)
    "write_physical": OpSpec(False, (("address", "int"), ("data", "bytes")), "none"),
    "write_vmcs": OpSpec(True, (("encoding", "int"), ("value", "int")), "none"),
    "write_cr4": OpSpec(True, (("value", "int"),), "none"),
}
EVENT_OPS = frozenset(op for op, spec in OPS.items() if spec.result == "event")


# ------------------------------------------------------------------ records

CallKey = Tuple[str, Optional[int], Tuple[Any, ...]]


@dataclass
class Record:
    """One line between header and trailer: a call with its answer, or an event.

    `args` holds decoded argument values in the order of OPS[op].args. A call
    that failed has `error` (type, message, backend, cpu, what); a call that
    stopped the target (go, step) or an unsolicited event has `event`.
    """

    seq: int
    op: Optional[str]
    cpu: Optional[int] = None
    args: Tuple[Any, ...] = ()
    result: Any = None
    error: Optional[Dict[str, Any]] = None
    event: Optional[StopEvent] = None
    line: int = 0

    @property
    def key(self) -> CallKey:
        """What identifies the call: op, processor and arguments."""
        return (self.op or "", self.cpu, self.args)


def call_text(op: str, cpu: Optional[int], args: Tuple[Any, ...]) -> str:
    """A call as people read it: `read_msr(cpu 0, index=0x480)`."""
    spec = OPS.get(op)
    parts = [] if cpu is None else [f"cpu {cpu}"]
    names = [n for n, _ in spec.args] if spec else [f"arg{i}" for i in range(len(args))]
    for name, value in zip(names, args):
        if isinstance(value, bool) or isinstance(value, float):
            parts.append(f"{name}={value}")
        elif isinstance(value, int):
            parts.append(f"{name}={hexs(value)}")
        elif isinstance(value, tuple):
            parts.append(f"{name}=[{', '.join(str(x) for x in value)}]")
        else:
            parts.append(f"{name}={value}")
    return f"{op}({', '.join(parts)})"


def record_text(r: Record) -> str:
    """`seq 17 read_msr(cpu 0, index=0x480)`, or the event of an unsolicited one."""
    if r.op is None:
        return f"seq {r.seq} event {r.event.kind if r.event else '?'}"
    return f"seq {r.seq} {call_text(r.op, r.cpu, r.args)}"


def encode_call(op: str, cpu: Optional[int], args: Tuple[Any, ...]) -> Dict[str, Any]:
    """The JSON of a call's op, cpu and args (without seq and answer)."""
    spec = OPS[op]
    out: Dict[str, Any] = {"op": op}
    if spec.cpu:
        out["cpu"] = cpu
    if spec.args:
        out["args"] = {name: _C[typ].encode(v) for (name, typ), v in zip(spec.args, args)}
    return out


def encode_result(op: str, value: Any) -> Tuple[str, Any]:
    """("result", json) or ("event", json) for a call's answer."""
    spec = OPS[op]
    if spec.result == "event":
        return "event", encode_event(value)
    return "result", _C[spec.result].encode(value)


def record_json(r: Record) -> Dict[str, Any]:
    """A record's JSON line again (without seq): what the recorder wrote for it."""
    if r.op is None:
        return {"event": encode_event(r.event)} if r.event else {}
    out = encode_call(r.op, r.cpu, r.args)
    if r.error is not None:
        out["error"] = dict(r.error)
    else:
        key, value = encode_result(r.op, r.result)
        out[key] = value
    return out


def encode_error(exc: BaseException) -> Dict[str, Any]:
    """The JSON of a failed call's exception: type, message and, for BackendErrors, where."""
    out: Dict[str, Any] = {"type": type(exc).__name__}
    detail = getattr(exc, "detail", None)
    out["message"] = str(detail if detail is not None else exc)
    for name in ("backend", "cpu", "what"):
        v = getattr(exc, name, None)
        if v is not None:
            out[name] = v
    return out


_ARG_DECODERS: Dict[str, Tuple[Tuple[str, Callable[[Any, str], Any], str], ...]] = {
    op: tuple((name, _C[typ].decode, f"args.{name}") for name, typ in spec.args) for op, spec in OPS.items()}


def _decode_error(v: Any) -> Dict[str, Any]:
    err = _dec_obj(v, "error")
    out: Dict[str, Any] = {"type": _dec_str(err.get("type"), "error.type"),
                           "message": _dec_str(err.get("message", ""), "error.message")}
    if err.get("backend") is not None:
        out["backend"] = _dec_str(err["backend"], "error.backend")
    if err.get("cpu") is not None:
        out["cpu"] = _dec_small_int(err["cpu"], "error.cpu")
    if err.get("what") is not None:
        out["what"] = _dec_str(err["what"], "error.what")
    return out


def _decode_record(raw: Dict[str, Any], line: int) -> Record:
    """One record line's JSON, validated against OPS; _Bad names the key that is wrong."""
    seq = raw.get("seq")
    if type(seq) is not int:
        raise _Bad("seq", "missing or not an integer")
    op = raw.get("op")
    if op is None:
        if "event" not in raw:
            raise _Bad("op", "a record needs an op (a call) or an event")
        return Record(seq, None, event=decode_event(raw["event"]), line=line)
    spec = OPS.get(op) if type(op) is str else None
    if spec is None:
        if type(op) is not str:
            raise _Bad("op", f"expected a string, got {_tname(op)}")
        raise _Bad("op", f"unknown call {_short(op)} (known: {', '.join(OPS)})")
    cpu = None
    if spec.cpu:
        cpu = raw.get("cpu")
        if type(cpu) is not int or not 0 <= cpu <= 0xFFFFFFFF:
            cpu = _dec_small_int(cpu, "cpu")
    args: Tuple[Any, ...] = ()
    decoders = _ARG_DECODERS[op]
    if decoders:
        raw_args = raw.get("args", {})
        if type(raw_args) is not dict:
            raw_args = _dec_obj(raw_args, "args")
        values = []
        for name, decode, key in decoders:
            if name not in raw_args:
                raise _Bad(key, "missing")
            values.append(decode(raw_args[name], key))
        args = tuple(values)
    rec = Record(seq, op, cpu, args, line=line)
    if "error" in raw:
        rec.error = _decode_error(raw["error"])
    elif spec.result == "event":
        if "event" not in raw:
            raise _Bad("event", f"a {op} call needs its event (or an error)")
        rec.event = rec.result = decode_event(raw["event"])
    elif spec.result != "none":
        if "result" not in raw:
            raise _Bad("result", "missing (a call has a result or an error)")
        rec.result = _C[spec.result].decode(raw["result"], "result")
        _check_width(rec)
    return rec



# ------------------------------------------------------------------ reading

@dataclass
class Recording:
    """A recording read back: header, records in order, and how it ended."""

    path: str
    header: Dict[str, Any]
    records: List[Record] = field(default_factory=list)
    trailer: Optional[Dict[str, Any]] = None
    dropped_tail: bool = False   # a partial file's last, incomplete line was ignored

    @property
    def complete(self) -> bool:
        """True when the recorder closed the file (it has its trailer)."""
        return self.trailer is not None

    @property
    def command(self) -> Optional[str]:
        c = self.header.get("command")
        return c if isinstance(c, str) else None

    @property
    def argv(self) -> List[str]:
        a = self.header.get("argv")
        return [str(x) for x in a] if isinstance(a, list) else []

    @property
    def params(self) -> Dict[str, Any]:
        p = self.header.get("params")
        return p if isinstance(p, dict) else {}

    @property
    def backend(self) -> Dict[str, Any]:
        """The recorded backend's identity (`kind`, `version`, ...)."""
        b = self.header.get("backend")
        return b if isinstance(b, dict) else {}

    @property
    def capabilities(self) -> frozenset:
        caps = self.header.get("capabilities")
        return frozenset(str(c) for c in caps) if isinstance(caps, list) else frozenset()

    @property
    def last_seq(self) -> int:
        return self.records[-1].seq if self.records else 0

    def ended_early(self) -> Optional[str]:
        """None when the session ran to its end; else how it ended, e.g. "the session was
        interrupted (KeyboardInterrupt) after seq 801" or "the recorder was killed ..."."""
        if self.trailer is None:
            return (f"the recorder did not finish (killed, or still running) after seq {self.last_seq}"
                    if self.records else "the recorder did not finish (killed, or still running) before its first call")
        exc = self.trailer.get("exception")
        if exc is None:
            return None
        what = str(exc).split(":", 1)[0].strip() or "an exception"
        how = "interrupted" if what in INTERRUPTS else "ended"
        when = f"after seq {self.last_seq}" if self.records else "before its first call to the target"
        return f"the session was {how} ({one_line(str(exc)).rstrip(': ')}) {when}"

    def describe(self) -> str:
        """One line: `FILE: check recording of snapshot, 57 events, complete`."""
        state = "complete" if self.complete else f"partial (ends at seq {self.last_seq})"
        what = f"{self.command} recording" if self.command else "recording"
        return one_line(f"{self.path}: {what} of {self.backend.get('kind', '?')}, {len(self.records)} events, {state}")


def _tname(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _short(v: Any, n: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def looks_like_recording(head: bytes) -> bool:
    """Content probe (sources.py): the first line names the recording format."""
    first = head.split(b"\n", 1)[0]
    if first.startswith(b"\xef\xbb\xbf"):
        first = first[3:]
    return first.lstrip().startswith(b"{") and b'"vmxdbg-recording"' in first


def _lines(f: IO[bytes], where: str):  # type: ignore[no-untyped-def]
    """(line number, text, ended by a newline) for each line, bounded in length."""
    n = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        n += 1
        if len(raw) > MAX_LINE_BYTES:
            raise InputError(f"line longer than {MAX_LINE_BYTES} bytes", source=where, line=n)
        ended = raw.endswith(b"\n")
        try:
            text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            if not ended:
                yield n, None, False  # a torn multi-byte character at a partial file's end
                continue
            raise InputError("not UTF-8 text", source=where, line=n) from None
        yield n, text, ended


def read_recording(path: Union[str, os.PathLike], *, partial: bool = False) -> Recording:
    """Read and validate a recording.

    A file without its trailer (a `.partial` left by a recorder that did not
    finish, or a cut-off file) is refused unless `partial` is true; then every
    complete line is read, a last line without its newline is dropped, and
    `Recording.complete` is False. InputError names the file and line.
    """
    p = Path(path)
    where = str(p)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"file is {size} bytes, more than the {MAX_FILE_BYTES} a recording may have",
                             source=where)
        f = open(p, "rb")
    except OSError as exc:
        raise InputError(exc.strerror or str(exc), source=where) from None
    with f, gc_paused():
        return _parse(_lines(f, where), where, partial)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: records hold no cycles, and a collector
    that rescans every record read so far makes reading a large file several times slower."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _partial_error(where: str, rec: Recording, how: str) -> InputError:
    return InputError(f"partial recording ({how}: the recorder did not finish); pass --partial to read "
                      f"its {len(rec.records)} complete events", source=where)


def _parse(lines, where: str, partial: bool) -> Recording:  # type: ignore[no-untyped-def]
    rec: Optional[Recording] = None
    expect_seq = 1
    last_line = 0
    loads = json.loads
    for n, text, ended in lines:
        last_line = n
        if not ended:
            # only the last line can lack its newline: a write cut short
            if rec is None:
                raise InputError("truncated in the header: not a complete recording", source=where, line=n)
            if rec.trailer is not None:
                raise InputError("data after the end trailer", source=where, line=n)
            if not partial:
                raise _partial_error(where, rec, f"line {n} is cut off")
            rec.dropped_tail = True
            break
        try:
            data = loads(text)
        except RecursionError:
            raise InputError("JSON nested too deeply", source=where, line=n) from None
        except ValueError as exc:
            msg = getattr(exc, "msg", "invalid JSON")
            raise InputError(f"not JSON ({msg})", source=where, line=n) from None
        if rec is None:
            rec = Recording(path=where, header=validate(data, "recording-header", where, line=n))
            continue
        if rec.trailer is not None:
            if text.strip():
                raise InputError("data after the end trailer", source=where, line=n)
            continue
        if not isinstance(data, dict):
            raise InputError(f"expected a JSON object, got {_tname(data)}", source=where, line=n)
        if data.get("end") is True:
            count = validate(data, "recording-trailer", where, line=n)["events"]
            if count != len(rec.records):
                raise InputError(f"the end trailer says {count} events, the file has {len(rec.records)}",
                                 source=where, line=n, key="events")
            rec.trailer = data
            continue
        try:
            r = _decode_record(data, n)
        except _Bad as bad:
            raise InputError(bad.message, source=where, line=n, key=bad.key) from None
        if r.seq != expect_seq:
            raise InputError(f"expected seq {expect_seq}, got {r.seq}", source=where, line=n, key="seq")
        expect_seq += 1
        rec.records.append(r)
    if rec is None:
        raise InputError("empty file: not a vmxdbg recording", source=where)
    if rec.trailer is None and not partial:
        raise _partial_error(where, rec, f"no end trailer after line {last_line}")
    return rec


# ------------------------------------------------------------------ writing

def new_header(backend: Dict[str, Any], capabilities: List[str], *, command: Optional[str] = None,
               argv: Optional[List[str]] = None, params: Optional[Dict[str, Any]] = None,
               target: Optional[Dict[str, Any]] = None, producer: Optional[str] = None) -> Dict[str, Any]:
    """A header for a new recording (docs/formats.md); None parts are left out."""
    h: Dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "producer": producer or f"vmxdbg {__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backend": dict(backend), "capabilities": sorted(capabilities),
    }
    if target:
        h["target"] = target
    if command is not None:
        h["command"] = command
    if argv is not None:
        h["argv"] = [str(a) for a in argv]
    if params:
        h["params"] = params
    return h


class RecordTooLarge(InputError):
    """A record longer than MAX_LINE_BYTES: it is refused, not written."""

    def __init__(self, size: int, where: str) -> None:
        super().__init__(f"a record of {size} bytes is more than a recording line may hold ({MAX_LINE_BYTES})",
                         source=where)
        self.size = size


class RecordingWriter:
    """Writes a recording line by line to `PATH.partial`; `close()` renames it to PATH.

    Every line is flushed to the operating system as it is written, so a
    process killed at any point leaves a `.partial` whose complete lines are
    all valid. close() writes the trailer, syncs and renames atomically.
    """

    def __init__(self, path: Union[str, os.PathLike], header: Dict[str, Any]) -> None:
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        refuse_special_output(self.path, "recording")
        self.events = 0
        self.closed = False
        try:
            self._f = open(self.partial_path, "w", encoding="utf-8", newline="\n")
        except OSError as exc:
            raise InputError(f"cannot write the recording: {exc.strerror or exc}", source=str(self.partial_path)) from None
        self._line(header)

    def _line(self, obj: Dict[str, Any]) -> None:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n"
        if len(text) > MAX_LINE_BYTES:  # ASCII: json.dumps escapes everything else
            raise RecordTooLarge(len(text), str(self.partial_path))
        self._f.write(text)
        self._f.flush()

    def write(self, record: Dict[str, Any]) -> int:
        """Write one record (seq is assigned here); returns its seq."""
        if self.closed:
            raise ValueError("recording already closed")
        seq = self.events + 1
        with interrupt.held():      # the line and the count that the trailer states go together
            self._line({"seq": seq, **record})
            self.events = seq
        return seq

    def abandon(self) -> None:
        """Stop writing without a trailer or rename (another writer takes the same path over)."""
        if not self.closed:
            self.closed = True
            self._f.close()

    def close(self, **trailer_extra: Any) -> Path:
        """Write the trailer, sync, rename PATH.partial to PATH; returns PATH. Idempotent."""
        if not self.closed:
            self.closed = True
            try:
                self._line({"end": True, "events": self.events, **trailer_extra})
                os.fsync(self._f.fileno())
            finally:
                self._f.close()
            os.replace(self.partial_path, self.path)
        return self.path
