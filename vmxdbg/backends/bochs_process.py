"""A bochs-bin process and its internal debugger, driven over pipes.

BochsProcess starts `bochs-bin -q -f bochsrc` headless in a private temporary
directory (the bochsrc comes from `machine_rc`), then talks to the debugger:
each command is written to stdin and the answer read from stdout up to the
next prompt `<bochs:N> `.  Every wait has a deadline.  A command that gets no
prompt in time, or a Bochs that exits, raises TargetGone (and Bochs is
killed); `run()` (for `c`) is the one command allowed to outlast its time: it
sends SIGINT, which brings the prompt back, and says it did.

The guest's port 0xE9 bytes arrive on the same stdout, interleaved with the
debugger's answers; Bochs' log (VMFAIL:, VMXON:, ...) goes to a file that
`read_log()` tails.  Bochs is killed on close(), at interpreter exit, and
(Linux) when the process that started it dies (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import atexit
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

from ..common.errors import BackendError, TargetGone

BACKEND = "bochs"
PROMPT = re.compile(rb"<bochs:(\d+)> $")
BATCH_MARK = 0x7E570000     # `? BATCH_MARK+i` separates the answers of a sourced batch (commands())
RUNS_GUEST = ("c", "s", "cont", "continue", "step")   # commands that run the guest (SIGINT stops them)
DEFAULT_BXSHARE = "/usr/share/bochs"


@dataclass(frozen=True)
class BochsMachine:
    """The emulated machine: what `machine_rc` turns into a bochsrc."""

    floppy: str                          # a 1.44 MB boot floppy image ("" with `cdrom`)
    cpus: int = 2
    cpu_model: str = "corei7_skylake_x"
    megs: int = 64
    magic_break: bool = True
    bxshare: str = DEFAULT_BXSHARE       # BIOS-bochs-latest, VGABIOS-lgpl-latest
    ignore_bad_msrs: bool = False        # False: unknown MSRs #GP, as on hardware
    cdrom: str = ""                      # a bootable ISO: boot from it instead of the floppy
    serial: str = ""                     # a file COM1's output goes to ("": no COM1)
    ips: int = 0                         # emulated instructions per second (0: Bochs' default)
    restore: str = ""                    # a folder of a state saved by `save_state`: start from it (-r)


_RC_UNSAFE = re.compile(r"[\s,\"#]")


def machine_rc(machine: BochsMachine, log_path: str) -> str:
    """The bochsrc text for `machine`, logging to `log_path` (headless, port 0xE9 on)."""
    for what, path in (("floppy", machine.floppy), ("log", log_path), ("bxshare", machine.bxshare),
                       ("cdrom", machine.cdrom), ("serial", machine.serial), ("restore", machine.restore)):
        if _RC_UNSAFE.search(path):
            raise BackendError(f"{what} path {path!r}: a bochsrc cannot take spaces, commas, quotes or #",
                               backend=BACKEND)
    if not 1 <= machine.cpus <= 32:
        raise BackendError(f"cpus={machine.cpus}: expected 1-32", backend=BACKEND)
    if not re.fullmatch(r"[a-z0-9_]+", machine.cpu_model):
        raise BackendError(f"cpu model {machine.cpu_model!r} is not a Bochs model name", backend=BACKEND)
    if machine.cdrom:
        media = [f"ata0-master: type=cdrom, path={machine.cdrom}, status=inserted", "boot: cdrom"]
    else:
        media = [f"floppya: 1_44={machine.floppy}, status=inserted", "boot: floppy"]
    if machine.serial:
        media.append(f"com1: enabled=1, mode=file, dev={machine.serial}")
    ips = f", ips={int(machine.ips)}" if machine.ips else ""
    return "\n".join([
        f"megs: {int(machine.megs)}",
        f"romimage: file={machine.bxshare}/BIOS-bochs-latest",
        f"vgaromimage: file={machine.bxshare}/VGABIOS-lgpl-latest",
        *media,
        f"cpu: model={machine.cpu_model}, count={machine.cpus}, "
        f"ignore_bad_msrs={int(machine.ignore_bad_msrs)}{ips}",
        'display_library: rfb, options="timeout=0"',
        "port_e9_hack: enabled=1",
        f"magic_break: enabled={int(machine.magic_break)}",
        f"log: {log_path}",
        "error: action=report",
        "panic: action=fatal",
        "speaker: enabled=0",
        "mouse: enabled=0",
        "",
    ])


def find_bochs() -> str:
    """Path of bochs-bin (the debugger-enabled binary), or TargetGone saying how to get it."""
    path = shutil.which("bochs-bin")
    if not path:
        raise TargetGone("bochs-bin not found on PATH (Debian: apt-get install bochs bochsbios vgabios)",
                         backend=BACKEND)
    return path


_LIVE: "weakref.WeakSet[BochsProcess]" = weakref.WeakSet()


def _kill_all_at_exit() -> None:
    for p in list(_LIVE):
        p.kill()


atexit.register(_kill_all_at_exit)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: atexit and close() still kill it
        pass


class BochsProcess:
    """One bochs-bin under our control, stopped at a debugger prompt between commands."""

    def __init__(self, machine: BochsMachine, *, bochs: Optional[str] = None,
                 startup_timeout: float = 30.0, command_timeout: float = 10.0) -> None:
        self.command_timeout = command_timeout
        self.bochs = bochs or find_bochs()
        self._tmp = tempfile.TemporaryDirectory(prefix="vmxdbg-bochs-")
        self.workdir = Path(self._tmp.name)
        self.log_path = self.workdir / "bochs.log"
        self.rc_path = self.workdir / "bochsrc"
        self.rc_path.write_text(machine_rc(machine, str(self.log_path)))
        restore: List[str] = []
        if machine.restore:
            view = session_copy_of_state(Path(machine.restore), self.workdir / "state", str(self.log_path),
                                         machine.serial)
            restore = ["-r", str(view)]
        self._buf = bytearray()
        self._log_offset = 0
        self._log_partial = b""
        self.transcript: List[Tuple[str, str]] = []   # (command, answer) for diagnostics
        self.prompt_number = 0
        self.pending: Optional[str] = None   # a command whose prompt has not been read yet
        self._sourced = 0                    # files of commands written for `source`
        self._source_fds: List[int] = []     # the two files `source` reads, kept open (_run_file)
        self._source_runs = False            # the file being sourced runs the guest (a step)
        with open(self.workdir / "stderr.txt", "wb") as err:
            self.proc = subprocess.Popen(
                [self.bochs, "-q", "-f", str(self.rc_path), *restore], cwd=self.workdir,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True, preexec_fn=_die_with_parent)
        _LIVE.add(self)
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        try:
            self.banner = self._until_prompt(time.monotonic() + startup_timeout, "start-up")
        except BaseException:
            self.kill()
            raise

    # ------------------------------------------------------------ status
    @property
    def alive(self) -> bool:
        """True while bochs-bin runs."""
        return self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _gone(self, what: str) -> TargetGone:
        status = self.proc.poll()
        tail = bytes(self._buf[-300:]).decode("latin-1").strip().replace("\n", " | ")
        why = f"exited with status {status}" if status is not None else "stopped answering"
        said = self.panic_line()
        self.kill()
        return TargetGone(f"Bochs {why} during {what}" + (f" (Bochs says: {said})" if said else "")
                          + (f"; last output: {tail}" if tail else ""), backend=BACKEND)

    def panic_line(self) -> Optional[str]:
        """The last PANIC or FATAL line of Bochs' log (why it ended), without its prefix."""
        try:
            lines = self.log_path.read_bytes()[-8192:].decode("latin-1").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            m = re.search(r"\b(PANIC|FATAL)\b\W*(.*)", line)
            if m:
                return f"{m.group(1)} {m.group(2).strip()}"
        return None

    # ------------------------------------------------------------ I/O
    def _read_some(self, deadline: float) -> bool:
        """Append what stdout has (waiting until deadline); False on timeout, TargetGone on EOF."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if not self._sel.select(left):
            return False
        try:
            chunk = os.read(self.proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
        except BlockingIOError:
            return True
        if not chunk:     # stdout closed: Bochs is ending; give it a moment so its status is known
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
            raise self._gone(f"`{self.pending}`" if self.pending else "a read")
        self._buf += chunk
        return True

    def _until_prompt(self, deadline: float, what: str) -> str:
        """Everything up to (not including) the next prompt; TargetGone at the deadline."""
        while True:
            m = PROMPT.search(self._buf)
            if m:
                out = bytes(self._buf[:m.start()]).decode("latin-1")
                self.prompt_number = int(m.group(1))
                del self._buf[:]
                return out
            if not self._read_some(deadline):
                if time.monotonic() >= deadline:
                    raise self._gone(f"{what} (no prompt within the time limit)")

    def _send(self, cmd: str) -> None:
        if "\n" in cmd or "\r" in cmd:
            raise BackendError(f"debugger command {cmd!r} holds a line break", backend=BACKEND)
        if not self.alive:
            raise self._gone(f"`{cmd}`")
        try:
            self.proc.stdin.write(cmd.encode("ascii") + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            raise self._gone(f"`{cmd}`") from None

    @staticmethod
    def _strip_echo(cmd: str, out: str) -> str:
        first, nl, rest = out.partition("\n")
        return rest if first.strip() == cmd.strip() else out

    def command(self, cmd: str, timeout: Optional[float] = None) -> str:
        """Run one debugger command that returns promptly; its answer without echo or prompt."""
        if self.pending is not None:
            raise BackendError(f"`{cmd}` while `{self.pending}` has not answered (call resync)",
                               backend=BACKEND)
        self._send(cmd)
        self.pending = cmd
        out = self._strip_echo(cmd, self._until_prompt(
            time.monotonic() + (timeout or self.command_timeout), f"`{cmd}`"))
        self.pending = None
        self.transcript.append((cmd, out))
        del self.transcript[:-200]
        return out

    def commands(self, cmds: List[str], timeout: Optional[float] = None) -> List[str]:
        """Several commands that return promptly, run together from one sourced file (one
        exchange): their answers, in order.

        A sourced file's commands are not echoed and share one prompt, so each is preceded by
        `? MARK+i`, whose answer (Bochs' calculator prints the value in hex and decimal,
        bx_dbg_calc_command) separates it from the one before. Only for commands the caller
        built itself (see source())."""
        if not cmds:
            return []
        lines: List[str] = []
        for i, cmd in enumerate(cmds):
            lines += [f"? 0x{BATCH_MARK + i:x}", cmd]
        out = self._run_file(lines, (timeout or self.command_timeout) + 0.002 * len(cmds))
        cuts: List[Tuple[int, int]] = []           # (start, end) of each separator line
        at = 0
        for i, cmd in enumerate(cmds):
            mark = f"0x{BATCH_MARK + i:x} {BATCH_MARK + i}\n"
            found = out.find(mark, at)
            if found < 0:
                raise BackendError(f"the answer to `{cmd}` (command {i + 1} of a batch of {len(cmds)}) lost "
                                   f"its separator: {out[at:][:200]!r}", backend=BACKEND)
            at = found + len(mark)
            cuts.append((found, at))
        if out[:cuts[0][0]].strip():
            raise BackendError(f"a batch of {len(cmds)} commands answered before its first: "
                               f"{out[:cuts[0][0]][:200]!r}", backend=BACKEND)
        answers = [out[end:nxt] for (_, end), (nxt, _) in zip(cuts, cuts[1:] + [(len(out), 0)])]
        self.transcript[-1:] = list(zip(cmds, answers))
        del self.transcript[:-200]
        return answers

    def source(self, cmds: List[str], timeout: Optional[float] = None) -> str:
        """Several commands run from a file (`source FILE`): one prompt, their output together.

        Bochs 2.7 reads stdin through readline, one byte and two pselect calls per character,
        and echoes each character in its own write; lines of a sourced file are read with fgets
        (bx_debug/dbg_main.cc, bx_get_command), so many commands cost about one. Only for
        commands the caller built itself: a line the debugger's parser rejects inside a
        sourced file makes Bochs exit ("ERROR in source file causes exit", bxerror)."""
        if not cmds:
            return ""
        out = self._run_file(cmds, timeout)
        self.transcript[-1] = (f"source ({len(cmds)} commands: {cmds[0]} ...)", out)
        return out

    def _run_file(self, lines: List[str], timeout: Optional[float]) -> str:
        """Write `lines` to a file in Bochs' working folder and `source` it: the joined output."""
        for line in lines:
            if "\n" in line or "\r" in line or not line.strip():
                raise BackendError(f"debugger command {line!r} is empty or holds a line break", backend=BACKEND)
        if not self._source_fds:
            self._source_fds = [os.open(self.workdir / f"b{i}", os.O_RDWR | os.O_CREAT, 0o600) for i in (0, 1)]
        self._sourced += 1
        which = self._sourced % 2
        # written in place and cut to length: truncating an ext4 file to 0 and writing it again
        # makes its close wait for the data (auto_da_alloc), about 0.2 ms each time
        data = "".join(c + "\n" for c in lines).encode("ascii")
        fd = self._source_fds[which]
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        self._source_runs = any(line.split()[0] in RUNS_GUEST for line in lines)
        return self.command(f"source b{which}", timeout)   # in Bochs' working folder: a short line

    def run(self, cmd: str, timeout: float, interrupt_timeout: float = 10.0) -> Tuple[str, bool]:
        """Run a command that lets the guest run (`c`); after `timeout` s send SIGINT.

        Returns (answer, interrupted).  TargetGone if Bochs exits or the
        SIGINT brings no prompt back.
        """
        if self.pending is not None:
            raise BackendError(f"`{cmd}` while `{self.pending}` has not answered (call resync)",
                               backend=BACKEND)
        self._send(cmd)
        self.pending = cmd
        deadline = time.monotonic() + timeout
        while True:
            m = PROMPT.search(self._buf)
            if m:
                out = self._until_prompt(deadline + 1, f"`{cmd}`")
                self.pending = None
                return self._strip_echo(cmd, out), False
            if not self._read_some(deadline) and time.monotonic() >= deadline:
                break
        out = self.interrupt(interrupt_timeout)
        self.pending = None
        return self._strip_echo(cmd, out), True

    def resync(self, timeout: float = 10.0) -> str:
        """Get back to a prompt after an exception interrupted a command.

        A `c` or `s` still running, or a sourced file holding one, is interrupted with SIGINT;
        any other command is given `timeout` seconds to answer.  Returns what was read.
        """
        cmd, self.pending = self.pending, None
        if cmd is None:
            return ""
        m = PROMPT.search(self._buf)
        if m:
            return self._until_prompt(time.monotonic() + timeout, f"`{cmd}` (resync)")
        first = cmd.split()[0]
        if first in RUNS_GUEST or (first == "source" and self._source_runs):
            return self.interrupt(timeout)
        return self._until_prompt(time.monotonic() + timeout, f"`{cmd}` (resync)")

    def interrupt(self, timeout: float = 10.0) -> str:
        """SIGINT to Bochs (the debugger's Ctrl-C) and the answer up to the prompt."""
        if not self.alive:
            raise self._gone("an interrupt")
        os.kill(self.proc.pid, signal.SIGINT)
        return self._until_prompt(time.monotonic() + timeout, "an interrupt (SIGINT)")

    def read_log(self) -> List[str]:
        """Complete lines Bochs appended to its log since the last call."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except OSError:
            return []
        self._log_offset += len(data)
        data = self._log_partial + data
        lines = data.split(b"\n")
        self._log_partial = lines.pop()
        return [x.decode("latin-1").rstrip("\r") for x in lines]

    # ------------------------------------------------------------ save state
    def rfb_port(self) -> Optional[int]:
        """The TCP port of Bochs' RFB display (the last port its log says it tried is the one it bound)."""
        try:
            ports = re.findall(r"Trying port (\d+)", self.log_path.read_text(errors="replace"))
        except OSError:
            return None
        return int(ports[-1]) if ports else None

    def save_state(self, folder: Path, timeout: float = 300.0, settle: float = 1.5) -> None:
        """Save the whole machine to `folder` (Bochs' own save/restore; start from it with
        BochsMachine.restore), from a prompt. Bochs is left waiting in a dialog: close() it after.

        The debugger has no command for it: Bochs saves when its display's "save
        state" header-bar button is pressed, then asks for the folder in a dialog
        drawn on that display. So, through the RFB display: click the button, let
        the guest run (`c`) until Bochs handles the click (a guest stop that comes
        first is continued; no prompt for `settle` seconds means the dialog is up),
        type the folder and Enter, and wait until every file of the state is
        written (Bochs writes `config` first and the RAM image whole; the files
        stop changing). The dialog's keystrokes also reach the guest's keyboard."""
        port = self.rfb_port()
        if port is None:
            raise BackendError("cannot save the state: Bochs' log names no RFB port", backend=BACKEND)
        folder.mkdir(parents=True, exist_ok=True)      # Bochs writes into the folder, it does not create it
        deadline = time.monotonic() + timeout
        sock = rfb_connect(port)
        try:
            rfb_click(sock, HEADERBAR_SAVE)
            self._send("c")
            self.pending = "c"
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < settle:
                if PROMPT.search(self._buf):
                    self._until_prompt(deadline, "save state")   # a guest stop before the click was handled
                    self._send("c")
                    quiet_since = time.monotonic()
                    continue
                if self._read_some(min(deadline, time.monotonic() + 0.2)):
                    continue
                if time.monotonic() >= deadline:
                    raise self._gone("save state (the guest did not let Bochs handle the click)")
            rfb_type(sock, str(folder))
            rfb_key(sock, KEY_RETURN)
            last: Optional[Tuple[Tuple[str, int], ...]] = None
            stable_since = time.monotonic()
            while True:
                now = tuple(sorted((f.name, f.stat().st_size) for f in folder.iterdir()))
                if now != last:
                    last, stable_since = now, time.monotonic()
                elif any(n == "config" for n, _ in now) and len(now) > 5 and time.monotonic() - stable_since > 3:
                    return
                if time.monotonic() >= deadline:
                    raise BackendError(f"Bochs did not write its state to {folder} in {timeout:.0f} s",
                                       backend=BACKEND)
                time.sleep(0.5)
        finally:
            sock.close()

    def _write_line(self, text: str) -> None:
        try:
            self.proc.stdin.write(text.encode() + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            raise self._gone("an answer to Bochs") from None

    # ------------------------------------------------------------ end
    def quit(self, timeout: float = 5.0) -> None:
        """Ask the debugger to quit (`q`); kill Bochs if it does not go."""
        if self.alive:
            try:
                self._send("q")
                self.proc.wait(timeout)
            except (TargetGone, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL our bochs-bin (if still there), reap it, remove the work directory."""
        proc = getattr(self, "proc", None)
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream:
                        stream.close()
                except OSError:
                    pass
            sel = getattr(self, "_sel", None)
            if sel is not None:
                sel.close()
                self._sel = None  # type: ignore[assignment]
        _LIVE.discard(self)
        for fd in getattr(self, "_source_fds", ()):
            os.close(fd)
        self._source_fds = []
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            tmp.cleanup()
            self._tmp = None  # type: ignore[assignment]


#: Bochs' header bar: buttons are 32 pixels wide; on the right, from the right edge,
#: "power" then "save state" (bochs gui/gui.cc creates them in that order).
HEADERBAR_BUTTON = 32
HEADERBAR_SAVE = 2           # the second button from the right
KEY_RETURN, KEY_BACKSPACE = 0xFF0D, 0xFF08   # X keysyms (RFB KeyEvent)


class RfbSession:
    """A connection to Bochs' RFB display and the display's width."""

    def __init__(self, sock: Any, width: int) -> None:   # a socket.socket
        self.sock, self.width = sock, width

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def rfb_connect(port: int, host: str = "127.0.0.1") -> RfbSession:
    """An RFB 3.3 session (no authentication) with Bochs' display; raises BackendError otherwise."""
    import socket
    import struct
    sock = socket.create_connection((host, port), timeout=10)
    version = sock.recv(12)
    if not version.startswith(b"RFB "):
        sock.close()
        raise BackendError(f"port {port} is not an RFB display ({version!r})", backend=BACKEND)
    sock.sendall(version)
    sock.recv(4)                       # security type (1: none)
    sock.sendall(b"\x01")             # ClientInit: shared
    init = b""
    while len(init) < 24:
        chunk = sock.recv(24 - len(init))
        if not chunk:
            raise BackendError("the RFB display closed during its ServerInit", backend=BACKEND)
        init += chunk
    sock.recv(struct.unpack(">I", init[20:24])[0])
    return RfbSession(sock, struct.unpack(">H", init[:2])[0])


def _drain(session: RfbSession) -> None:
    """Read (and drop) what the display sent, so its updates never fill the connection."""
    import socket
    sock = session.sock
    sock.settimeout(0.05)
    try:
        for _ in range(64):
            if not sock.recv(1 << 20):
                break
    except (socket.timeout, BlockingIOError):
        pass
    finally:
        sock.settimeout(10)


def rfb_click(sock: RfbSession, button_from_right: int) -> None:
    """Press and release a header-bar button, counted from the right edge (1 = rightmost)."""
    import struct
    x = sock.width - HEADERBAR_BUTTON * button_from_right + HEADERBAR_BUTTON // 2
    y = HEADERBAR_BUTTON // 2
    sock.sendall(struct.pack(">BBHH", 5, 1, x, y))   # PointerEvent: button 1 down
    time.sleep(0.1)
    sock.sendall(struct.pack(">BBHH", 5, 0, x, y))   # and up
    _drain(sock)


def rfb_key(sock: RfbSession, keysym: int) -> None:
    import struct
    sock.sendall(struct.pack(">BBxxI", 4, 1, keysym))
    time.sleep(0.03)
    sock.sendall(struct.pack(">BBxxI", 4, 0, keysym))
    time.sleep(0.03)
    _drain(sock)


def rfb_type(sock: RfbSession, text: str) -> None:
    for ch in text:
        if not 0x20 <= ord(ch) < 0x7F:
            raise BackendError(f"cannot type {ch!r} into Bochs' dialog", backend=BACKEND)
        rfb_key(sock, ord(ch))


def session_copy_of_state(folder: Path, into: Path, log_path: str, serial: str) -> Path:
    """A view of a saved state for one session: every file linked, except `config` (the saved
    bochsrc), copied and pointed at this session's log and serial files, so sessions restoring
    the same state at once do not share a log."""
    cfg = folder / "config"
    try:
        lines = cfg.read_text().splitlines()
    except OSError as exc:
        raise BackendError(f"{cfg}: cannot read the saved state's configuration ({exc.strerror})",
                           backend=BACKEND) from None
    into.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.name != "config":
            os.symlink(f.resolve(), into / f.name)
    out = []
    for line in lines:
        key = line.split(":", 1)[0].strip()
        if key == "log":
            line = f"log: {log_path}"
        elif key == "com1" and serial:
            line = re.sub(r"dev=[^,]*", f"dev={serial}", line)
        out.append(line)
    (into / "config").write_text("\n".join(out) + "\n")
    return into
