"""A sample of the random differential run (bench/differential_bochs.py) for CI: 1,000 mutations
of a fixed seed on Bochs, every one predicted by vmxdbg or explained by a known Bochs 2.7
deviation (structs/deviations.yaml). About 30 s on an idle 2-core machine; the 10,000-mutation figures are in
docs/deviations.md."""
from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_differential_bochs import pytestmark  # noqa: E402,F401  (the same bochs mark and skips)

ROOT = Path(__file__).resolve().parent.parent
SEED, COUNT = 20261204, 1000


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("differential_bochs", ROOT / "bench" / "differential_bochs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_sample_of_random_mutations_is_predicted_or_a_known_deviation(tmp_path: Path) -> None:
    bench = _bench()
    rows, boots, _ = bench.run(SEED, COUNT, save=str(tmp_path))
    assert [r["index"] for r in rows] == list(range(COUNT))
    words = Counter(r["word"] for r in rows)
    bad = [f"{r['index']}: predicted {r['possible']}, Bochs {r['actual']} ({'; '.join(r['labels'])}; "
           f"{' / '.join(r['log'][-2:])})" for r in rows if r["word"] == "unexplained"]
    assert not bad, "\n".join(bad)
    # the sample is broad: every guest mode, successes and each kind of failure
    assert {r["mode"] for r in rows} == {"64", "real", "unrestricted-pm", "v86"}
    kinds = Counter(r["actual"].split(":")[0] for r in rows)
    assert kinds["ok"] >= 20 and kinds["VMfailValid"] >= 20 and kinds["entry-fail"] >= 20, kinds
    assert words["agree"] >= COUNT * 0.9, words
    # only disagreements are saved, each with its snapshot
    assert len(list(tmp_path.glob("*.json"))) == 2 * words["deviation"]


def test_the_mutations_depend_only_on_seed_and_index() -> None:
    import mutations
    assert [mutations.mode_of(SEED, i) for i in range(50)] == [mutations.mode_of(SEED, i) for i in range(50)]
    assert len({mutations.mode_of(SEED, i) for i in range(200)}) == 4
