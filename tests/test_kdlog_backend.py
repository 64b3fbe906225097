"""The kd log as a read-only backend."""
from __future__ import annotations

import pytest

from vmxdbg.backends.base import PHYSICAL, VIRTUAL
from vmxdbg.backends.kdlog import KdLogBackend
from vmxdbg.common.errors import NotAvailable

LOG = """0: kd> rdmsr 480
msr[480] = 00da0400`00000004
0: kd> r cr0
cr0=0000000080050033
0: kd> dq fffff800`04289000 L2
fffff800`04289000  00cf9b00`0000ffff 00cf9300`0000ffff
0: kd> !dd 1a2b3000 L1
#1a2b3000 00000004
1: kd> r cr4
cr4=00000000003506f8
"""


@pytest.fixture
def backend(tmp_path):
    path = tmp_path / "s.log"
    path.write_text(LOG)
    return KdLogBackend.open(path)


def test_answers_what_the_log_showed(backend):
    assert backend.processors() == [0, 1]
    assert backend.read_msr(0, 0x480) == 0xDA040000000004
    assert backend.read_register(0, "cr0") == 0x80050033
    assert backend.read_register(1, "cr4") == 0x3506F8
    assert backend.read_physical(0x1A2B3000, 4) == b"\x04\0\0\0"
    assert backend.read_virtual(0, 0xFFFFF80004289000, 8) == (0x00CF9B000000FFFF).to_bytes(8, "little")
    assert {PHYSICAL, VIRTUAL} <= backend.capabilities()


def test_says_where_each_value_came_from(backend):
    assert backend.where_msr(0, 0x480).endswith("s.log:2")
    assert backend.where(1, "reg:cr4").endswith("s.log:10")
    assert backend.describe()["lines"] == "10"


def test_what_the_log_did_not_show_is_not_available(backend):
    with pytest.raises(NotAvailable, match="cpu 1"):
        backend.read_msr(1, 0x480)
    with pytest.raises(NotAvailable):
        backend.read_virtual(1, 0xFFFFF80004289000, 8)
    with pytest.raises(NotAvailable):
        backend.read_physical(0x1A2B3004, 4)
    with pytest.raises(NotAvailable, match="no such processor"):
        backend.read_register(7, "cr0")


def test_at_line(tmp_path):
    path = tmp_path / "s.log"
    path.write_text(LOG)
    assert KdLogBackend.open(path, at_line=4).processors() == [0]
