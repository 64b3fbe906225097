"""Forms of kd output the real excerpts (test_kdlog_corpus.py) do not all show, in text
written here after WinDbg's documented formats: physical dumps of every width with
padded addresses, `!kext.` names, virtual dumps of every width, the virtual memory of a
snapshot, the console's dd/db/dq, and the progress line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmxdbg.cli import main
from vmxdbg.console.kdcmds import execute
from vmxdbg.commands.replay import open_state
from vmxdbg.common.errors import InputError, NotAvailable
from vmxdbg.inputs.kdlog import parse_text
from vmxdbg.state.snapshot import load_snapshot, snapshot_from_json, snapshot_to_json

CORPUS = Path(__file__).resolve().parent / "data" / "kdreal"


@pytest.mark.parametrize("command,row,width", [
    ("!dd 1f000 L4", "#   1f000 0000f002 00000001 00000002 00000003", 4),
    ("!kext.dd 1f000 L4", "#   1f000 0000f002 00000001 00000002 00000003", 4),
    ("!dc 1f000 L4", "#   1f000 0000f002 00000001 00000002 00000003 ................", 4),
    ("!db 1f000 L10", "#   1f000 02 f0 00 00 01 00 00 00-02 00 00 00 03 00 00 00 ................", 1),
    ("!kext.db 1f000 L10", "#   1f000 02 f0 00 00 01 00 00 00-02 00 00 00 03 00 00 00 ................", 1),
    ("!dq 1f000 L2", "#   1f000 00000001`0000f002 00000003`00000002", 8),
    ("!dw 1f000 L8", "#   1f000 f002 0000 0001 0000 0002 0000 0003 0000", 2),
])
def test_physical_dumps_of_every_width_with_padded_addresses(command, row, width):
    log = parse_text(f"kd> {command}\n{row}\n")
    assert log.warnings == []
    assert log.snapshot.memory.read(0x1F000, 16) == bytes.fromhex("02f00000010000000200000003000000")


@pytest.mark.parametrize("command,row", [
    ("dd 401000 L4", "00401000  0000f002 00000001 00000002 00000003"),
    ("dc 401000 L4", "00401000  0000f002 00000001 00000002 00000003  ................"),
    ("db 401000 L10", "00401000  02 f0 00 00 01 00 00 00-02 00 00 00 03 00 00 00  ................"),
    ("dq 401000 L2", "00000000`00401000  00000001`0000f002 00000003`00000002"),
    ("dp 401000 L2", "00000000`00401000  00000001`0000f002 00000003`00000002"),
    ("dp 401000 L4", "00401000  0000f002 00000001 00000002 00000003"),    # dp on a 32-bit target
    ("dw 401000 L8", "00401000  f002 0000 0001 0000 0002 0000 0003 0000"),
])
def test_virtual_dumps_of_every_width(command, row):
    log = parse_text(f"1: kd> {command}\n{row}\n")
    assert log.warnings == []
    mem = log.snapshot.processors[1].virtual_memory
    assert mem.read(0x401000, 16) == bytes.fromhex("02f00000010000000200000003000000")
    assert not log.snapshot.memory


def test_snapshot_exports_virtual_memory_per_processor_and_reads_it_back(tmp_path, capsys):
    out = tmp_path / "s.vmxsnap.json"
    assert main(["snapshot", str(CORPUS / "pte-walk-vtop-dq.log"), "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["processors"]["1"]["virtual_memory"] == {"0xffffbf0152163280": "0300000000000000" "0042cb5201bfffff"}
    snap = load_snapshot(out)
    assert snap.processors[1].virtual_memory.read(0xFFFFBF0152163288, 8) == (0xFFFFBF0152CB4200).to_bytes(8, "little")
    assert snapshot_to_json(snap)["processors"] == data["processors"]    # exporting again gives the same


def test_a_snapshot_without_virtual_memory_still_loads_and_bad_entries_are_named():
    snap = snapshot_from_json({"format": "vmxdbg-snapshot", "version": 1, "processors": {"0": {}}})
    assert not snap.processors[0].virtual_memory
    with pytest.raises(InputError, match=r"processors\.0\.virtual_memory\.0x10"):
        snapshot_from_json({"format": "vmxdbg-snapshot", "version": 1,
                            "processors": {"0": {"virtual_memory": {"0x10": "zz"}}}})
    with pytest.raises(InputError, match=r"processors\.0\.state\.vendor"):
        snapshot_from_json({"format": "vmxdbg-snapshot", "version": 1,
                            "processors": {"0": {"state": {"vendor": 12}}}})


def test_console_dd_db_dq_read_the_current_processors_virtual_memory():
    state, _ = open_state(CORPUS / "hevd-r-annotation-dq.log")
    assert execute(state, "dq 2cfd40 L2") == "00000000`002cfd40  42424242`42424242 43434343`43434343\n"
    assert execute(state, "dd 2cfd40 L2") == "00000000`002cfd40  42424242 42424242\n"
    assert execute(state, "db 2cfd40 L2").startswith("00000000`002cfd40  42 42 ")
    with pytest.raises(NotAvailable, match="virtual memory not available"):
        execute(state, "dq 1000 L1")
    state, _ = open_state(CORPUS / "pte-walk-vtop-dq.log")
    state.cpu = 1
    assert execute(state, "dq ffffbf0152163280 L2") == "ffffbf01`52163280  00000000`00000003 ffffbf01`52cb4200\n"
    state, _ = open_state(CORPUS / "msdocs-cpuid.log")
    with pytest.raises(NotAvailable, match="shows no virtual memory"):
        execute(state, "dd 1000 L1")


def test_the_parser_reports_progress_as_it_reads(tmp_path):
    path = tmp_path / "s.log"
    path.write_text("0: kd> r cr4\ncr4=00000000003506f8\n" * 50000)
    seen = []
    from vmxdbg.inputs.kdlog import parse_file
    log = parse_file(path, progress=seen.append)
    assert log.snapshot.processors[0].registers["cr4"] == 0x3506F8
    assert seen and seen[-1] == path.stat().st_size and seen == sorted(seen)
