"""The fuzzing harness shared by tests/test_fuzz_*.py and bench/fuzz_readers.py.

Every reader vmxdbg has is one entry of READERS: a seed corpus (real files
from recordings/, vmxdbg/examples/, structs/, and recordings made here by
vmxdbg's own recorder), a generator of fresh inputs, and a function that
feeds one input to the reader the way the CLI would (reader, then the checks
and the renderers on what it gave). `run_one` runs one input under a time
bound and judges the outcome:

- allowed: the reader returns (a report, a parsed object), or raises a
  VmxdbgError whose message is one non-empty line naming the input file
  (for file readers) -- never another exception type;
- a crash: any other exception (with its traceback kept for the report), a
  VmxdbgError with a message of several lines or one that does not name the
  file, an input that runs longer than the time bound (`Hang`, raised by a
  SIGALRM timer), or one whose peak memory grows by more than MEMORY_LIMIT.

Mutations (`mutate`) are bit flips, byte changes, truncation, duplication,
removal and swapping of lines, splicing with another real file, hostile
tokens (huge numbers, deep nesting, long lines, NUL, BOMs, path traversal,
format strings, YAML tags), re-encoding (CRLF, CR, UTF-16 with and without
BOM) and JSON-aware value replacement. Everything is driven by a
random.Random seeded by the caller, so a run is reproducible.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
for _p in (str(TESTS), str(ROOT)):   # this tree's vmxdbg, whatever is installed
    if _p not in sys.path:
        sys.path.insert(0, _p)

from vmxdbg.common.errors import VmxdbgError, one_line  # noqa: E402

TIME_LIMIT = 5.0                  # seconds one input may take (a hang past this is a crash)
MEMORY_LIMIT = 512 * 1024 * 1024  # bytes the peak RSS may grow by during one input
MAX_SEED_BYTES = 1024 * 1024      # mutants are built from seeds up to this size


class Hang(BaseException):
    """Raised by the SIGALRM timer: an input ran past its time bound.

    A BaseException, so that a reader's `except Exception` cannot swallow it."""


class Escaped(BaseException):
    """Raised by the audit hook: a reader tried to write outside its directory, start a
    process, open a socket or unpickle while it ran on fuzzed input."""


# -- the sandbox: an audit hook (PEP 578) that refuses what no reader may do ---------------------
_CONFINED: List[Path] = []      # while a reader runs: the one directory it may write in
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_FORBIDDEN = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
              "socket.connect", "socket.bind", "pickle.find_class", "ctypes.dlopen",
              "os.kill", "os.killpg", "webbrowser.open")
_PATH_EVENTS = {"os.rename": (0, 1), "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,),
                "os.chown": (0,), "os.truncate": (0,), "os.symlink": (0, 1), "os.link": (0, 1), "os.utime": (0,),
                "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.move": (0, 1)}


