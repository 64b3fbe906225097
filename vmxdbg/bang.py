"""`!vmxcheck`: vmxdbg's commands inside WinDbg, through pykd.

Started by pykd's `!py` (`!py -3.9 -g -m vmxdbg.bang ARGS`), usually behind the
WinDbg alias `!vmxcheck` (docs/windbg.md). ARGS name one of the CLI's
commands, run by that command's own module with the live target attached
(vmxdbg/commands/live.py): there is one implementation of each command.

    !vmxcheck                    check            every processor
    !vmxcheck cpu N [...]        check --cpu N -v one processor, in detail
    !vmxcheck record FILE [...]  check --record FILE
    !vmxcheck -OPTIONS           check -OPTIONS   (e.g. --vmxon 0x1a2b3000)
    !vmxcheck COMMAND ...        any `vmxdbg COMMAND` (rule, decode, vmcs, trace ...)
    !vmxcheck help               this list, with the commands this version has

Output goes to the command window through pykd's dprint: DML when WinDbg
prefers DML (`.prefer_dml 1`, the default of current WinDbg) and the command
can give it, else plain text; `--text` / `--dml` anywhere override. An error is
one line, never a traceback. When the command ends, fails or is interrupted
(Ctrl+Break), every breakpoint it set is removed and the processor that was
current before is selected again. Ctrl+Break reaches Python as KeyboardInterrupt,
or under the pykd-ext bootstrapper as SystemExit("CTRL+BREAK"); both end the
command the same way. A session that is not a live kernel target (a dump, a
user-mode process) gets one line and nothing else.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from typing import Any, List, Optional, Sequence

from . import __version__
from .commands import live
from .backends.base import Backend
from .common.errors import InputError, VmxdbgError

PROG = "!vmxcheck"
MODULE = "vmxdbg.bang"
VERBS = (("", "check", "every processor: a row each, then every broken rule"),
         ("cpu N", "check --cpu N -v", "one processor, with every broken or unknown rule"),
         ("record FILE", "check --record FILE", "the summary, recorded to FILE (.vmxrec.jsonl)"),
         ("-OPTIONS", "check -OPTIONS", "e.g. --vmxon [CPU=]ADDR: check VMXON with this operand"))


class DbgWriter(io.TextIOBase):
    """A text stream that prints through pykd.dprint (DML or plain)."""

    def __init__(self, pykd: Any, dml: bool = False) -> None:
        super().__init__()
        self.pykd, self.dml = pykd, dml

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:   # type: ignore[override]
        if text:
            self.pykd.dprint(text, self.dml)
        return len(text)


def translate(argv: Sequence[str]) -> List[str]:
    """`!vmxcheck` words as the CLI's argv (see the module doc)."""
    args = list(argv)
    if not args or args[0].startswith("-"):
        return ["check"] + args
    verb = args[0].lower()
    if verb == "cpu":
        if len(args) < 2 or args[1].startswith("-"):
            raise InputError("cpu: which processor? e.g. `!vmxcheck cpu 1`")
        return ["check", "--cpu", args[1], "-v"] + args[2:]
    if verb == "record":
        if len(args) < 2 or args[1].startswith("-"):
            raise InputError("record: to which file? e.g. `!vmxcheck record C:\\\\traces\\\\boot.vmxrec.jsonl`")
        return ["check", "--record", args[1]] + args[2:]
    return args


def _dml_capable(parser: argparse.ArgumentParser) -> bool:
    return any(a.dest == "format" and a.choices is not None and "dml" in a.choices for a in parser._actions)


def build_parser(backend: Backend, dml: bool) -> argparse.ArgumentParser:
    """The CLI's commands, each attached to the live target; DML made the default where a command has it."""
    from .cli import _command_modules
    parser = argparse.ArgumentParser(prog=PROG, add_help=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, prog=f"{PROG} {mod.NAME}",
                           description=getattr(mod, "DESCRIPTION", mod.HELP))
        live.attach(p, backend)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
        if dml and _dml_capable(p):
            p.set_defaults(format="dml")
    return parser


