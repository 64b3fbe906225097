"""The layout probe under Bochs: what it learns is the built-in Bochs layout, and memory decodes to what was written.

minihv runs the probe (knob layout_probe, layout_probe.inc) on two processors
right after VMXON; its E9 output is the dump `vmxdbg layout learn` reads.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict

import pytest

from vmxdbg.cli import main
from vmxdbg.decode.layouts import find_layout, load_layout
from vmxdbg.decode.probe import learn, parse_blocks, probe_encodings, tag_for_width
from vmxdbg.decode import defs

from vmxdbg.hypervisors.minihv import build as minihv_build  # noqa: E402
from vmxdbg.hypervisors.minihv.knobs import Config, CoreKnobs  # noqa: E402

BOCHS = shutil.which("bochs-bin")
NASM = shutil.which("nasm")
TIMEOUT = 90
FIELDS = [(f.encoding, f.name) for f in defs.vmcs_fields()]

pytestmark = [
    pytest.mark.bochs,
    pytest.mark.skipif(not BOCHS, reason="bochs-bin not installed (Debian: apt-get install bochs bochsbios vgabios)"),
    pytest.mark.skipif(not NASM, reason="nasm not installed (Debian: apt-get install nasm)"),
]


@pytest.fixture(scope="module")
def probe_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bochs' stdout of minihv with the probe on cpu0 and cpu1 (booted once for the module)."""
    tmp = tmp_path_factory.mktemp("probe")
    config = Config(cores={0: CoreKnobs(layout_probe=True), 1: CoreKnobs(layout_probe=True)},
                    shutdown=True, expect_cpus=2)
    image = minihv_build.build(tmp, config)
    rc = tmp / "bochsrc"
    rc.write_text(minihv_build.bochsrc(image, 2, log=tmp / "bochs.log"))
    proc = subprocess.Popen([BOCHS, "-q", "-f", str(rc)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=tmp)
    try:
        out, _ = proc.communicate(b"c\n", timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"Bochs did not end within {TIMEOUT} s; output ends: {out[-500:]!r}")
    path = tmp / "bochs.out"
    path.write_bytes(out)
    text = out.decode("latin-1")
    assert "[all] done cpus=2" in text, text[-2000:]
    return path


def blocks(path: Path) -> Dict[str, object]:
    return {b.stream: b for b in parse_blocks(path.read_text(encoding="latin-1"), str(path))}


def test_learned_layout_equals_the_builtin_bochs_layout(probe_output: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    bochs = find_layout("bochs")
    out = tmp_path / "learned.yaml"
    assert main(["layout", "learn", str(probe_output), "-o", str(out), "--block", "[cpu0]"]) == 0
    assert "same as the known layout bochs on every field this CPU has" in capsys.readouterr().out
    learned = load_layout(out)
    dump = blocks(probe_output)["[cpu0]"]
    # every field the processor took is where the built-in layout says, stored the same way ...
    assert {e: bochs.field_map()[e] for e in learned.field_map()} == learned.field_map()
    # ... and every built-in field it did not learn is one this CPU model refused (VMfailValid 12)
    missing = set(bochs.field_map()) - set(learned.field_map())
    assert missing <= set(dump.failed) and all(dump.failed[e] == "err=12" for e in missing)
    assert missing == {0x2030, 0x2818, 0x2C06, 0x6828, 0x682A, 0x682C, 0x6C18, 0x6C1A, 0x6C1C}
    # the access-rights fields were found rotated, as vmx.cc stores them
    assert {s.encoding for s in learned.slots if s.transform == "ar_rotate8"} == set(range(0x4814, 0x4824, 2))


def test_fields_decoded_after_vmclear_equal_the_values_written(probe_output: Path) -> None:
    bochs = find_layout("bochs")
    dump = blocks(probe_output)["[cpu0]"]
    assert dump.revision_id == 0x2B
    decoded = bochs.parse(dump.data)
    written = {e: tag_for_width(e) for e in probe_encodings() if e not in dump.failed}
    assert set(written) <= set(decoded)
    assert {e: decoded[e] for e in written} == written
    assert len(written) == 151


def test_application_processors_accept_every_grid_slot(probe_output: Path) -> None:
    """Bochs 2.7 prunes unsupported encodings from the first processor's map only: on cpu1 every
    encoding with a slot on the grid is accepted, and stored where the grid formula puts it."""
    dump = blocks(probe_output)["[cpu1]"]
    got = learn(dump, FIELDS).layout
    assert len(got.slots) > len(find_layout("bochs").slots)
    for s in got.slots:
        group = (s.encoding >> 13 & 3) << 2 | (s.encoding >> 10 & 3)
        assert s.offset == 0x10 + (group * 64 + (s.encoding & 0x3FF)) * 4, hex(s.encoding)
    assert all(e & 0x3FF >= 0x34 for e in dump.failed)      # only encodings off the grid fail
