"""Backends that stand in for another backend, written once from `recording.OPS`.

The recorder, the cassette and the replay backend each answer every operation
of the contract in the same way: they name the call (operation, processor,
arguments as recorded) and either pass it on or look it up. `forwards_ops`
writes those methods from the one list of operations, so a new operation is
one entry in `OPS` and one method in `Backend`. A class keeps any method it
defines itself (the replay backend's keyed memory, say).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Tuple, Type, TypeVar

from ..backends.base import Backend
from .recording import OPS, OpSpec

#: How an argument is put in its recorded form (the recording's decoders give the same types).
_ARG_FORMS: Dict[str, Callable[[Any], Any]] = {"strs": tuple, "bool": bool, "float": float}

Call = Callable[[Backend], Any]
B = TypeVar("B", bound=Backend)


def _copied(value: Any) -> Any:
    """A fresh container, so a caller that changes an answer never changes a stored one."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


def _forwarder(op: str, spec: OpSpec) -> Callable[..., Any]:
    signature = inspect.signature(getattr(Backend, op))
    names = [n for n in signature.parameters if n != "self"]

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = {n: bound.arguments[n] for n in names}
        for name, form in spec.args:
            if form in _ARG_FORMS:
                values[name] = _ARG_FORMS[form](values[name])
        cpu = values["cpu"] if spec.cpu else None
        recorded: Tuple[Any, ...] = tuple(values[name] for name, _ in spec.args)
        positional = [values[n] for n in names]
        return _copied(self._forward(op, cpu, recorded, lambda backend: getattr(backend, op)(*positional)))

    method.__name__ = method.__qualname__ = op
    method.__doc__ = getattr(Backend, op).__doc__
    return method


def forwards_ops(cls: Type[B]) -> Type[B]:
    """Class decorator: each operation of OPS that `cls` does not define becomes
    `self._forward(op, cpu, args, call)`, where `args` are the recorded arguments
    and `call(backend)` makes the same call on another backend."""
    written = set()
    for op, spec in OPS.items():
        if op not in cls.__dict__:
            setattr(cls, op, _forwarder(op, spec))
            written.add(op)
    # abc computed the abstract methods before these existed (abc.update_abstractmethods is 3.10+)
    cls.__abstractmethods__ = frozenset(cls.__abstractmethods__ - written)  # type: ignore[attr-defined]
    return cls
