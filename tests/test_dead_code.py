"""No unreachable code and no unused imports or variables in the package (vulture).

Names used only through a signature, an annotation or an entry point are listed,
each with why, in tests/vulture_allowlist.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("vulture", reason="vulture is in the test extras: pip install -e '.[test]'")


def test_vulture_finds_nothing_at_90_percent_confidence():
    r = subprocess.run([sys.executable, "-m", "vulture", "vmxdbg", "tests/vulture_allowlist.py",
                        "--min-confidence", "90"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr


def test_vulture_would_catch_unreachable_code(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    return 1\n    print('never')\n")
    r = subprocess.run([sys.executable, "-m", "vulture", str(tmp_path / "m.py"), "--min-confidence", "90"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "unreachable code" in r.stdout
