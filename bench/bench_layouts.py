"""Time VMCS layout work: decoding a region, building one, learning a layout from a probe dump.

    python bench/bench_layouts.py [--repeat N]

Prints the median of N runs per step and per built-in layout (not a test).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

from vmxdbg.decode import defs
from vmxdbg.decode.layouts import known_layouts
from vmxdbg.decode.probe import learn, parse_dump, probe_dump_text, tag_for_width


def median_us(fn: Callable[[], object], repeat: int) -> float:
    times: List[float] = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=200)
    n = ap.parse_args().repeat
    fields = [(f.encoding, f.name) for f in defs.vmcs_fields()]
    for lay in known_layouts():
        values = {s.encoding: tag_for_width(s.encoding) for s in lay.slots}
        region = lay.build(values)
        text = probe_dump_text(region, lay.revision_id).encode()
        print(f"{lay.name:<12} parse {median_us(lambda: lay.parse(region), n):8.1f} us   "
              f"build {median_us(lambda: lay.build(values), n):8.1f} us   "
              f"learn (text dump) {median_us(lambda: learn(parse_dump(text, 'b'), fields), max(1, n // 10)):8.1f} us")


if __name__ == "__main__":
    main()
