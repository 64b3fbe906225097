"""Hardware definitions from structs/ (loaded, validated, compiled to construct) and decoding.

Use `from vmxdbg.decode import defs`; see vmxdbg.decode.defs for the lookups
and vmxdbg.decode.caps for the capability report.
"""
from __future__ import annotations
