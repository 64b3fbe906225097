"""Mutation fuzzing of every reader, with a fixed budget and a fixed seed.

Each reader gets its real seed files (recordings/, vmxdbg/examples/,
structs/, and recordings made by vmxdbg's own recorder), then mutants of them
(bit flips, truncation, duplicated and swapped lines, splices with other real
files, hostile tokens, re-encodings) and generated inputs. The only allowed
results are a parsed object or report, or a VmxdbgError of one line naming
the file; never another exception, a run past the time bound, a write
outside the input's directory or a memory blow-up (tests/fuzzkit.py). The
longer run is bench/fuzz_readers.py.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

import fuzzkit

SEED = 20231
#: inputs per reader: about 10 s for all of them on one core of the CI machine
BUDGET = {"snapshot": 300, "report": 250, "recording": 300, "partial": 150, "trace": 250, "kdlog": 80,
          "any": 150, "vmcs": 250, "structs": 80, "layout": 200, "probe": 250, "value": 400, "cli": 150,
          "kdcmd": 250}


def _report(crashes) -> str:
    """The distinct crashes, each with the start of its input, for the assertion message."""
    seen = {}
    for data, o in crashes:
        seen.setdefault(o.crash.splitlines()[0][:120], (data, o))
    return "\n".join(f"- {first}\n  input: {data[:200]!r}\n{o.crash[-1500:]}" for first, (data, o) in seen.items())


def test_every_reader_has_a_budget():
    assert set(BUDGET) == set(fuzzkit.READERS)


@pytest.mark.parametrize("reader", sorted(BUDGET))
def test_mutants_and_generated_inputs_give_a_result_or_one_line_error(reader, tmp_path):
    outcomes, crashes = fuzzkit.fuzz(reader, BUDGET[reader], SEED, tmp_path)
    assert len(outcomes) == BUDGET[reader]
    assert not crashes, f"{len(crashes)} of {len(outcomes)} inputs crashed the {reader} reader:\n{_report(crashes)}"
    # the run reached past the first checks: some inputs were read whole, some refused
    assert any(o.ok for o in outcomes), f"no {reader} input was accepted: the fuzzing is too shallow"
    if reader not in ("kdlog", "kdcmd", "cli"):  # these accept any bytes (cli: errors are exit statuses)
        assert any(o.error for o in outcomes), f"no {reader} input was refused: the mutations did nothing"


def test_the_seeds_themselves_are_read_without_error(tmp_path):
    c = fuzzkit.corpus()
    assert c.snapshots and c.kdlogs and c.recordings and c.traces and c.layouts and c.dumps and c.regions
    for name in ("snapshot", "recording", "trace", "kdlog", "layout", "probe", "vmcs", "report"):
        reader = fuzzkit.READERS[name]
        outcomes = []
        for data in reader.seeds(c):
            outcomes.append(fuzzkit.run_one(reader, data, tmp_path))
            fuzzkit.clean(tmp_path)
        assert all(o.crash is None for o in outcomes)
        refused = [o.error for o in outcomes if not o.ok]
        if name == "vmcs":   # the examples' VMCS regions have a revision id no layout knows: refused, rightly
            assert len(refused) < len(outcomes) and all("no VMCS layout is known" in e for e in refused)
        else:
            assert not refused, f"{name} seed refused: {refused[0]}"


# -- the judge can fail: each way a reader may go wrong is caught ------------------------------------

def _judged(run, tmp_path, time_limit=1.0):
    reader = fuzzkit.Reader("probe-the-judge", lambda c: [], lambda r: b"", run)
    return fuzzkit.run_one(reader, b"x", tmp_path, time_limit=time_limit).crash


def test_the_judge_catches_every_kind_of_crash(tmp_path):
    from vmxdbg.common.errors import InputError

    def hang(data, workdir):
        while True:
            pass

    def escape(data, workdir):
        (workdir.parent / "escaped.txt").write_text("x")

    def spawn(data, workdir):
        import subprocess
        subprocess.run(["true"], check=False)

    assert _judged(lambda d, w: int("x"), tmp_path).startswith("ValueError")
    assert _judged(lambda d, w: {}["k"], tmp_path).startswith("KeyError")
    assert _judged(hang, tmp_path, 0.2).startswith("hang")
    assert "escaped the sandbox" in _judged(escape, tmp_path)
    assert not (tmp_path.parent / "escaped.txt").exists()
    assert "escaped the sandbox" in _judged(spawn, tmp_path)
    assert "does not name the file" in _judged(lambda d, w: (_ for _ in ()).throw(InputError("bad")), tmp_path)
    assert _judged(lambda d, w: (w / "in.x").write_text("inside is fine"), tmp_path) is None


def test_the_judge_catches_a_memory_blow_up(tmp_path, monkeypatch):
    monkeypatch.setattr(fuzzkit, "MEMORY_LIMIT", 64 << 20)
    # a generous time bound: on a loaded machine the allocation alone can take more than a second,
    # and this test is about the memory bound, not the time bound
    assert _judged(lambda d, w: bytearray(256 << 20)[::4096].count(0), tmp_path, time_limit=60.0).startswith("memory")


def test_mutations_are_reproducible_and_varied():
    seed = fuzzkit.corpus().snapshots[0]
    a = [fuzzkit.mutate(random.Random(i), seed) for i in range(50)]
    b = [fuzzkit.mutate(random.Random(i), seed) for i in range(50)]
    assert a == b and len(set(a)) > 40 and sum(m != seed for m in a) > 45


def test_the_cli_judge_holds_exit_codes_and_stderr_to_the_contract():
    ok = fuzzkit.CliResult
    assert fuzzkit.judge_cli(ok(0, "table\n", "")) is None
    assert fuzzkit.judge_cli(ok(1, "", "")) == "exit 1 without saying why"
    assert fuzzkit.judge_cli(ok(2, "", "vmxdbg: warning: x\nvmxdbg: f.log:3: bad\n"), ["f.log"]) is None
    assert "error lines" in fuzzkit.judge_cli(ok(2, "", "vmxdbg: a\nvmxdbg: b\n"))
    assert "traceback" in fuzzkit.judge_cli(ok(1, "", "Traceback (most recent call last):\n"))
    assert "names none" in fuzzkit.judge_cli(ok(2, "", "vmxdbg: something broke\n"), ["f.log"])
    assert fuzzkit.judge_cli(ok(3, "x", "")) == "exit status 3"


def test_a_paste_of_real_pieces_in_every_encoding_is_read(tmp_path):
    text = "\n".join(fuzzkit.KD_PIECES)
    for enc in ("utf-8", "utf-16-le", "utf-16", "utf-8-sig"):
        for end in ("\n", "\r\n", "\r"):
            o = fuzzkit.run_one(fuzzkit.READERS["kdlog"], text.replace("\n", end).encode(enc), tmp_path)
            assert o.ok and o.crash is None, o.crash
    assert Path(tmp_path).is_dir()
