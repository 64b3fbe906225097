"""Differential test of the guest modes: real-mode, unrestricted protected-mode and
virtual-8086 guests, mutated, vmxdbg's prediction against what Bochs did.

minihv's knob `guest=MODE` (vmxdbg/hypervisors/minihv/README.md) gives one processor a
guest in real-address mode (`real`), 32-bit protected mode with paging off
(`unrestricted-pm`) or virtual-8086 mode (`v86`), with EPT (identity map, WB) and
"unrestricted guest"; `override=ENC:VAL` then bends one thing before VMLAUNCH.
The mutations exercise what only these modes reach (Vol.3C 27.3.1.1-27.3.1.4,
SDM 325462-080US, 2023): CR0.PE/PG = 0 allowed only with "unrestricted guest" and
the secondary controls activated, the SS.DPL and DPL-versus-RPL relaxations, CS
type 3, and the virtual-8086 base/limit/access-rights rules. Rows expecting `ok`
are legal states that a stricter checker would refuse.

The assertions are those of tests/test_differential_bochs.py (whose helpers this
file uses): vmxdbg predicts what the mutation is about, Bochs did one of the
predicted outcomes or a known deviation (structs/deviations.yaml) explains it, and
processor 0 (64-bit guest, no knobs) entered.

`python tests/test_differential_bochs_modes.py` prints the table as Markdown.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Sequence, Tuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vmxdbg.hypervisors.minihv import knobs as minihv_knobs  # noqa: E402
from test_differential_bochs import E33, V7, Mutation, _failing, _slug, ov, verdict_word  # noqa: E402
from test_differential_bochs import pytestmark  # noqa: E402,F401  (the same bochs mark and skips)

# What minihv writes for these modes on Bochs 2.7's corei7_skylake_x ("vmcs written" and
# "guest mode" lines): primary controls with bit 31, secondary = EPT | unrestricted guest,
# entry controls without "IA-32e mode guest".
PROC = 0x84006172
SECONDARY = 0x82
ENTRY = 0x000011FB
REAL_CR0, PM_CR0 = 0x30, 0x31
PER_BOOT = 7


def M(name: str, mode: str, expect: str, *knobs: str) -> Mutation:
    """A mutation of the `mode` guest (group = mode)."""
    return Mutation(name, mode, (f"guest={mode}",) + tuple(knobs), expect)


R, U, V = "real", "unrestricted-pm", "v86"
MUTATIONS: Tuple[Mutation, ...] = (
    # ---- real-address mode (CR0.PE = PG = 0)
    M("real mode, clean", R, "ok"),
    M("real mode without unrestricted guest (EPT only)", R, E33, ov(0x401E, 0x2)),
    M("real mode, secondary controls not activated", R, E33, ov(0x4002, PROC & ~(1 << 31))),
    M("unrestricted guest without EPT", R, V7, ov(0x401E, 0x80)),
    M("real mode with CR0.PG = 1 (PE = 0)", R, E33, ov(0x6800, REAL_CR0 | 1 << 31)),
    M("real mode, CS type 3 with DPL 0 (allowed)", R, "ok", ov(0x4816, 0x93)),
    M("real mode, CS type 3 with DPL 3", R, E33, ov(0x4816, 0xF3)),
    M("real mode, SS.DPL 3", R, E33, ov(0x4818, 0xF3)),
    M("real mode, SS selector RPL 3, DPL 0 (allowed)", R, "ok", ov(0x804, 0x3)),
    M("real mode, CS base not selector << 4 (allowed)", R, "ok", ov(0x802, 0xF000)),
    M("real mode, CS type 11 with DPL 3 != SS.DPL 0", R, E33, ov(0x4816, 0xFB)),
    M("real mode, CS not accessed", R, E33, ov(0x4816, 0x9A)),
    M("real mode, SS code segment", R, E33, ov(0x4818, 0x9B)),
    M("real mode, DS unusable (allowed)", R, "ok", ov(0x481A, 0x10000)),
    M("real mode, 1 MiB data limit, byte granular (allowed)", R, "ok", ov(0x4806, 0xFFFFF)),
    M("real mode, TR busy 16-bit TSS (allowed)", R, "ok", ov(0x4822, 0x83)),
    M("real mode, TR available TSS", R, E33, ov(0x4822, 0x89)),
    M("real mode, RFLAGS.VM with CR0.PE = 0", R, E33, ov(0x6820, 0x20002)),
    M("real mode with IA-32e mode guest", R, E33, ov(0x4012, ENTRY | 1 << 9)),
    # ---- 32-bit protected mode, paging off
    M("protected mode, paging off, clean", U, "ok"),
    M("protected mode, paging off, without unrestricted guest", U, E33, ov(0x401E, 0x2)),
    M("protected mode, SS.RPL 3 != CS.RPL, SS.DPL 0 (allowed)", U, "ok", ov(0x804, 0x13)),
    M("protected mode, DS selector RPL 3 above DPL 0 (allowed)", U, "ok", ov(0x806, 0x13)),
    M("protected mode, CS DPL 3 != SS.DPL 0", U, E33, ov(0x4816, 0xC0FB)),
    M("protected mode, CS type 3 with DPL 0 (allowed)", U, "ok", ov(0x4816, 0xC093)),
    M("protected mode, CS type 3 with SS.DPL 3", U, E33, ov(0x4816, 0xC093), ov(0x4818, 0xC0F3),
      ov(0x804, 0x13)),
    M("CR0.PE cleared: real mode with flat 4 GiB segments (allowed)", U, "ok", ov(0x6800, REAL_CR0)),
    # ---- virtual-8086 mode (RFLAGS.VM = 1, CR0.PE = 1, PG = 0)
    M("virtual-8086, clean", V, "ok"),
    M("virtual-8086 without unrestricted guest (paging off)", V, E33, ov(0x401E, 0x2)),
    M("virtual-8086, ES selector 0x100 with base 0x1000 (allowed)", V, "ok", ov(0x800, 0x100),
      ov(0x6806, 0x1000)),
    M("virtual-8086, CS base not selector << 4", V, E33, ov(0x6808, 0x10)),
    M("virtual-8086, DS limit 0xFFFFF", V, E33, ov(0x4806, 0xFFFFF)),
    M("virtual-8086, SS access rights 0x93 (DPL 0)", V, E33, ov(0x4818, 0x93)),
    M("virtual-8086, GS access rights with G = 1", V, E33, ov(0x481E, 0x80F3)),
    M("virtual-8086, CS access rights 0xFB (code)", V, E33, ov(0x4816, 0xFB)),
    M("virtual-8086 with CR0.PE = 0", V, E33, ov(0x6800, REAL_CR0)),
    M("virtual-8086 with IA-32e mode guest", V, E33, ov(0x4012, ENTRY | 1 << 9)),
    M("virtual-8086, TR busy 16-bit TSS (allowed)", V, "ok", ov(0x4822, 0x83)),
)
BATCHES: Tuple[Tuple[Mutation, ...], ...] = tuple(MUTATIONS[i:i + PER_BOOT]
                                                  for i in range(0, len(MUTATIONS), PER_BOOT))
_RUNS: Dict[int, object] = {}


def run_batch(index: int):  # type: ignore[no-untyped-def]
    """The trace of one boot (cached): processor k + 1 runs BATCHES[index][k]; StepResults."""
    if index not in _RUNS:
        from vmxdbg.hypervisors.minihv.demo import bochs_trace
        batch = BATCHES[index]
        specs = [s for cpu, m in enumerate(batch, 1) for s in m.specs(cpu)]
        _RUNS[index] = bochs_trace(cpus=len(batch) + 1, knobs=specs, timeout=30, instructions=("vmlaunch",))
    return _RUNS[index]


CASES = [pytest.param(b, k, id=f"{m.group}-{_slug(m.name)}") for b, batch in enumerate(BATCHES)
         for k, m in enumerate(batch)]


def test_the_set_covers_every_mode() -> None:
    groups = {g: sum(m.group == g for m in MUTATIONS) for g in (R, U, V)}
    assert len(MUTATIONS) >= 30 and min(groups.values()) >= 6, groups
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    assert all(len(m.knobs) - 1 <= minihv_knobs.MAX_OVERRIDES for m in MUTATIONS)
    for mode in (R, U, V):        # each mode has clean rows and failing rows
        assert {m.expect == "ok" for m in MUTATIONS if m.group == mode} == {True, False}


@pytest.mark.parametrize("batch, slot", CASES)
def test_prediction_equals_what_bochs_did(batch: int, slot: int) -> None:
    mutation = BATCHES[batch][slot]
    results = run_batch(batch)
    cpu = slot + 1
    assert not [r for r in results if r.verdict is None], "a planned stop was missed"
    launch = [r for r in results if r.cpu == cpu and r.instruction == "vmlaunch"]
    assert len(launch) == 1, [(r.instruction, r.actual) for r in results if r.cpu == cpu]
    v, actual = launch[0].verdict, launch[0].actual
    if mutation.expect == "ok":
        assert v.possible == ["ok"], f"vmxdbg refuses a legal state: {v.possible} {_failing(v)}"
    else:
        assert any(p.startswith(mutation.expect) for p in v.possible), \
            f"vmxdbg predicts {v.possible}, not the {mutation.expect} this mutation is about ({_failing(v)})"
    assert actual in v.possible or launch[0].deviations, \
        f"vmxdbg predicted {v.possible} ({_failing(v)}), Bochs did {actual}; Bochs says {launch[0].log}"
    assert [(r.instruction, r.actual, r.match) for r in results if r.cpu == 0] == [("vmlaunch", "ok", True)]


def table(batches: Sequence[int] = ()) -> str:
    """The mutation table as Markdown (boots Bochs for every batch)."""
    rows = ["| # | mode | mutation | predicted | Bochs 2.7 | verdict | rules |", "|---|---|---|---|---|---|---|"]
    n = 0
    for b in batches or range(len(BATCHES)):
        results = run_batch(b)
        for k, m in enumerate(BATCHES[b]):
            n += 1
            r = [x for x in results if x.cpu == k + 1 and x.instruction == "vmlaunch"][0]
            word = verdict_word(r) + (f" ({', '.join(d.rule for d in r.deviations)})" if r.deviations else "")
            rows.append(f"| {n} | {m.group} | {m.name} | {'/'.join(r.verdict.possible)} | {r.actual} | {word} "
                        f"| {', '.join(_failing(r.verdict))} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.stdout.write(table())
