"""vmxdbg: why VMXON or VM entry fails, named rule by rule, on every processor."""
from __future__ import annotations

__version__ = "0.1.0"
