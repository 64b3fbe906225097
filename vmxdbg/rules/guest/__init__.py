"""VM-entry checks on the guest-state area (exit reason 33): one module per SDM subsection.

Sources: SDM Vol.3C 27.3.1 (Checks on the Guest State Area) and 27.8 (exit
qualifications 2, 3 and 4), Intel SDM Order 325462-080US (June 2023); FRED checks
cite the FRED specification (346446), which that edition predates.

- registers: 27.3.1.1 control registers, debug registers and MSRs
- segments_fred, segments: 27.3.1.2 segment registers (segments is table-driven:
  structs/guest_segments.yaml)
- tables: 27.3.1.3 GDTR and IDTR
- rip_rflags: 27.3.1.4 RIP, RFLAGS and SSP
- activity, interruptibility, pending_debug, link_pointer: 27.3.1.5 non-register state
- pdpte: 27.3.1.6 PDPTEs

Order: these checks run after the VMX-control and host-state checks (27.2) and
"may be performed in any order" (27.3.1); importing this package registers the
rules in the order of the SDM's subsections.
"""
from . import (registers, segments_fred, tables, rip_rflags, activity,  # noqa: F401
               interruptibility, pending_debug, link_pointer, pdpte, segments)
