"""vmxdbg's errors keep their message and attributes across a process boundary."""
from __future__ import annotations

import pickle

import pytest

from vmxdbg.common.errors import (BackendError, DefinitionError, Divergence, InputError, NotAvailable,
                                  TargetGone, VmxdbgError)


@pytest.mark.parametrize("err", [
    VmxdbgError("plain"),
    InputError("not hex: 'zz'", source="a.log", line=12, key="msr.0x3a"),
    DefinitionError("no bits", source="structs/cr4.yaml", key="fields.VMXE"),
    BackendError("`xp` answered nothing", backend="bochs", cpu=1, what="0x1000"),
    NotAvailable("no CPUID", backend="kdlog", cpu=0),
    TargetGone("Bochs exited (status 1)", backend="bochs"),
    Divergence("asked rdmsr 0x3a, recorded cpuid 1"),
])
def test_an_error_pickles_whole(err: VmxdbgError) -> None:
    # the differential's worker processes (multiprocessing) send their errors to the parent
    # this way; the default pickling called BackendError(message) and failed in the parent
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err) and back.__dict__ == err.__dict__
