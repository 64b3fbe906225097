"""What a person asserts about processor state that no debugger shows (`--assume`).

A kernel debugger cannot see whether a processor is already in VMX operation,
whether A20M is asserted or whether GETSEC[SENTER] ran. Such inputs stay
unknown unless the person running vmxdbg states them; an assumption only fills
a value the input lacks (it never overrides one that was read), and its
provenance says it was assumed, so a finding that used it shows that.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Union

from ..common.errors import InputError
from ..common.statekeys import LAUNCH_STATES, STATES, VMX_MODES
from .snapshot import Processor, Snapshot

Value = Union[bool, int, str]
KEYS = STATES + ("launch",)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_assumptions(specs: Iterable[str]) -> Dict[str, Value]:
    """`vmx=off`, `a20m=0`, `cpl=0` ... -> {key: value}; InputError names a bad one."""
    out: Dict[str, Value] = {}
    for spec in specs:
        key, sep, raw = str(spec).partition("=")
        key, raw = key.strip().lower(), raw.strip().lower()
        if not sep or key not in KEYS:
            raise InputError(f"--assume {spec!r}: expected KEY=VALUE with KEY one of {', '.join(KEYS)}")
        if key == "vmx":
            if raw not in VMX_MODES:
                raise InputError(f"--assume {spec!r}: vmx is one of {', '.join(VMX_MODES)}")
            out[key] = raw
        elif key == "launch":    # the current VMCS's launch state (kept in the region, invisible to a debugger)
            if raw not in LAUNCH_STATES:
                raise InputError(f"--assume {spec!r}: launch is clear or launched")
            out[key] = raw
        elif key == "cpl":
            if raw not in ("0", "1", "2", "3"):
                raise InputError(f"--assume {spec!r}: cpl is 0, 1, 2 or 3")
            out[key] = int(raw)
        elif raw in _TRUE or raw in _FALSE:
            out[key] = raw in _TRUE
        else:
            raise InputError(f"--assume {spec!r}: {key} is true or false (1/0)")
    return out


#: how the provenance of an assumed value starts (verdicts resting on one say so)
ASSUMED = "assumed"


def apply_to_processor(p: Processor, assumptions: Dict[str, Value]) -> List[str]:
    """Fill the processor's missing state keys; the assumptions that conflict with what is
    known (kept as known), one phrase each."""
    conflicts = []
    for key, value in assumptions.items():
        if key == "launch":
            if p.vmcs_launch_state is None:
                p.vmcs_launch_state = str(value)
                p.provenance["state:vmcs_launch_state"] = f"assumed (--assume launch={value})"
            continue
        if key not in p.state:
            p.state[key] = value
            p.provenance[f"state:{key}"] = f"{ASSUMED} (--assume {key}={str(value).lower()})"
        elif p.state[key] != value and not p.provenance.get(f"state:{key}", "").startswith(ASSUMED):
            where = p.provenance.get(f"state:{key}")
            conflicts.append(f"--assume {key}={str(value).lower()} conflicts with {key}={str(p.state[key]).lower()}"
                             + (f" (from {where})" if where else "") + ": the known value is used")
    return conflicts


def apply_assumptions(snapshot: Snapshot, assumptions: Dict[str, Value]) -> List[str]:
    """Fill each processor's missing state keys with the assumptions; the conflicts with
    known state, one line each naming the processor."""
    out = []
    for cpu, p in sorted(snapshot.processors.items()):
        out += [f"cpu {cpu}: {c}" for c in apply_to_processor(p, assumptions)]
    return out