def help_text(parser: argparse.ArgumentParser) -> str:
    """The verbs and the commands this version has."""
    lines = [f"vmxdbg {__version__} in WinDbg: {PROG} [COMMAND] [ARGS]", ""]
    for words, same, what in VERBS:
        lines.append(f"  {(PROG + ' ' + words).rstrip():<26} = {same:<22} {what}")
    lines.append("")
    lines.append("commands (as on the command line, on the live target; add -h to one for its options):")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                lines.append(f"  {PROG} {choice.dest:<10} {choice.help}")
    lines.append("")
    lines.append("--text / --dml: plain text or DML output (default: what WinDbg prefers)")
    return "\n".join(lines) + "\n"


def prefers_dml(pykd: Any) -> bool:
    """WinDbg's `.prefer_dml` setting, through pykd's getDebugOptions()."""
    try:
        flag = int(pykd.debugOptions.PreferDml)
        return bool(int(pykd.getDebugOptions()) & flag)
    except Exception:   # an engine without the option: plain text is always safe
        return False


def _run(argv: List[str], backend: Backend, dml: bool, out: DbgWriter) -> int:
    parser = build_parser(backend, dml)
    if argv and argv[0].lower() in ("help", "-h", "--help", "?"):
        sys.stdout.write(help_text(parser))
        return 0
    cli_argv = translate(argv)
    try:
        args = parser.parse_args(cli_argv)
    except SystemExit as exc:      # argparse: usage error (2) or -h (0), already printed
        return int(exc.code or 0)
    if not getattr(args, "_run", None):
        sys.stdout.write(help_text(parser))
        return 2
    out.dml = getattr(args, "format", None) == "dml"
    return int(args._run(args))


def main(argv: Optional[Sequence[str]] = None, pykd_module: Any = None) -> int:
    """Run one `!vmxcheck` command line; returns its exit status (0 ok, 1 a check failed, 2 bad input).

    `pykd_module` stands in for `import pykd` (the tests' stand-in).
    """
    from .backends.windbg import WinDbgBackend, is_ctrl_break, session_problem
    words = list(sys.argv[1:] if argv is None else argv)
    target = WinDbgBackend(pykd_module)
    try:
        pk = target.pykd
    except VmxdbgError as exc:     # not inside WinDbg: say so on the console we have
        print(f"vmxdbg: {exc}", file=sys.stderr)
        return 2
    problem = session_problem(pk)
    if problem is not None:          # a dump or a user-mode session: one line, nothing else touched
        pk.dprint(f"vmxdbg: {problem}\n", False)
        return 2
    dml = prefers_dml(pk)
    if "--text" in words or "--dml" in words:
        dml = "--dml" in words and "--text" not in words
        words = [w for w in words if w not in ("--text", "--dml")]
    out, err = DbgWriter(pk), DbgWriter(pk)
    code = 2
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):   # type: ignore[type-var]
        try:
            code = _run(words, target, dml, out)
        except VmxdbgError as exc:
            print(f"vmxdbg: {exc}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt:
            print("vmxdbg: interrupted; breakpoints removed", file=sys.stderr)
            code = 130
        except SystemExit as exc:    # pykd-ext's Ctrl+Break is SystemExit("CTRL+BREAK")
            if not is_ctrl_break(exc):
                raise
            print("vmxdbg: interrupted; breakpoints removed", file=sys.stderr)
            code = 130
        finally:
            for note in target.notes:
                print(f"vmxdbg: note: {note}", file=sys.stderr)
            try:
                target.close()
            except VmxdbgError as exc:
                print(f"vmxdbg: {exc}", file=sys.stderr)
                code = code or 2
    return code


if __name__ == "__main__":   # `!py -m vmxdbg.bang ...`; pykd's !py ignores SystemExit
    sys.exit(main())
