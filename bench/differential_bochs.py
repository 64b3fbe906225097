"""Random VMCS mutations on Bochs: vmxdbg's predicted outcomes against what Bochs did.

    python bench/differential_bochs.py --mutations N --seed S [--jobs J] [--save DIR]

Mutation i of seed S (tests/fixtures/mutations.py) starts from one of minihv's
healthy guests (64-bit, real mode, 32-bit protected mode with paging off,
virtual-8086; PAE and 32-bit paging come from the 64-bit one) and changes 1-3
things at the edges of the SDM's VM-entry checks. Many mutations share one
Bochs boot (tests/fixtures/diffrun.py: apply at the VMLAUNCH stop, predict,
step, compare, restore). Each result is one of:
  agree       what Bochs did is among vmxdbg's possible outcomes
  deviation   it is not, and a Bochs 2.7 deviation of structs/deviations.yaml explains it
  unexplained anything else (saved to --save DIR as a snapshot + what Bochs said)
The run is deterministic for a seed (any --jobs). The last line is
`N mutations: A agree, D known Bochs deviations, U unexplained`; the exit status
is 0 only when U = 0.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

import diffrun  # noqa: E402
import mutations  # noqa: E402
from vmxdbg.hypervisors.minihv import knobs as minihv_knobs  # noqa: E402

CHUNK = 400                      # mutations per task (a boot, or more if one is lost)


def context(boot: "diffrun.Boot") -> mutations.Context:
    base = boot.base
    return mutations.Context(mode=boot.mode, fields=base.fields, caps=base.caps, scratch=base.scratch,
                             vmcs_ptr=base.vmcs_ptr, vmxon_ptr=base.vmxon_ptr, pd_phys=minihv_knobs.L["PD_PHYS"],
                             msrs=base.msrs, maxphyaddr=base.maxphyaddr)


def run_task(task: Tuple[int, str, List[int], Optional[str]]) -> Tuple[List[dict], List[str]]:
    seed, mode, indices, save = task
    results: List[dict] = []
    boots: List[str] = []
    made: Dict[int, mutations.Mutation] = {}

    def make(index: int, boot: "diffrun.Boot"):  # type: ignore[no-untyped-def]
        m = mutations.generate(seed, index, context(boot))
        made[index] = m
        return m.fields, m.memory

    def on_result(o: "diffrun.Outcome") -> None:
        m = made[o.index]
        row = {"index": o.index, "mode": mode, "labels": m.labels, "possible": o.possible, "actual": o.actual,
               "word": o.word, "failing": o.failing, "deviations": o.deviations, "log": o.log,
               "seconds": o.seconds}
        if save and o.word != "agree":
            save_case(Path(save), seed, m, row, o)
        results.append(row)

    diffrun.run_many(mode, indices, make, on_result, boots.append)
    return results, boots


def save_case(directory: Path, seed: int, m: mutations.Mutation, row: dict, o: "diffrun.Outcome") -> None:
    from vmxdbg.state.snapshot import save_snapshot
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"seed{seed}-{m.index:06d}-{o.word}"
    if o.snapshot is not None:
        o.snapshot.memory.fallback = None
        save_snapshot(o.snapshot, f"{stem}.vmxsnap.json")
    case = dict(row, seed=seed, fields={f"0x{k:04x}": f"0x{v:x}" for k, v in m.fields.items()},
                memory=[[f"0x{off:x}", data.hex()] for off, data in m.memory],
                bochs_says=o.log)
    Path(f"{stem}.json").write_text(json.dumps(case, indent=1) + "\n")


def run(seed: int, mutations_: int, first: int = 0, jobs: int = 1, save: Optional[str] = None,
        progress: bool = False, only: Optional[List[int]] = None) -> Tuple[List[dict], Counter, float]:
    """Mutations first..first+mutations_-1 of `seed`: (rows sorted by index, why each boot was
    made ("first boot" or what ended the one before), seconds)."""
    by_mode: Dict[str, List[int]] = {}
    for i in (only if only is not None else range(first, first + mutations_)):
        by_mode.setdefault(mutations.mode_of(seed, i), []).append(i)
    tasks = [(seed, mode, idx[k:k + CHUNK], save) for mode, idx in sorted(by_mode.items())
             for k in range(0, len(idx), CHUNK)]
    t0 = time.perf_counter()
    rows: List[dict] = []
    reboots: Counter = Counter()
    pool = multiprocessing.get_context("spawn").Pool(jobs) if jobs > 1 else None
    try:
        outs = pool.imap_unordered(run_task, tasks) if pool else map(run_task, tasks)
        for res, booted in outs:
            rows += res
            reboots.update(why if why == "first boot" else why.split(": ", 1)[-1][:400] for why in booted)
            if progress:
                print(f"  {len(rows)}/{mutations_} done, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        if pool:
            pool.close()
            pool.join()
    rows.sort(key=lambda r: r["index"])
    return rows, reboots, time.perf_counter() - t0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutations", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--save", help="directory for every disagreement (snapshot + Bochs' log line)")
    ap.add_argument("--first", type=int, default=0, help="index of the first mutation (default 0)")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    ap.add_argument("--only", help="run just these mutation indices (comma-separated; --mutations is their count)")
    args = ap.parse_args(argv)
    only = [int(x) for x in args.only.split(",")] if args.only else None
    if only is not None:
        args.mutations = len(only)
    if args.mutations < 1 or args.jobs < 1:
        print("differential_bochs.py: --mutations and --jobs must be at least 1", file=sys.stderr)
        return 2
    if args.save:
        try:
            Path(args.save).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            print(f"differential_bochs.py: --save {args.save}: cannot create the directory ({e.strerror})",
                  file=sys.stderr)
            return 2
    from vmxdbg.hypervisors.minihv.demo import require_tools
    require_tools()
    from vmxdbg.common.errors import VmxdbgError
    try:
        rows, reboots, elapsed = run(args.seed, args.mutations, args.first, args.jobs, args.save, not args.quiet, only)
    except VmxdbgError as e:            # Bochs would not boot three times in a row (diffrun.run_many)
        print(f"differential_bochs.py: seed {args.seed}: {e}", file=sys.stderr)
        return 2
    boots = sum(reboots.values())
    counts = Counter(r["word"] for r in rows)
    if not args.quiet:
        for r in rows:
            if r["word"] != "agree":
                print(f"{r['index']:6d} {r['mode']:16s} {r['word']:11s} predicted {'/'.join(r['possible'])}, "
                      f"Bochs {r['actual']} {r['deviations'] or ''} | {'; '.join(r['labels'])} | "
                      f"{' / '.join(r['log'][-2:])}")
        print(f"seed {args.seed}, mutations {args.first}-{args.first + args.mutations - 1}, jobs {args.jobs}: "
              f"{elapsed:.0f} s, {boots} boots, by mode {dict(Counter(r['mode'] for r in rows))}, outcomes "
              f"{dict(Counter(r['actual'].split(':')[0] + (':' + r['actual'].split(':')[1] if ':' in r['actual'] else '') for r in rows))}")
        for why, n in reboots.most_common():
            if why != "first boot":
                print(f"  boot replaced {n}x: {why}")
    missing = args.mutations - len(rows)
    print(f"{args.mutations} mutations: {counts['agree']} agree, {counts['deviation']} known Bochs deviations, "
          f"{counts['unexplained'] + missing} unexplained")
    return 0 if counts["unexplained"] + missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
