"""The replay console, driven through prompt_toolkit's pipe input, and the shared kd commands."""
from __future__ import annotations

import io

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from recfakes import POINTERS, FakeLive, trace_session, two_cpu_snapshot, two_cpu_tree
from vmxdbg import cli
from vmxdbg.record.recorder import Recorder
from vmxdbg.backends.snapshot_backend import SnapshotBackend
from vmxdbg.console.kdcmds import complete, execute, format_dump, format_msr, format_reg
from vmxdbg.commands.replay import open_state
from vmxdbg.console.prompt import Console
from vmxdbg.common.errors import InputError, NotAvailable
from vmxdbg.record.recorded import record_check
from vmxdbg.state.snapshot import save_snapshot


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "t.vmxrec.jsonl"
    with Recorder(FakeLive(), path, command="trace") as rec:
        seen = trace_session(rec)
    return path, seen


def drive(state, keys):
    """Type `keys` at the console (through a pipe); returns (console, what it printed)."""
    out = io.StringIO()
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        pipe.close()          # end of input after the keys: the console ends as at Ctrl-D
        console = Console(state, out=out, input=pipe, output=DummyOutput())
        console.run()
    return console, out.getvalue()


def test_formats_mimic_windbg():
    assert format_msr(0x480, 0xDA040000000004) == "msr[480] = 00da0400`00000004"
    assert format_reg("cr0", 0x80050033) == "cr0=0000000080050033"
    assert format_reg("cs", 0x10) == "cs=0010" and format_reg("efl", 0x246) == "efl=00000246"
    assert format_reg("cr4", None) == "cr4=" + "?" * 16
    assert format_dump(0x1A2B3000, list(bytes.fromhex("0400000000000000")) + [None] * 8, 8) == [
        "#1a2b3000 00000000`00000004 ????????`????????"]
    assert format_dump(0x1000, list(b"ABCDEFGHIJKLMNOP"), 1) == [
        "#    1000 41 42 43 44 45 46 47 48-49 4a 4b 4c 4d 4e 4f 50 ABCDEFGHIJKLMNOP"]


def test_switching_processors_and_stepping_shows_the_right_values(trace_file):
    path, seen = trace_file
    state, _ = open_state(path)
    keys = "r cr4\rg\rr rip\rr cr4\r~1s\rrdmsr 480\r~0s\rt\rt\rt\rr cr4\rr rip\rtb\rr rip\rgb\rr rip\rq\r"
    console, out = drive(state, keys)
    lines = out.splitlines()
    # before the first stop nothing of cr4 was read
    assert "not in the recording up to stop 0" in lines[0]
    assert lines[1].startswith("stop 1/5: breakpoint 0 hit on cpu 0")
    assert lines[2] == f"rip={seen[0][0]:016x}" and lines[3] == f"cr4={seen[0][1]:016x}"
    assert lines[4] == "msr[480] = 00da0400`00000005"          # processor 1's value
    assert lines[5:8] == ["stop 2/5: step on cpu 0 at 00000000`00004003",
                          "stop 3/5: step on cpu 0 at 00000000`00004006",
                          "stop 4/5: step on cpu 0 at 00000000`00004009"]
    assert lines[8] == f"cr4={seen[3][1]:016x}" and seen[3][1] & 0x2000   # VMXE set by the 3rd step
    assert lines[9] == f"rip={seen[3][0]:016x}"
    assert lines[10].startswith("stop 3/5") and lines[11] == f"rip={seen[2][0]:016x}"
    assert lines[12].startswith("stop 1/5") and lines[13] == f"rip={seen[0][0]:016x}"
    # the prompt names the processor: 0, then 1 after ~1s, then 0 again
    assert console.prompts[:8] == ["0: kd> "] * 5 + ["1: kd> "] * 2 + ["0: kd> "]
    assert state.done


def test_enter_repeats_a_step_and_end_of_input_quits(trace_file):
    path, _ = trace_file
    state, _ = open_state(path)
    console, out = drive(state, "t\r\r\r")
    assert [l.split(":")[0] for l in out.splitlines()] == ["stop 1/5", "stop 2/5", "stop 3/5"]
    assert not state.done   # ended by end of input, not q


def test_completion_of_commands_msr_and_field_names(trace_file):
    path, _ = trace_file
    state, _ = open_state(path)
    assert "rdmsr" in complete(state, "rd")
    assert "IA32_VMX_BASIC" in complete(state, "rdmsr IA32_VMX_B")
    assert complete(state, "r cr")[:2] == ["cr0", "cr2"]
    assert "GUEST_CR0" in complete(state, "!vmread guest_cr")
    assert "!vmxcheck" in complete(state, "!vm")


def test_completer_replaces_the_word_under_the_cursor(trace_file):
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document
    from vmxdbg.console.prompt import KdCompleter
    path, _ = trace_file
    state, _ = open_state(path)
    got = list(KdCompleter(state).get_completions(Document("rdmsr IA32_VMX_BAS"), CompleteEvent()))
    assert [(c.text, c.start_position) for c in got] == [("IA32_VMX_BASIC", -len("IA32_VMX_BAS"))]
    doc = Document("rdmsr IA32_VMX_BAS")
    completed = doc.text[:len(doc.text) + got[0].start_position] + got[0].text
    assert execute(state, completed) == "msr[480] = 00da0400`00000004\n"


def test_browsing_a_snapshot_file(tmp_path):
    path = tmp_path / "s.vmxsnap.json"
    save_snapshot(two_cpu_snapshot(), path)
    state, banner = open_state(path)
    assert "snapshot, 2 processor(s)" in banner
    _, out = drive(state, "r cr4\r~1s\rr cr4\r!dq 1a2b4000 L2\rt\r!vmxcheck\rq\r")
    lines = out.splitlines()
    assert lines[0] == "cr4=00000000003726f8" and lines[1] == "cr4=00000000003706f8"
    assert lines[2] == "#1a2b4000 00000000`00000004 ????????`????????"
    assert "no recorded execution" in lines[3]
    assert any(l.startswith("cpu 1 vmxon: ") for l in lines)     # the report of the snapshot itself


