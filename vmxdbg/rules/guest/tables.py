"""Guest-state checks of SDM Vol.3C 27.3.1.3: guest descriptor-table registers (GDTR, IDTR) (SDM 325462-080US, 2023)."""
from __future__ import annotations

from ...decode import defs
from ..engine import CheckResult, Context, SKIP, Violation
from ..entrystate import field_label, intel64, show
from .common import B, G, S3, grule
from .registers import _canonical_field


def _register_table(rid_base: int, table: str) -> None:
    up = table.upper()
    base_f, limit_f = f"GUEST_{up}_BASE", f"GUEST_{up}_LIMIT"
    base_e, limit_e = defs.vmcs_field(base_f).encoding, defs.vmcs_field(limit_f).encoding

    @grule(id=f"GUEST{rid_base}", slug=f"guest-{table}-base-canonical", title=f"Guest {up} base must be canonical",
           sdm=S3, catalog=(f"GUEST.{up}.BASE_CANONICAL",),
           checks=f"{field_label(base_f)} holds a canonical address (Intel 64 processors).",
           broken="VM entry fails: exit reason 33, qualification 0.",
           fix=f"Sign-extend the {up} base.",
           examples=[B({f"vmcs/{base_e:#06x}": "0x800000000000"}), G({})])
    def base_check(ctx: Context) -> CheckResult:
        if not intel64(ctx):
            return SKIP
        return _canonical_field(ctx, base_f)

    @grule(id=f"GUEST{rid_base + 1}", slug=f"guest-{table}-limit", title=f"Guest {up} limit bits 31:16 must be 0",
           sdm=S3, catalog=(f"GUEST.{up}.LIMIT_HIGH",),
           checks=f"Bits 31:16 of {field_label(limit_f)} are 0: descriptor-table limits are 16 bits.",
           broken="VM entry fails: exit reason 33, qualification 0.",
           fix=f"Store the 16-bit {up} limit.",
           examples=[B({f"vmcs/{limit_e:#06x}": "0x10057"}), G({})])
    def limit_check(ctx: Context) -> CheckResult:
        if ctx.vmcs(limit_f) >> 16:
            return Violation(f"{show(ctx, limit_f)}: bits 31:16 are not 0")
        return None


_register_table(301, "gdtr")
_register_table(303, "idtr")