def _inside(path: Any) -> bool:
    if isinstance(path, int):          # a file descriptor already open
        return True
    try:
        p = Path(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    full = Path(os.path.abspath(p))
    return "__pycache__" in full.parts or any(full == d or d in full.parents for d in _CONFINED)


def _audit(event: str, args: Tuple[Any, ...]) -> None:
    if not _CONFINED:
        return
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            (isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writes and not _inside(path):
            raise Escaped(f"write outside {_CONFINED[0]}: open({path!r}, {mode!r})")
    elif event in _PATH_EVENTS:
        for i in _PATH_EVENTS[event]:
            if i < len(args) and not _inside(args[i]):
                raise Escaped(f"{event}{tuple(args)!r} outside {_CONFINED[0]}")
    elif event.startswith(_FORBIDDEN):
        raise Escaped(f"{event}{str(tuple(args))[:200]}")


sys.addaudithook(_audit)


@contextlib.contextmanager
def confined(directory: Path) -> Iterator[None]:
    """Run the block with `directory` as the current and only writable directory."""
    old = os.getcwd()
    _CONFINED[:] = [Path(os.path.abspath(directory))]
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(old)
        _CONFINED.clear()


# ------------------------------------------------------------------ hostile tokens

HUGE_DIGITS = "9" * 5000
TOKENS: Tuple[str, ...] = (
    "0", "-1", "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1.5", "true", "false", "null",
    "18446744073709551616", "340282366920938463463374607431768211456", HUGE_DIGITS,
    '"0x' + "f" * 17 + '"', '"0x' + "f" * 80 + '"', '"' + "f" * 70 + '"', '"0n' + "9" * 70 + '"',
    '"0y' + "1" * 80 + '"', '"0n\u00b2"', '"0n\u0661\u0662"', '"\u00b2"', '"\u0661"', '"\u0967\u0968"',
    '"1f`"', '"`"', '"0x"', '"0n"', '"0y"', '""', '" "', '"-0x1"', '"+1"', '"0x1_0"', '"\\u0000"',
    '"\\ud800"', '"..\\/..\\/..\\/etc\\/passwd"', '"../../../../tmp/vmxdbg-pwned"', '"/etc/passwd"',
    '"%s%s%n%x{0}{__class__}"', '"{0.__class__.__mro__}"', '"$(touch /tmp/vmxdbg-pwned)"',
    '"`touch /tmp/vmxdbg-pwned`"', '"!!python/object/apply:os.system [\\"id\\"]"',
    '"__import__(\\"os\\").system(\\"id\\")"', '"\\n\\r\\u2028"', '"a\\nb"',
    "[" * 200 + "]" * 200, "[" * 100000, "{" * 100000, '{"a":' * 3000 + "1" + "}" * 3000,
    "[]", "{}", "[1,2,3,4]", '["0x1","0x2","0x3","0x4"]', '{"0x480": "0x1"}',
)
YAML_TOKENS: Tuple[str, ...] = (
    "!!python/object/apply:os.system [\"touch /tmp/vmxdbg-pwned\"]",
    "!!python/name:os.system", "!!python/object/new:os.system [id]", "!!binary AAAA", "!!set {a, b}",
    "&a [*a, *a]", "*undefined", "&x 1", "<<: *x", "? complex\n: key", "[" * 2000, "{" * 2000,
    "1:2:3", "0b101", "0o17", "0x_1", ".inf", ".nan", "~", "yes", "no", "2023-06-01", "'''", '"\\x00"',
    HUGE_DIGITS, "- " * 500 + "x", "%YAML 1.1", "--- !tag", "\t\t", "\x00",
)
TEXT_TOKENS: Tuple[str, ...] = (
    "\x00", "\r", "\n", "\r\n", "\ufeff", "\u2028", "\x1b[2J", "`", "0n", "0x", "L", "L?", "L0n99999999",
    "ffffffff`ffffffff", "00000000`00000000", "fffff800`04289000", HUGE_DIGITS[:300], "kd> ", "0: kd> ",
    "4294967295: kd> ", "99999: kd> ", "~99999s", ".cxr", ".trap 1", "r cr4=1", "rM 0", "?" * 64,
)
ENCODINGS = ("utf-16-le", "utf-16-be", "utf-16", "utf-8-sig", "latin-1")


# ------------------------------------------------------------------ mutations

def _lines(data: bytes) -> List[bytes]:
    return data.splitlines(keepends=True) or [data]


def _flip(rnd: random.Random, data: bytes, **_: Any) -> bytes:
    if not data:
        return bytes([rnd.randrange(256)])
    b = bytearray(data)
    for _ in range(rnd.randrange(1, 9)):
        b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
    return bytes(b)


def _set_byte(rnd: random.Random, data: bytes, **_: Any) -> bytes:
    if not data:
        return b"\x00"
    b = bytearray(data)
    for _ in range(rnd.randrange(1, 5)):
        b[rnd.randrange(len(b))] = rnd.choice(b'\x00\xff\x7f\x80"{}[],:\n\r\\`0x9fL#')
    return bytes(b)


def _truncate(rnd: random.Random, data: bytes, **_: Any) -> bytes:
    return data[:rnd.randrange(len(data) + 1)]


def _duplicate_lines(rnd: random.Random, data: bytes, **_: Any) -> bytes:
    lines = _lines(data)
    i = rnd.randrange(len(lines))
    j = min(len(lines), i + rnd.randrange(1, 4))
    times = rnd.choice((1, 1, 2, 50))
    return b"".join(lines[:j] + lines[i:j] * times + lines[j:])


def _delete_lines(rnd: random.Random, data: bytes, **_: Any) -> bytes:
    lines = _lines(data)
    i = rnd.randrange(len(lines))
    return b"".join(lines[:i] + lines[i + rnd.randrange(1, 3):])


def _swap_lines(rnd: random.Random, data: bytes, **_: Any) -> bytes:
    lines = _lines(data)
    if len(lines) < 2:
        return data + data
    i, j = rnd.randrange(len(lines)), rnd.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"".join(lines)


def _splice(rnd: random.Random, data: bytes, *, others: Sequence[bytes] = (), **_: Any) -> bytes:
    other = rnd.choice(others) if others else data
    a, b = rnd.randrange(len(data) + 1), rnd.randrange(len(other) + 1)
    if rnd.random() < 0.5:   # at line boundaries, so both halves stay locally well-formed
        la, lb = _lines(data), _lines(other)
        return b"".join(la[:rnd.randrange(len(la) + 1)] + lb[rnd.randrange(len(lb) + 1):])
    return data[:a] + other[b:]


def _insert_token(rnd: random.Random, data: bytes, *, tokens: Sequence[str] = TOKENS, **_: Any) -> bytes:
    tok = rnd.choice(tokens).encode("utf-8", "surrogatepass")
    at = rnd.randrange(len(data) + 1)
    if rnd.random() < 0.5:   # replace what follows, up to the next delimiter
        m = re.compile(rb"[,}\]\n]").search(data, at)
        end = m.start() if m else len(data)
        return data[:at] + tok + data[end:]
    return data[:at] + tok + data[at:]


def _long_line(rnd: random.Random, data: bytes, **_: Any) -> bytes:
    at = rnd.randrange(len(data) + 1)
    filler = rnd.choice((b"0", b"f", b" ", b"a", b"\x00", b'"'))
    return data[:at] + filler * rnd.choice((70000, 1 << 20, 3 << 20)) + data[at:]


def _reencode(rnd: random.Random, data: bytes, **_: Any) -> bytes:
    text = data.decode("utf-8", "replace")
    how = rnd.randrange(4)
    if how == 0:
        return text.replace("\n", "\r\n").encode("utf-8")
    if how == 1:
        return text.replace("\n", "\r").encode("utf-8")
    enc = rnd.choice(ENCODINGS)
    return text.encode(enc, "replace")


ANCHORS = "".join(f"{c}: &{c} [" + ", ".join([f"*{p}" if p else "0x1f"] * 9) + "]\n"
                  for p, c in zip([""] + list("abcd"), "abcde"))   # *e: 9^5 values once expanded


def _yaml_alias(rnd: random.Random, data: bytes, **_: Any) -> bytes:
    """Anchors up front, then an alias (or a whole bomb) where a value was."""
    text = data.decode("utf-8", "replace")
    spots = [m.end() for m in re.finditer(r": ", text)]
    if spots:
        at = rnd.choice(spots)
        end = text.find("\n", at)
        end = len(text) if end < 0 else end
        text = text[:at] + rnd.choice(("*a", "*c", "*e", "[*e, *e, *e]")) + text[end:]
    return (ANCHORS + text).encode()


def _json_value(rnd: random.Random, data: bytes, **_: Any) -> bytes:
    """Replace one value (or key) somewhere inside a JSON document or JSON line."""
    lines = _lines(data)
    i = rnd.randrange(len(lines))
    try:
        tree = json.loads(lines[i])
    except (ValueError, RecursionError):
        return _insert_token(rnd, data)
    nodes: List[Tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k in list(node):
                nodes.append((node, k))
                walk(node[k])
        elif isinstance(node, list):
            for k in range(len(node)):
                nodes.append((node, k))
                walk(node[k])
    walk(tree)
    if not nodes:
        return _insert_token(rnd, data)
    parent, key = rnd.choice(nodes)
    marker = "@@FUZZ@@"
    if rnd.random() < 0.5 and isinstance(parent[key], (str, int)) and not isinstance(parent[key], bool):
        parent[key] = _plausible(rnd, parent[key])    # same type, another value: gets past the type checks
        end = b"\n" if lines[i].endswith(b"\n") else b""
        lines[i] = json.dumps(tree, separators=(",", ":")).encode() + end
        return b"".join(lines)
    if isinstance(parent, dict) and rnd.random() < 0.3:
        value = parent.pop(key)
        parent[marker] = value                      # a key changed
        text = json.dumps(tree).replace(f'"{marker}"', rnd.choice(TOKENS) if rnd.random() < 0.3
                                        else json.dumps(rnd.choice(("", "0x1", "0n1", "x" * 100, "1" * 5000))))
    else:
        parent[key] = marker
        text = json.dumps(tree).replace(f'"{marker}"', rnd.choice(TOKENS))
    end = b"\n" if lines[i].endswith(b"\n") else b""
    lines[i] = text.encode("utf-8", "surrogatepass") + end
    return b"".join(lines)


INTERESTING = (0, 1, 2, 3, 4, 7, 8, 0xF, 0x10, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0x7FFF, 0x8000, 0xFFFF,
               0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 48, (1 << 63) - 1, 1 << 63, (1 << 64) - 1,
               1 << 64, 1 << 100)


def _plausible(rnd: random.Random, value: Any) -> Any:
    """Another value of the same JSON type: a hex string stays a hex string, a number a number."""
    n = rnd.choice(INTERESTING) if rnd.random() < 0.7 else rnd.getrandbits(rnd.choice((8, 32, 64)))
    if isinstance(value, str) and value.startswith("0x"):
        if rnd.random() < 0.3 and 2 < len(value) < 40 and all(c in "0123456789abcdefABCDEF" for c in value[2:]):
            return hex(n ^ int(value, 16))
        return hex(n)
    if isinstance(value, str) and value and all(c in "0123456789abcdef" for c in value) and len(value) % 2 == 0:
        b = bytearray(bytes.fromhex(value))     # hex bytes (memory, code): flip one
        if b:
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        return b.hex() if rnd.random() < 0.8 else b.hex()[:rnd.randrange(len(value) + 1)]
    if isinstance(value, str):
        return rnd.choice(("", "x", value * 2, value[:-1], "0x1", "cr0", "rip", "root", "launched", "breakpoint"))
    return rnd.choice((n, -n, value + 1, value - 1, 0))


def gentle(rnd: random.Random, data: bytes, changes: int = 2) -> bytes:
    """A mutant that keeps the format: values replaced by others of their type (JSON), or hex
    digits changed (text). Reaches past the parsers into the checks and the renderers."""
    for _ in range(changes):
        lines = _lines(data)
        i = rnd.randrange(len(lines))
        try:
            tree = json.loads(lines[i])
        except (ValueError, RecursionError):
            hexes = list(re.finditer(rb"[0-9a-f]{2,}", lines[i]))
            if hexes:
                m = rnd.choice(hexes)
                at = rnd.randrange(m.start(), m.end())
                lines[i] = lines[i][:at] + bytes([rnd.choice(b"0123456789abcdef")]) + lines[i][at + 1:]
            data = b"".join(lines)
            continue
        nodes: List[Tuple[Any, Any]] = []

        def walk(node: Any) -> None:
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            for k, v in list(items):
                if isinstance(v, (str, int)) and not isinstance(v, bool) and k not in ("format", "seq", "op", "end"):
                    nodes.append((node, k))
                walk(v)
        walk(tree)
        if nodes:
            parent, key = rnd.choice(nodes)
            parent[key] = _plausible(rnd, parent[key])
            end = b"\n" if lines[i].endswith(b"\n") else b""
            lines[i] = json.dumps(tree, indent=None if end or len(lines) > 1 else 1).encode() + end
        data = b"".join(lines)
    return data


def fix_recording(data: bytes) -> bytes:
    """Renumber seq from 1 and make the trailer's count right, so a mutant gets past both checks."""
    out, seq = [], 0
    for line in data.split(b"\n"):
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            out.append(line)
            continue
        if isinstance(obj, dict) and "seq" in obj:
            seq += 1
            obj["seq"] = seq
            line = json.dumps(obj, separators=(",", ":")).encode()
        elif isinstance(obj, dict) and obj.get("end") is True:
            obj["events"] = seq
            line = json.dumps(obj, separators=(",", ":")).encode()
        out.append(line)
    return b"\n".join(out)


MUTATORS: Tuple[Callable[..., bytes], ...] = (
    _flip, _set_byte, _truncate, _duplicate_lines, _delete_lines, _swap_lines, _splice, _insert_token,
    _long_line, _reencode, _json_value,
)
TEXT_MUTATORS: Tuple[Callable[..., bytes], ...] = (
    _flip, _set_byte, _truncate, _duplicate_lines, _delete_lines, _swap_lines, _splice, _insert_token,
    _long_line, _reencode,
)


def mutate(rnd: random.Random, data: bytes, others: Sequence[bytes] = (), *, json_aware: bool = True,
           tokens: Sequence[str] = TOKENS, rounds: int = 0) -> bytes:
    """One mutant of `data`: 1-3 mutations (long lines at most once, output capped at 4 MiB)."""
    pool = MUTATORS if json_aware else TEXT_MUTATORS
    if tokens is YAML_TOKENS:
        pool = pool + (_yaml_alias, _yaml_alias)
    for _ in range(rounds or rnd.choice((1, 1, 1, 2, 3))):
        m = rnd.choice(pool)
        if m is _long_line and len(data) > 1 << 20:
            m = _flip
        data = m(rnd, data, others=others, tokens=tokens)
        if len(data) > 4 << 20:
            data = data[:4 << 20]
    return data


# ------------------------------------------------------------------ seeds

def _read(p: Path) -> bytes:
    return p.read_bytes()[:MAX_SEED_BYTES]


@dataclass
class Corpus:
    """Real inputs by kind; recordings are made here with vmxdbg's own recorder."""

    snapshots: List[bytes] = field(default_factory=list)
    reports: List[bytes] = field(default_factory=list)
    recordings: List[bytes] = field(default_factory=list)
    traces: List[bytes] = field(default_factory=list)
    kdlogs: List[bytes] = field(default_factory=list)
    layouts: List[bytes] = field(default_factory=list)
    dumps: List[bytes] = field(default_factory=list)
    structs: Dict[str, bytes] = field(default_factory=dict)
    regions: List[Tuple[bytes, int]] = field(default_factory=list)   # (snapshot with memory, VMCS address)
    trace_recording: Any = None     # the last trace, read (for the replay console's state)

    def all_files(self) -> List[bytes]:
        return self.snapshots + self.reports + self.recordings + self.traces + self.kdlogs + self.layouts + self.dumps


_CORPUS: Optional[Corpus] = None


def corpus() -> Corpus:
    """The seed corpus (built once per process, in a temporary directory)."""
    global _CORPUS
    if _CORPUS is None:
        _CORPUS = _build_corpus()
    return _CORPUS


def _build_corpus() -> Corpus:
    import tempfile

    from fake_live import CODE, PROGRAM, FakeLive
    from vmxdbg.backends.snapshot_backend import SnapshotBackend
    from vmxdbg.decode.layouts import builtin_directory, known_layouts
    from vmxdbg.decode.loader import default_directory
    from vmxdbg.decode.probe import probe_dump_text, tag_for_width
    from vmxdbg.record.recorded import record_check
    from vmxdbg.record.recording import read_recording
    from vmxdbg.report.model import dumps_report
    from vmxdbg.rules import check_snapshot
    from vmxdbg.state.snapshot import load_snapshot
    from vmxdbg.trace.session import run_trace, trace_report_json

    c = Corpus()
    snaps = sorted((ROOT / "vmxdbg" / "examples").glob("*.vmxsnap.json")) + \
        sorted((ROOT / "recordings").rglob("*.vmxsnap.json"))
    c.snapshots = [_read(p) for p in snaps]
    c.kdlogs = [_read(p) for p in sorted((ROOT / "recordings").rglob("*.log"))]
    for p in sorted((ROOT / "recordings").rglob("*.vmxrec.jsonl")):   # real sessions: Bochs traces, WinDbg
        data = _read(p)
        (c.traces if b'"command":"trace"' in data.split(b"\n", 1)[0] else c.recordings).append(data)
    c.reports = [_read(p) for p in sorted((ROOT / "recordings").rglob("*.expected.json"))]
    with tempfile.TemporaryDirectory(prefix="vmxdbg-fuzz-seeds-") as tmp:
        t = Path(tmp)
        for i, p in enumerate(snaps):
            snap = load_snapshot(p)
            c.reports.append(dumps_report(check_snapshot(snap)).encode())
            out = t / f"c{i}.vmxrec.jsonl"
            record_check(SnapshotBackend(snap), out, source=p.name, argv=["check", p.name])
            c.recordings.append(_read(out))
            for addr in sorted({q.vmcs_pointer for q in snap.processors.values() if q.vmcs_pointer}):
                if snap.memory.read(addr, 8) is not None:
                    c.regions.append((c.snapshots[i], addr))
        for cores, broken in ((1, False), (2, True)):
            fake = FakeLive(cores=cores)
            if broken:
                fake.cpus[1].registers["cr4"] &= ~0x2000
            out = t / f"t{cores}.vmxrec.jsonl"
            results = run_trace(fake, {CODE: PROGRAM}, record=out)
            c.traces.append(_read(out))
            c.trace_recording = read_recording(out)
            c.reports.append(json.dumps(trace_report_json(results)).encode())
    # VMCS regions in a known layout: the vmentry baseline's fields written in Bochs' layout
    for lay in known_layouts()[:1]:
        for i, raw in enumerate(c.snapshots):
            tree = json.loads(raw)
            for cpu, p in tree.get("processors", {}).items():
                if p.get("vmcs") and p.get("vmcs_pointer"):
                    values = {int(k, 16): int(v, 16) for k, v in p["vmcs"].items() if int(k, 16) in lay.by_encoding}
                    tree["memory"][p["vmcs_pointer"]] = lay.build(values).hex()
                    c.regions.insert(0, (json.dumps(tree, indent=1).encode(), int(p["vmcs_pointer"], 16)))
                    break
    c.layouts = [_read(p) for p in sorted(builtin_directory().glob("*.yaml"))]
    for lay in known_layouts()[:2]:
        region = lay.build({s.encoding: tag_for_width(s.encoding) for s in lay.slots})
        c.dumps.append(probe_dump_text(region, lay.revision_id, {0x2030: "err=12"}, prefix="[cpu0] ").encode())
        c.dumps.append(region)
    d = default_directory()
    c.structs = {p.name: p.read_bytes() for p in sorted(d.glob("*.yaml"))}
    return c


# ------------------------------------------------------------------ generators

def _hexval(rnd: random.Random) -> Any:
    r = rnd.random()
    if r < 0.5:
        return hex(rnd.choice((0, 1, 0x3A, 0x480, 0x80050033, 0x3726F8, 0xFFFFFFFF, 1 << 63, (1 << 64) - 1,
                               rnd.getrandbits(64))))
    if r < 0.7:
        return rnd.getrandbits(rnd.choice((3, 16, 64, 70)))
    if r < 0.85:
        return rnd.choice(("0n12", "00da0400`00000004", "1f", "0y101", "", "zz", "0x", "-1", "1" * 70))
    return rnd.choice((None, True, [], {}, 1.5, "0x" + "f" * 20))


def gen_snapshot(rnd: random.Random) -> bytes:
    """A snapshot-shaped JSON document with random values in the right places and the wrong ones."""
    from vmxdbg.common.statekeys import SEGMENTS, TABLES
    procs: Dict[str, Any] = {}
    for _ in range(rnd.randrange(0, 4)):
        regs: Dict[str, Any] = {n: _hexval(rnd) for n in rnd.sample(("cr0", "cr3", "cr4", "rflags", "efer",
                                                                     "dr7", "rip", "zz"), rnd.randrange(8))}
        for s in rnd.sample(SEGMENTS + TABLES, rnd.randrange(4)):
            regs[s] = {k: _hexval(rnd) for k in ("selector", "base", "limit", "attributes")[:rnd.randrange(5)]}
        p = {
            "cpuid": {hex(rnd.choice((0, 1, 7, 0x80000001))): [_hexval(rnd) for _ in range(rnd.choice((4, 4, 3)))]
                      for _ in range(rnd.randrange(3))},
            "msr": {hex(rnd.choice((0x3A, 0x480, 0x481, 0x482, 0x486, 0x487, 0x488, 0x489, 0xC0000080))): _hexval(rnd)
                    for _ in range(rnd.randrange(8))},
            "registers": regs,
            "state": {k: rnd.choice((0, 3, 4, True, False, "root", "off", "non-root", "x", None))
                      for k in rnd.sample(("cpl", "a20m", "smm", "smx", "vmx", "blocking_by_mov_ss"), rnd.randrange(4))},
            "vmxon_pointer": _hexval(rnd), "vmcs_pointer": _hexval(rnd),
            "vmcs_launch_state": rnd.choice(("clear", "launched", "x", None)),
            "vmcs": {hex(rnd.choice((0x6800, 0x4002, 0x4012, 0x681E, 0x2800, 0x0802))): _hexval(rnd)
                     for _ in range(rnd.randrange(6))},
        }
        procs[str(rnd.choice((0, 1, 2, 4095, 1 << 40)))] = p
    tree = {"format": "vmxdbg-snapshot", "version": rnd.choice((1, "1", "1.7", 2, None)), "processors": procs,
            "memory": {hex(rnd.getrandbits(rnd.choice((12, 32, 64)))): rnd.choice(("0400000000000000", "zz", "0",
                                                                                  "00" * 4096))
                       for _ in range(rnd.randrange(3))}}
    return json.dumps(tree).encode()


def gen_recording(rnd: random.Random, partial: bool = False) -> bytes:
    """A recording: a header, random calls of every op with random answers, maybe a trailer."""
    from vmxdbg.record.recording import OPS
    header = {"format": "vmxdbg-recording", "version": 1, "backend": {"kind": "fuzz"},
              "capabilities": rnd.sample(["registers", "msr", "cpuid", "physical", "virtual", "vmcs", "vmx_state",
                                          "execution"], rnd.randrange(9)),
              "command": rnd.choice(("check", "trace", None, 7)),
              "params": rnd.choice(({}, {"cpus": [0, 1]}, {"vmxon_pointers": {"0": "0x1000"}}, {"cpus": "x"},
                                    {"code": {"0x401000": "f30fc77424080f01c2f4"}, "max_stops": 5}))}
    lines = [json.dumps(header)]
    n = rnd.randrange(0, 30)
    for seq in range(1, n + 1):
        op = rnd.choice(list(OPS))
        spec = OPS[op]
        rec: Dict[str, Any] = {"seq": seq, "op": op}
        if spec.cpu:
            rec["cpu"] = rnd.choice((0, 1, 0, "0x1", -1, 1 << 40))
        args: Dict[str, Any] = {}
        for name, typ in spec.args:
            args[name] = {"int": _hexval(rnd), "str": rnd.choice(("cr0", "cs.base", "rip", "")),
                          "strs": ["cr0", "cr4"], "bool": rnd.choice((True, False, 1)),
                          "float": rnd.choice((1.0, 30.0, -1, "x")), "num": rnd.choice((0, 1, "0x2"))}.get(typ, None)
        if args:
            rec["args"] = args
        r = rnd.random()
        if r < 0.15:
            rec["error"] = {"type": rnd.choice(("NotAvailable", "TargetGone", "Weird")), "message": "m\nn",
                            "cpu": 0}
        elif spec.result == "event":
            rec["event"] = {"kind": rnd.choice(("breakpoint", "step", "exited", "")), "cpu": rnd.choice((0, 1)),
                            "address": _hexval(rnd)}
        elif spec.result != "none":
            rec["result"] = {"int": _hexval(rnd), "nums": [0, 1], "int_map": {"cr0": _hexval(rnd)},
                             "int4": [_hexval(rnd) for _ in range(4)], "bytes": rnd.choice(("00" * 8, "zz", "")),
                             "vmx_state": {"vmx": rnd.choice(("root", "off", "x")), "cpl": _hexval(rnd),
                                           "vmcs_pointer": _hexval(rnd),
                                           "vmcs_launch_state": rnd.choice(("clear", "launched", "bogus"))},
                             "num": rnd.choice((1, "0x1"))}.get(spec.result, None)
        lines.append(json.dumps(rec))
    if not partial:
        lines.append(json.dumps({"end": True, "events": n}))
    return ("\n".join(lines) + "\n").encode()


KD_PIECES = (
    "0: kd> ", "1: kd> ", "kd> ", "lkd> ", "~1s", "rdmsr 480", "msr[480] = 00da0400`00000004", "rdmsr 3a",
    "msr[3a] = 00000000`00000005", "r", "r cr4", "cr4=00000000003506f8", "r cr0", "cr0=0000000080050033",
    "rM 80", "efl=00000246", "cs=0010  ss=0018  ds=002b  es=002b  fs=0053  gs=002b",
    "iopl=0         nv up ei pl zr na po nc", ".formats cr4", "  Hex:     00000000`00b50ef8",
    "!dq 1a2b3000", "#1a2b3000 00000000`00000004 00000000`00000000", "db fffff800`04289000",
    "fffff800`04289000  00 00 00 00 00 9b 20 00-ff ff 00 00 00 93 cf 00  ...... .........",
    "dg 10", "0010 00000000`00000000 00000000`00000000 Code RE Ac 0 Nb By P  Lo 0000029b",
    ".cxr ffff", ".cxr", ".trap 1", "g", "t", "!cpuid", " 0  6,158,10  GenuineIntel  3192",
    "? @cr0", "Evaluate expression: 2147811379 = 00000000`80050033", "!analyze -v", "!vmxcheck",
    "Physical memory read at 1000 failed", "dp 1000 L1", "00001000  00000000`00000001",
)


def gen_kdlog(rnd: random.Random) -> bytes:
    parts = [rnd.choice(KD_PIECES + TEXT_TOKENS) + rnd.choice(("\n", "\r\n", "\r", " ", ""))
             for _ in range(rnd.randrange(1, 120))]
    return "".join(parts).encode(rnd.choice(("utf-8", "utf-8", "utf-16-le", "utf-16")), "replace")


def gen_report(rnd: random.Random) -> bytes:
    procs: Dict[str, Any] = {}
    for _ in range(rnd.randrange(3)):
        procs[rnd.choice(("0", "1", "x", "\u00b2", "9" * 30))] = [
            {"instruction": rnd.choice(("vmxon", "vmlaunch", 3)), "outcome": rnd.choice(("ok", "#UD", None)),
             "possible": rnd.choice((["ok"], "ok", [1, None])),
             "findings": rnd.choice(([], [{"id": "VMXON001", "status": "fail", "inputs": ["reg:cr4", 3, None]}],
                                     [{"id": 1, "status": "bad"}], "x", [None]))}
            for _ in range(rnd.randrange(3))]
    tree = {"format": "vmxdbg-report", "version": rnd.choice((1, "1", 2, None, [])), "processors": procs}
    return json.dumps(tree).encode()


def gen_layout(rnd: random.Random) -> bytes:
    import yaml
    fields = []
    for _ in range(rnd.randrange(0, 12)):
        f: Dict[str, Any] = {"encoding": rnd.choice((0x6800, 0x4002, 0x0800, 0x2000, 0x6801, 0xFFFF, -1, "x")),
                             "name": rnd.choice(("GUEST_CR0", "X", "bad name", 5))}
        if rnd.random() < 0.8:
            f["offset"] = rnd.choice((8, 16, 0x1000, 0xFFF, -8, 1 << 70, "0x10"))
        if rnd.random() < 0.2:
            f["size"] = rnd.choice((1, 2, 4, 8, 3, 16))
        if rnd.random() < 0.2:
            f["transform"] = rnd.choice(("ar_rotate8", "ar_pack16", "nope"))
        fields.append(f)
    lay: Dict[str, Any] = {"name": rnd.choice(("fuzz", "", 3)), "revision_id": rnd.choice((0x2B, 1 << 40, "0x7")),
                           "size": rnd.choice((0x1000, 8, 7, 1 << 20)), "sources": rnd.choice((["x"], [], "x", [1])),
                           "fields": fields}
    if rnd.random() < 0.3:
        lay["grid"] = {"base": 8, "group_stride": rnd.choice((0, 1, 0x100)), "slot_stride": 8, "slots": 16}
    if rnd.random() < 0.3:
        lay["extras"] = rnd.choice(([{"name": "launch_state", "offset": 0x10, "size": 4, "values": {0: "clear"}}],
                                    5, "x", [3], {"a": 1}))
    return yaml.safe_dump({"layout": lay}).encode()


def gen_dump(rnd: random.Random) -> bytes:
    lines = []
    streams = ("", "[cpu0] ", "[cpu1] ")
    for _ in range(rnd.randrange(1, 40)):
        s = rnd.choice(streams)
        kind = rnd.choice(("begin", "data", "data", "data", "fail", "end", "bogus"))
        if kind == "begin":
            lines.append(f"{s}vmxprobe begin revision={rnd.choice(('0x2b', '0x1', 'zz', ''))}")
        elif kind == "data":
            off = rnd.choice((0, 8, 0x20, 0xFE0, 0xFFF, 0x1000, 1 << 40))
            lines.append(f"{s}vmxprobe data 0x{off:x} " + rnd.getrandbits(8 * 32).to_bytes(32, "little").hex())
        elif kind == "fail":
            lines.append(f"{s}vmxprobe fail 0x{rnd.getrandbits(16):x} err=12")
        else:
            lines.append(f"{s}vmxprobe {kind}")
    return ("\n".join(lines) + "\n").encode()


VALUE_ALPHABET = "0123456789abcdefABCDEFxXnNyY`_ \t-+L\u00b2\u0661\u0967\uff11."


def gen_value(rnd: random.Random) -> str:
    r = rnd.random()
    if r < 0.3:
        return rnd.choice(("0x80050033", "80050033", "00da0400`00000004", "0n123", "0y101", "1f", "0X1F",
                           " 0x1 ", "0n", "0x", "", "`", "0n\u00b2", "\u00b2", "0y2", HUGE_DIGITS[:80]))
    n = rnd.choice((1, 3, 8, 17, 70))
    return "".join(rnd.choice(VALUE_ALPHABET) for _ in range(rnd.randrange(n + 1)))


KD_COMMANDS = ("r", "r cr0", "r cr0, cr4", "r efl", "r gdtr", "r cs", "r zz", "rdmsr 480", "rdmsr 3a",
               "rdmsr IA32_VMX_BASIC", "rdmsr", "!db 1a2b3000", "!dq 1a2b3000 L4", "!dd 0 L0n16", "!dq 0 L?",
               "!vmread 6800", "!vmread GUEST_CR0", "!vmread", "!vmxcheck", "!vmxcheck -v", "!vmxcheck cpu 1",
               "!vmxcheck rule VMXON002", "~", "~0", "~1s", "~0s", "t", "p", "g", "t-", "p-", "g-", "tb", "!tt 1",
               "!stops", "help", "?", "q", "t 3")


def gen_kdcmd(rnd: random.Random) -> str:
    lines = []
    for _ in range(rnd.randrange(1, 5)):
        words = rnd.choice(KD_COMMANDS).split(" ")
        if rnd.random() < 0.5:
            i = rnd.randrange(len(words))
            words[i] = rnd.choice((gen_value(rnd), rnd.choice(TEXT_TOKENS), "L" + gen_value(rnd),
                                   HUGE_DIGITS[:rnd.choice((10, 70, 400))], "0x" + "f" * 17, "L0x100000"))
        lines.append(" ".join(words))
    return "\n".join(lines)


# ------------------------------------------------------------------ readers

@dataclass
class Reader:
    """One reader: its seeds, how to make fresh inputs, how to run one input.

    `run(data, workdir)` returns what the reader gave; `names_file` says an
    error must name the input's file name (`FILE_NAMES[reader]`)."""

    name: str
    seeds: Callable[[Corpus], List[bytes]]
    generate: Callable[[random.Random], bytes]
    run: Callable[[bytes, Path], Any]
    names_file: bool = True
    json_aware: bool = True
    tokens: Sequence[str] = TOKENS
    fixup: Optional[Callable[[bytes], bytes]] = None   # applied to half the mutants (e.g. renumber a recording)
    mutable: bool = True     # False: inputs are the seeds and generated ones only (structured inputs)


def _write(workdir: Path, name: str, data: bytes) -> Path:
    p = workdir / name
    p.write_bytes(data)
    return p


def _check_and_render(snap: Any) -> Any:
    from vmxdbg.report.render import render
    from vmxdbg.rules import check_snapshot
    report = check_snapshot(snap)
    for fmt in ("text", "json", "dml"):
        render(report, snap, fmt, verbose=True)
    return report


def run_snapshot(data: bytes, workdir: Path) -> Any:
    from vmxdbg.state.snapshot import load_snapshot
    return _check_and_render(load_snapshot(_write(workdir, "in.vmxsnap.json", data)))


def run_report(data: bytes, workdir: Path) -> Any:
    from vmxdbg.report.render import render
    from vmxdbg.report.model import load_report
    rep = load_report(_write(workdir, "in.expected.json", data))
    render(rep, None, "json")
    return rep


def run_recording(data: bytes, workdir: Path) -> Any:
    from vmxdbg.record.recorded import snapshot_of
    from vmxdbg.record.recording import read_recording
    rec = read_recording(_write(workdir, "in.vmxrec.jsonl", data))
    rec.describe()
    return _check_and_render(snapshot_of(rec))


def run_partial(data: bytes, workdir: Path) -> Any:
    from vmxdbg.record.replay import ReplayBackend
    from vmxdbg.state.collect import collect
    from vmxdbg.console.kdcmds import KdState, execute
    from vmxdbg.common.errors import BackendError
    from vmxdbg.record.recorded import snapshot_of
    from vmxdbg.record.recording import read_recording
    rec = read_recording(_write(workdir, "in.vmxrec.jsonl.partial", data), partial=True)
    rec.describe()
    _check_and_render(snapshot_of(rec))
    keyed = ReplayBackend(rec, strict=False)
    for k in sorted({0, keyed.stop_count() // 2, keyed.stop_count()}):
        keyed.seek(k)
        try:
            collect(keyed)
        except BackendError:
            pass
    state = KdState(ReplayBackend(rec, strict=False), source=str(rec.path))
    for line in ("!stops", "g", "r", "t-", "!vmxcheck"):
        try:
            execute(state, line)
        except VmxdbgError:
            pass
    return rec


def run_trace(data: bytes, workdir: Path) -> Any:
    from vmxdbg.record.recording import read_recording
    from vmxdbg.trace.session import render_trace, replay_trace, trace_report_json
    rec = read_recording(_write(workdir, "in.vmxrec.jsonl", data))
    results = replay_trace(rec)
    render_trace(results, verbose=True)
    json.dumps(trace_report_json(results))
    return results


def run_kdlog(data: bytes, workdir: Path) -> Any:
    from vmxdbg.inputs.kdlog import parse_file
    log = parse_file(_write(workdir, "in.log", data))
    for w in log.warnings:
        w.format(log.source)
    return _check_and_render(log.snapshot)


def run_any(data: bytes, workdir: Path) -> Any:
    from vmxdbg.inputs.sources import load_any
    options: Dict[str, Any] = {"partial": True, "warn": lambda log: None}
    return _check_and_render(load_any(_write(workdir, "in.input", data), options))


def run_vmcs(data: bytes, workdir: Path) -> Any:
    from vmxdbg.commands.vmcs import show_region
    from vmxdbg.decode.regions import snapshot_reader
    from vmxdbg.state.snapshot import load_snapshot
    path = _write(workdir, "in.vmxsnap.json", data)
    snap = load_snapshot(path)
    addrs = sorted({p.vmcs_pointer for p in snap.processors.values() if p.vmcs_pointer is not None}
                   | {p.vmxon_pointer for p in snap.processors.values() if p.vmxon_pointer is not None})
    out = []
    for addr in addrs[:3]:
        for asked in ("vmcs", "vmxon"):
            out.append(show_region(addr, snapshot_reader(snap), snap, asked=asked, cpu=None, fmt="text",
                                   verbose=True, source=str(path)))
    return out


def run_structs(data: bytes, workdir: Path, *, which: Optional[str] = None, rnd_pick: int = 0) -> Any:
    """Write structs/ with one file replaced by `data` and load every definition table from it."""
    from vmxdbg.decode.loader import FILES, load_definitions
    from vmxdbg.rules import msrvalues
    from vmxdbg.rules.guest import segments as guest_segments
    c = corpus()
    d = workdir / "structs"
    if not d.is_dir():
        d.mkdir()
        for name, raw in c.structs.items():
            (d / name).write_bytes(raw)
    names = list(FILES) + [guest_segments.FILE, msrvalues.FILE]
    target = which or names[rnd_pick % len(names)]
    original = c.structs[target]
    (d / target).write_bytes(data)
    try:
        if target in FILES:
            return load_definitions(d)
        if target == guest_segments.FILE:
            return guest_segments.load_table(str(d))
        return msrvalues.load_table(d)
    finally:
        (d / target).write_bytes(original)


def run_layout(data: bytes, workdir: Path) -> Any:
    from vmxdbg.decode.layouts import load_layout
    lay = load_layout(_write(workdir, "in.yaml", data))
    region = lay.build({s.encoding: 0x1234 for s in lay.slots})
    lay.parse(region)
    lay.parse(region[: len(region) // 2])
    return lay


def run_dump(data: bytes, workdir: Path) -> Any:
    from vmxdbg.decode import defs
    from vmxdbg.decode.probe import learn, read_dump
    dump = read_dump(_write(workdir, "in.probe.txt", data))
    return learn(dump, [(f.encoding, f.name) for f in defs.vmcs_fields()])


def run_value(data: bytes, workdir: Path) -> Any:
    from vmxdbg.common.numbers import parse_int
    return parse_int(data.decode("utf-8", "replace"), what="value")


_STATES: Dict[str, Any] = {}


def _kd_states() -> List[Any]:
    """A snapshot-backed and a replay-backed (recorded stops) KdState, each made fresh."""
    from vmxdbg.record.replay import ReplayBackend
    from vmxdbg.backends.snapshot_backend import SnapshotBackend
    from vmxdbg.console.kdcmds import KdState
    from vmxdbg.state.snapshot import snapshot_from_json
    c = corpus()
    if "snap" not in _STATES:
        _STATES["snap"] = json.loads(c.snapshots[[i for i, s in enumerate(c.snapshots) if b'"vmcs"' in s][0]])
    snap = snapshot_from_json(_STATES["snap"], "fuzz snapshot")
    return [KdState(SnapshotBackend(snap), snapshot_of=lambda _s: snap, source="fuzz snapshot"),
            KdState(ReplayBackend(c.trace_recording, strict=False), source="fuzz recording")]


KD_SCRIPT_LINES = 20     # console lines per input: a session, not a load test


def run_kdcmd(data: bytes, workdir: Path) -> Any:
    from vmxdbg.console.kdcmds import execute
    out = []
    lines = data.decode("utf-8", "replace").split("\n")[:KD_SCRIPT_LINES]
    for state in _kd_states():
        for line in lines:
            try:
                out.append(execute(state, line))
            except VmxdbgError as exc:
                _judge_error(exc, None)   # a bad command is one line, whatever else the script does
    return out


# -- the CLI, in process ----------------------------------------------------------------------------

WRITES = ("--bochs", "--record", "--history")   # live targets and files the CLI would write: never fuzzed


# no NUL: an argument list from the operating system cannot hold one
ARG_TOKENS = ("0", "1", "-1", "0x10", "0n3", "zz", "", " ", "--cpu", "--at", "--format", "xml", "json", "--partial",
              "-v", "--as", "vmxon", "--layout", "nope", "../../etc/passwd", "/dev/null", "/nonexistent/x",
              "%s%n", "{0}", "\x01\x1b[2J", "\u00b2", HUGE_DIGITS[:100], "0x" + "f" * 40, "L?", "msr", "vmcs-field",
              "cr0", "GUEST_CR0", "primary", "--list", "-h", "--no-check", "-c", "q", "--source", "learn", "list",
              "--assume", "vmx=root", "smx=maybe", "cpl=7", "rule", "VMXON", "a20m=1",
              "@SNAP", "@REC", "@LOG", "@TRACE", "@VSNAP", "@DUMP", "@PARTIAL", "/dev/zero", "/proc/self/mem")
CLI_TEMPLATES: Tuple[Tuple[str, ...], ...] = (
    ("check", "@SNAP"), ("check", "@REC", "--format", "json"), ("check", "@LOG", "--at", "12", "--format", "dml"),
    ("check", "@SNAP", "--cpu", "1", "-v"), ("check", "@PARTIAL", "--partial"), ("check", "@TRACE"),
    ("snapshot", "@LOG", "-o", "@OUT.vmxsnap.json"), ("snapshot", "@REC", "-o", "@OUT.vmxsnap.json", "--at", "3"),
    ("caps", "@SNAP"), ("caps", "@REC", "--cpu", "0"),
    ("decode", "msr", "0x480", "00da0400`00000004"), ("decode", "cr4", "0x3726f8"),
    ("decode", "primary", "0x8401e172"), ("decode", "vmcs-field", "0x6800", "0x80000031"),
    ("decode", "--list"), ("decode", "IA32_VMX_BASIC", "0xda040000000004"),
    ("vmcs", "@VMCS", "--source", "@VSNAP"), ("vmcs", "@VMCS", "--source", "@VSNAP", "--as", "vmxon"),
    ("vmcs", "@VMCS", "--source", "@VSNAP", "--format", "json", "--cpu", "0"),
    ("vmcs", "@VMCS", "--source", "@VSNAP", "--layout", "bochs", "--no-check"),
    ("trace", "--replay", "@TRACE"), ("trace", "--replay", "@TRACE", "--format", "json", "-v"),
    ("replay", "@TRACE", "-c", "!stops;g;r;!vmxcheck;t-"), ("replay", "@SNAP", "-c", "r;rdmsr 480;!dq 0"),
    ("layout", "list"), ("layout", "fields", "--nasm"), ("layout", "learn", "@DUMP", "-o", "@OUT.layout.yaml"),
    ("rule", "VMXON002"), ("rule", "--list"), ("check", "@LOG", "--assume", "vmx=off", "--assume", "cpl=0"),
    ("windbg-setup", "--python", "3.9"),
)
#: placeholder -> (file name, corpus attribute, index): the real files a CLI input names
CLI_FILES = {"@SNAP": ("snap.vmxsnap.json", "snapshots", -1), "@VSNAP": ("region.vmxsnap.json", "regions", 0),
             "@REC": ("check.vmxrec.jsonl", "recordings", 0), "@PARTIAL": ("check.vmxrec.jsonl.partial", "recordings", 1),
             "@LOG": ("session.log", "kdlogs", 0), "@TRACE": ("trace.vmxrec.jsonl", "traces", -1),
             "@DUMP": ("probe.txt", "dumps", 0)}


def _cli_file(c: Corpus, placeholder: str) -> bytes:
    _, attr, i = CLI_FILES[placeholder]
    items = getattr(c, attr)
    data = items[i][0] if attr == "regions" else items[i]
    return data[:len(data) * 2 // 3] if placeholder == "@PARTIAL" else data


def gen_cli(rnd: random.Random) -> bytes:
    """A CLI input: an argument list of some command, tokens changed, maybe one of its files mutated."""
    argv = list(rnd.choice(CLI_TEMPLATES))
    for _ in range(rnd.choice((0, 1, 1, 2, 3))):
        op = rnd.randrange(4)
        i = rnd.randrange(len(argv))
        if op == 0:
            argv[i] = rnd.choice(ARG_TOKENS)
        elif op == 1 and len(argv) > 1:
            del argv[i]
        elif op == 2:
            argv.insert(i, rnd.choice(ARG_TOKENS))
        else:
            argv.append(rnd.choice(ARG_TOKENS))
    doc: Dict[str, Any] = {"argv": argv}
    named = [a for a in argv if a in CLI_FILES]
    if named and rnd.random() < 0.6:
        which = rnd.choice(named)
        c = corpus()
        doc["mutant"] = which
        doc["data"] = mutate(rnd, _cli_file(c, which), c.all_files()).hex()
    return json.dumps(doc).encode()


class CliContractBroken(Exception):
    """A CLI run ended other than as the contract says (see judge_cli)."""


def run_cli_input(data: bytes, workdir: Path) -> Any:
    """Write the files a CLI input names, run `vmxdbg ARGV` in process, judge it."""
    doc = json.loads(data)
    c = corpus()
    files = {}
    for ph, (name, _, _) in CLI_FILES.items():
        raw = bytes.fromhex(doc["data"]) if doc.get("mutant") == ph else _cli_file(c, ph)
        (workdir / name).write_bytes(raw)
        files[ph] = str(workdir / name)
    files["@VMCS"] = hex(c.regions[0][1])
    argv = [files.get(a) or (str(workdir / ("out" + a[4:])) if a.startswith("@OUT") else a) for a in doc["argv"]]
    if not safe_argv(argv) or not _output_inside(argv, workdir):
        return None
    res = run_cli(argv)
    # the error names a file given, or an argument typed (an option, a value, a subcommand)
    names = [Path(files[a]).name for a in doc["argv"] if a in CLI_FILES] + [a for a in argv if a]
    names += ["."] if "" in argv else []     # argparse's Path("") is "."
    problem = judge_cli(res, names)
    if problem is not None:
        raise CliContractBroken(f"vmxdbg {' '.join(argv)[:300]}: {problem}")
    return res


def safe_argv(argv: Sequence[str]) -> bool:
    """False for arguments that would start a live target or write a file the fuzzer did not name."""
    for a in argv:
        if a.startswith("--") and len(a) > 2 and any(w.startswith(a.split("=")[0]) for w in WRITES):
            return False
    return True


def _output_inside(argv: List[str], workdir: Path) -> bool:
    """False when the command, as vmxdbg's own parser reads `argv`, would write outside `workdir`.

    (The sandbox refuses such a write anyway; this keeps the fuzzer from asking for one.)"""
    from vmxdbg import cli
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            args = cli.build_parser().parse_args(argv)
    except SystemExit:
        return True                      # argparse refuses it: nothing runs
    out = getattr(args, "output", None)
    return out is None or Path(os.path.abspath(workdir / out)).parent == Path(os.path.abspath(workdir))


@dataclass
class CliResult:
    status: int
    stdout: str
    stderr: str


def run_cli(argv: List[str]) -> CliResult:
    """vmxdbg.cli.main(argv) in this process, its output captured; SystemExit gives its code."""
    from vmxdbg import cli
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as exc:   # argparse: --help (0) or a usage error (2)
            status = exc.code if isinstance(exc.code, int) else 2
            err.write("\n(argparse)\n")
    return CliResult(status, out.getvalue(), err.getvalue())


def judge_cli(res: CliResult, names: Sequence[str] = ()) -> Optional[str]:
    """None when a CLI run ended as the contract says, else what was wrong.

    0 or 1 with output; 2 with exactly one `vmxdbg: ` error line on stderr
    (warnings and notes aside) naming one of `names` when given; argparse's
    usage errors are exit 2 with its usage text. Never a traceback."""
    if "Traceback" in res.stderr or "Traceback" in res.stdout:
        return "traceback:\n" + res.stderr[-3000:]
    if res.stderr.endswith("(argparse)\n"):
        return None if res.status in (0, 2) else f"argparse exit {res.status}"
    if res.status == 0:          # (`replay FILE -c ""` runs nothing and says nothing: fine)
        return None
    if res.status == 1:
        return None if res.stdout or res.stderr else "exit 1 without saying why"
    if res.status != 2:
        return f"exit status {res.status}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if not ln.startswith(("vmxdbg: warning:", "vmxdbg: note:"))]
    if len(errors) != 1 or not errors[0].startswith("vmxdbg"):
        return f"exit 2 with {len(errors)} error lines: {errors[:3]!r}"
    low = errors[0].lower()
    if names and not any(one_line(n).lower() in low for n in names) and not re.search(r"0x[0-9a-f]+|'", low):
        return f"exit 2, the error names none of {list(names)}: {errors[0][:300]!r}"
    return None


# ------------------------------------------------------------------ the registry

def _seeds_any(c: Corpus) -> List[bytes]:
    return c.snapshots + c.recordings + c.traces + c.kdlogs


def _gen_any(rnd: random.Random) -> bytes:
    return rnd.choice((gen_snapshot, gen_recording, gen_kdlog))(rnd)


def _structs_seeds(c: Corpus) -> List[bytes]:
    return [c.structs[n] for n in sorted(c.structs) if n in STRUCTS_FILES]


STRUCTS_FILES = ("controls.yaml", "registers.yaml", "vmcs_fields.yaml", "regions.yaml", "guest_segments.yaml",
                 "msr_values.yaml")


def _run_structs_any(data: bytes, workdir: Path) -> Any:
    """The file is told by its top-level key; unknown content goes to controls.yaml."""
    head = data[:4000]
    for name, key in (("registers.yaml", b"registers:"), ("vmcs_fields.yaml", b"vmcs_fields:"),
                      ("regions.yaml", b"regions:"), ("guest_segments.yaml", b"kinds:"),
                      ("msr_values.yaml", b"msrs:"), ("controls.yaml", b"controls:")):
        if key in head:
            return run_structs(data, workdir, which=name)
    return run_structs(data, workdir, which="controls.yaml")


def _gen_structs(rnd: random.Random) -> bytes:
    c = corpus()
    return mutate(rnd, c.structs[rnd.choice(STRUCTS_FILES)], json_aware=False, tokens=YAML_TOKENS)


READERS: Dict[str, Reader] = {r.name: r for r in (
    Reader("snapshot", lambda c: c.snapshots, gen_snapshot, run_snapshot),
    Reader("report", lambda c: c.reports, gen_report, run_report),
    Reader("recording", lambda c: c.recordings + c.traces, gen_recording, run_recording, fixup=fix_recording),
    Reader("partial", lambda c: c.recordings + c.traces, lambda r: gen_recording(r, partial=True), run_partial,
           fixup=fix_recording),
    Reader("trace", lambda c: c.traces, gen_recording, run_trace, fixup=fix_recording),
    Reader("kdlog", lambda c: c.kdlogs, gen_kdlog, run_kdlog, json_aware=False, tokens=TEXT_TOKENS),
    Reader("any", _seeds_any, _gen_any, run_any, fixup=fix_recording),
    Reader("vmcs", lambda c: [s for s, _ in c.regions], gen_snapshot, run_vmcs),
    Reader("structs", _structs_seeds, _gen_structs, _run_structs_any, json_aware=False, tokens=YAML_TOKENS),
    Reader("layout", lambda c: c.layouts, gen_layout, run_layout, json_aware=False, tokens=YAML_TOKENS),
    Reader("probe", lambda c: c.dumps, gen_dump, run_dump, json_aware=False, tokens=TEXT_TOKENS),
    Reader("value", lambda c: [v.encode() for v in ("0x80050033", "00da0400`00000004", "0n123", "1f", "0y101")],
           lambda r: gen_value(r).encode("utf-8", "surrogatepass"), run_value, names_file=False,
           json_aware=False, tokens=TEXT_TOKENS),
    Reader("cli", lambda c: [json.dumps({"argv": list(t)}).encode() for t in CLI_TEMPLATES], gen_cli,
           run_cli_input, names_file=False, mutable=False),
    Reader("kdcmd", lambda c: [k.encode() for k in KD_COMMANDS], lambda r: gen_kdcmd(r).encode(), run_kdcmd,
           names_file=False, json_aware=False, tokens=TEXT_TOKENS),
)}


# ------------------------------------------------------------------ running one input

@dataclass
class Outcome:
    """What one input did: `crash` is None when the result was allowed."""

    reader: str
    ok: bool                 # the reader returned (False: it raised an allowed VmxdbgError)
    seconds: float
    crash: Optional[str] = None
    error: Optional[str] = None


def _judge_error(exc: VmxdbgError, names: Optional[Sequence[str]]) -> Optional[str]:
    msg = str(exc)
    if not msg.strip():
        return f"{type(exc).__name__} with an empty message"
    if "\n" in msg or "\r" in msg:
        return f"{type(exc).__name__} message of several lines: {msg[:300]!r}"
    if names and not any(n in msg for n in names):
        return f"{type(exc).__name__} does not name the file ({names[0]}): {msg[:300]!r}"
    if re.search(r"<[a-zA-Z_.]+ object at 0x|<built-in", msg):
        return f"{type(exc).__name__} shows a Python object: {msg[:300]!r}"
    return None


@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Raise Hang in the block after `seconds` (SIGALRM; main thread only, else unbounded)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _ring(signum: int, frame: Any) -> None:
        raise Hang()
    old = signal.signal(signal.SIGALRM, _ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_one(reader: Reader, data: bytes, workdir: Path, *, time_limit: float = TIME_LIMIT) -> Outcome:
    """Run one input; judge it (see the module doc). Never raises but for KeyboardInterrupt."""
    names = ["in."] if reader.names_file else None
    corpus()                       # built outside the sandbox (it writes its recordings in a temp dir)
    before = _peak_rss()
    t0 = time.perf_counter()
    crash = error = None
    ok = False
    try:
        with time_bound(time_limit), confined(workdir):
            reader.run(data, workdir)
        ok = True
    except Hang:
        crash = f"hang: more than {time_limit} s"
    except Escaped as exc:
        crash = f"escaped the sandbox: {exc}"
    except VmxdbgError as exc:
        error = str(exc)
        crash = _judge_error(exc, names if reader.name != "structs" else ["structs"])
    except KeyboardInterrupt:
        raise
    except BaseException as exc:   # noqa: B902 - every other exception is the crash we look for
        crash = f"{type(exc).__name__}: {str(exc)[:300]}\n" + "".join(traceback.format_exc(limit=-8))
    seconds = time.perf_counter() - t0
    if crash is None and seconds > time_limit:
        crash = f"hang: {seconds:.1f} s (the time bound could not interrupt it)"
    grown = _peak_rss() - before
    if crash is None and grown > MEMORY_LIMIT:
        crash = f"memory: peak RSS grew by {grown >> 20} MiB"
    return Outcome(reader.name, ok, seconds, crash, error)


def inputs(reader: Reader, rnd: random.Random, count: int, *, generated: float = 0.3) -> Iterator[bytes]:
    """`count` inputs for `reader`: the seeds first, then mutants of seeds and generated ones."""
    c = corpus()
    seeds = reader.seeds(c) or [reader.generate(rnd)]
    others = c.all_files() + seeds
    n = 0
    for s in seeds:
        if n >= count:
            return
        yield s
        n += 1
    while n < count:
        r = rnd.random()
        if reader.mutable and generated <= r < generated + 0.25:
            data = gentle(rnd, rnd.choice(seeds), rnd.choice((1, 2, 4)))   # the format kept: deeper
        elif not reader.mutable or r < generated:
            data = reader.generate(rnd)
            if reader.mutable and rnd.random() < 0.5:
                data = mutate(rnd, data, others, json_aware=reader.json_aware, tokens=reader.tokens)
        else:
            data = mutate(rnd, rnd.choice(seeds), others, json_aware=reader.json_aware, tokens=reader.tokens)
        if reader.fixup is not None and rnd.random() < 0.5:
            data = reader.fixup(data)
        yield data
        n += 1


def clean(workdir: Path) -> None:
    """Empty `workdir` between inputs (the reader's file and anything it made)."""
    for p in workdir.iterdir():
        if p.is_dir() and p.name != "structs":
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file():
            p.unlink()


def fuzz(reader_name: str, count: int, seed: int, workdir: Path, *, time_limit: float = TIME_LIMIT,
         keep: Optional[Path] = None) -> Tuple[List[Outcome], List[Tuple[bytes, Outcome]]]:
    """Run `count` inputs through one reader; returns every outcome and the crashing inputs."""
    reader = READERS[reader_name]
    rnd = random.Random(f"{reader_name}:{seed}")
    outcomes, crashes = [], []
    for i, data in enumerate(inputs(reader, rnd, count)):
        o = run_one(reader, data, workdir, time_limit=time_limit)
        outcomes.append(o)
        if o.crash is not None:
            crashes.append((data, o))
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"{reader_name}-{seed}-{i}.bin").write_bytes(data)
        clean(workdir)
    return outcomes, crashes