def test_vmxcheck_at_a_recorded_check_matches_vmxdbg_check(tmp_path, capsys):
    path = tmp_path / "c.vmxrec.jsonl"
    record_check(SnapshotBackend(two_cpu_snapshot()), path, vmxon_pointers=POINTERS)
    state, _ = open_state(path)
    shown = execute(state, "!vmxcheck")
    cli.main(["check", str(path)])
    assert shown == capsys.readouterr().out


def test_bad_commands_are_one_line(trace_file):
    path, _ = trace_file
    state, _ = open_state(path)
    for line, msg in [("frob", "unknown command"), ("r cr9", "Bad register"), ("~7s", "no processor 7"),
                      ("!dq", "usage"), ("!dq 1000 X5", "use L"), ("rdmsr", "usage"), ("!tt 99", "stops 0 to 5"),
                      ("rdmsr zz_not_msr", "not a hex number")]:
        with pytest.raises(InputError, match=msg):
            execute(state, line)
    console = Console(state, out=io.StringIO())
    assert console.run_line("frob").count("\n") == 1


def test_cli_replay_script(trace_file, capsys):
    path, seen = trace_file
    assert cli.main(["replay", str(path), "-c", "!tt 5; r rip; !dq 10010 L2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "0: kd> !tt 5" and out[2] == "0: kd> r rip" and out[3] == f"rip={seen[4][0]:016x}"
    assert out[5] == "#   10010 17161514`13121110 1f1e1d1c`1b1a1918"


def test_processors_known_from_the_header_when_never_asked(tmp_path):
    path = tmp_path / "c.vmxrec.jsonl"
    record_check(SnapshotBackend(two_cpu_snapshot()), path, cpus=[0, 1], vmxon_pointers=POINTERS)
    state, _ = open_state(path)
    assert execute(state, "~") == ".  0  processor 0\n   1  processor 1\n"
    assert execute(state, "~1s") == "" and state.prompt == "1: kd> "
    assert execute(state, "r cr4") == "cr4=00000000003706f8\n"
    with pytest.raises(InputError, match="no recorded execution"):
        execute(state, "t")


def test_vmread_and_vmxcheck_options_on_a_snapshot(tmp_path):
    tree = two_cpu_tree()
    tree["processors"]["1"]["vmcs"] = {"0x6800": "0x80000031"}
    path = tmp_path / "s.vmxsnap.json"
    path.write_text(__import__("json").dumps(tree), encoding="utf-8")
    state, _ = open_state(path)
    execute(state, "~1s")
    assert execute(state, "!vmread GUEST_CR0") == "GUEST_CR0 (6800) = 00000000`80000031\n"
    assert execute(state, "!vmread 6800") == execute(state, "!vmread guest_cr0")
    with pytest.raises(NotAvailable):
        execute(state, "!vmread GUEST_CR4")
    only1 = execute(state, "!vmxcheck cpu 1")
    assert "cpu 1 vmxon: #UD" in only1 and "cpu 0 " not in only1
    doc = execute(state, "!vmxcheck rule vmxon002")
    assert doc.startswith("VMXON002 ") and "SDM: Vol.3C" in doc
    with pytest.raises(InputError, match="no processor 5"):
        execute(state, "!vmxcheck cpu 5")


def test_history_keeps_the_commands_typed(trace_file, tmp_path):
    path, _ = trace_file
    state, _ = open_state(path)
    hist = tmp_path / "history"
    out = io.StringIO()
    with create_pipe_input() as pipe:
        pipe.send_text("g\rr rip\rq\r")
        pipe.close()
        console = Console(state, out=out, input=pipe, output=DummyOutput(), history_file=str(hist))
        console.run()
    # Up arrow / Ctrl-R recall from this history (prompt_toolkit's FileHistory), across sessions too
    assert list(console.session.history.load_history_strings())[:3] == ["q", "r rip", "g"]
    assert "+r rip" in hist.read_text(encoding="utf-8")


# ----------------------------------------------------------------- issue 18: the console tells the truth

BOCHS_TRACE = str(__import__("pathlib").Path(__file__).resolve().parent.parent
                  / "recordings" / "bochs" / "healthy-2cpu.vmxrec.jsonl")   # a real Bochs run


def test_tilde_s_without_a_number_says_so_in_the_users_words():
    state, _ = open_state(__import__("pathlib").Path(BOCHS_TRACE))
    with pytest.raises(InputError) as exc:
        execute(state, "~s")
    assert "0n" not in str(exc.value) and "~s: name the processor" in str(exc.value)
    with pytest.raises(InputError, match="'x' is not a processor number"):
        execute(state, "~xs")


def test_several_commands_on_one_prompt_line_run_as_in_dash_c():
    state, _ = open_state(__import__("pathlib").Path(BOCHS_TRACE))
    _, printed = drive(state, "g; r cr4\n")
    assert "stop 1/19" in printed and "cr4=0000000000002020" in printed


def test_piped_commands_print_no_terminal_warning_nor_escape_codes():
    import subprocess
    import sys
    got = subprocess.run([sys.executable, "-m", "vmxdbg", "replay", BOCHS_TRACE], input="g; r cr4\n~s\n",
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0
    assert "Input is not a terminal" not in got.stdout + got.stderr and "\x1b" not in got.stdout + got.stderr
    assert "cr4=0000000000002020" in got.stdout and "~s: name the processor" in got.stdout
