"""The replay console: a prompt_toolkit kd prompt over any Backend.

`0: kd> ` names the current processor; history (up arrow, Ctrl-R), Tab
completion of commands, register, MSR and VMCS field names, and the kd
commands of vmxdbg.console.kdcmds. An empty line repeats the last movement
command (t, p, g and their backward forms), as WinDbg repeats commands.

Testable without a terminal: give `input` (prompt_toolkit's
create_pipe_input()) and `output` (DummyOutput), and read the command output
from the `out` stream.
"""
from __future__ import annotations

import sys
from typing import Iterable, List, Optional, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History, InMemoryHistory

from .kdcmds import KdState, complete, execute
from ..common.errors import VmxdbgError

REPEATABLE = ("t", "p", "g", "t-", "p-", "g-", "tb", "pb", "gb")


class KdCompleter(Completer):
    """Completes the word under the cursor from kdcmds.complete()."""

    def __init__(self, state: KdState) -> None:
        self.state = state

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        before = document.text_before_cursor
        word = before.split(" ")[-1]
        for cand in complete(self.state, before):
            yield Completion(cand, start_position=-len(word))


class Console:
    """A kd prompt loop over `state` (see the module doc)."""

    def __init__(self, state: KdState, *, out: Optional[TextIO] = None, input=None, output=None,  # type: ignore[no-untyped-def]
                 history_file: Optional[str] = None, banner: str = "") -> None:
        self.state = state
        self.out = out if out is not None else sys.stdout
        self.banner = banner
        self.prompts: List[str] = []       # every prompt shown, in order
        self._last = ""
        self._io = (input, output)
        self._history: History = FileHistory(history_file) if history_file else InMemoryHistory()
        self._session: Optional[PromptSession] = None

    @property
    def session(self) -> PromptSession:
        """The prompt_toolkit session, made on first use (run_script never needs a terminal)."""
        if self._session is None:
            self._session = PromptSession(history=self._history, completer=KdCompleter(self.state),
                                          complete_while_typing=False, input=self._io[0], output=self._io[1])
        return self._session

    def run_line(self, line: str) -> str:
        """Output of one command line, whose commands `;` separates (as at WinDbg's prompt and
        in -c); an error is its one-line message and ends the line."""
        text = line.strip()
        if not text and self._last in REPEATABLE:
            text = self._last
        out = []
        for command in (c.strip() for c in text.split(";")):
            if not command or self.state.done:
                continue
            self._last = command.split()[0].lower()
            try:
                out.append(execute(self.state, command))
            except VmxdbgError as exc:
                out.append(f"{exc}\n")
                break
        return "".join(out)

    def run(self) -> int:
        """Prompt until `q` or end of input; returns the exit status (0)."""
        if self.banner:
            self.out.write(self.banner.rstrip("\n") + "\n")
        while not self.state.done:
            prompt = self.state.prompt
            self.prompts.append(prompt)
            try:
                line = self.session.prompt(prompt)
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            self.out.write(self.run_line(line))
            self.out.flush()
        return 0

    def run_piped(self, stream: TextIO) -> int:
        """Commands read from a pipe or file (not a terminal): no line editor, no escape codes;
        each line is echoed after its prompt, as run_script does."""
        if self.banner:
            self.out.write(self.banner.rstrip("\n") + "\n")
        for line in stream:
            if self.state.done:
                break
            self.out.write(f"{self.state.prompt}{line.strip()}\n")
            self.out.write(self.run_line(line))
        return 0

    def run_script(self, lines: Iterable[str]) -> int:
        """Run commands without prompting, echoing each after its prompt (as cdb -c does)."""
        for line in lines:
            if self.state.done:
                break
            self.out.write(f"{self.state.prompt}{line.strip()}\n")
            self.out.write(self.run_line(line))
        return 0
