"""minihv's configuration block: knobs that break chosen steps on chosen processors.

The block is one 4 KiB page at physical CONFIG_PHYS (0x9000), image offset
CONFIG_PHYS - IMAGE_BASE (0x1400).  Its layout is defined in layout.inc, the
one source of those numbers, which this module parses.  Use `encode` for the
bytes (a debugger writes them into memory at the planned stop `cfg_stop`),
`patch_image` to write them into a built image, `decode` to read them back.

A spec string names knobs the way a person types them, one per processor:
    "1:wrong_revision"  "0:stops,vmxe_clear"  "1:override=0x2800:0x0"
    "1:share_vmxon=0"   "1:revision=0x1234"  "2:guest=real"
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Tuple

from vmxdbg.common.errors import InputError
from vmxdbg.common.numbers import parse_int

LAYOUT_PATH = Path(__file__).with_name("layout.inc")
_EQU = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s+equ\s+(0x[0-9A-Fa-f]+|[0-9]+)\b")


def read_layout(path: Path = LAYOUT_PATH) -> Dict[str, int]:
    """Every `NAME equ NUMBER` line of layout.inc as {NAME: value}."""
    out: Dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = _EQU.match(line)
        if m:
            out[m.group(1)] = int(m.group(2), 0)
        elif re.match(r"^\s*[A-Z][A-Z0-9_]*\s+equ\b", line):
            raise InputError("expected `NAME equ NUMBER`", source=str(path), line=number)
    return out


L = read_layout()
CONFIG_PHYS: int = L["CONFIG_PHYS"]
CONFIG_SIZE: int = L["CONFIG_SIZE"]
CONFIG_OFFSET: int = L["CONFIG_PHYS"] - L["IMAGE_BASE"]   # in the image file
MAX_CPUS: int = L["MAX_CPUS"]
MAX_OVERRIDES: int = L["MAX_OVERRIDES"]
MAX_MSR_LOAD: int = L["MAX_MSR_LOAD"]


def msr_list_address(cpu: int) -> int:
    """Physical address of processor `cpu`'s VM-entry MSR-load entries (knob msr_load)."""
    return CONFIG_PHYS + L["CFG_MSR_LISTS"] + cpu * L["CFG_MSR_LIST_SIZE"] + L["ML_ENTRIES"]

# knob name -> bit in the per-processor record (layout.inc K_*)
KNOB_BITS: Dict[str, int] = {
    "vmxe_clear": L["K_VMXE_CLEAR"],
    "wrong_revision": L["K_WRONG_REVISION"],
    "misaligned": L["K_MISALIGNED"],
    "too_wide": L["K_TOO_WIDE"],
    "bit31": L["K_BIT31"],
    "share_vmxon": L["K_SHARE_VMXON"],
    "stops": L["K_STOPS"],
    "vmcs_wrong_revision": L["K_VMCS_WRONG_REVISION"],
    "layout_probe": L["K_LAYOUT_PROBE"],
}

#: knob `guest=MODE` -> its bit (layout.inc K_GUEST_*); "64" (no bit) is the default 64-bit guest.
#: The other modes turn on EPT and "unrestricted guest" (minihv.asm guest_common_table).
GUEST_MODES: Dict[str, int] = {
    "64": 0,
    "real": L["K_GUEST_REAL"],
    "unrestricted-pm": L["K_GUEST_UPM"],
    "v86": L["K_GUEST_V86"],
}


@dataclass(frozen=True)
class CoreKnobs:
    """What to break on one processor (all False = the healthy sequence)."""

    vmxe_clear: bool = False
    wrong_revision: bool = False
    revision_value: int = 0          # dword written by wrong_revision; 0 = revision ^ 1
    misaligned: bool = False
    too_wide: bool = False
    bit31: bool = False
    share_vmxon: bool = False
    share_with: int = 0              # processor whose VMXON region share_vmxon uses
    stops: bool = False              # magic breakpoint before each VMX instruction
    vmcs_wrong_revision: bool = False
    layout_probe: bool = False       # run the VMCS layout probe after VMXON (layout_probe.inc)
    overrides: Tuple[Tuple[int, int], ...] = ()   # (VMCS encoding, value), VMWRITE before VMLAUNCH
    #: VM-entry MSR-load entries (MSR index, value, bits 63:32); when any, minihv writes
    #: VM_ENTRY_MSR_LOAD_COUNT / _ADDR (0x4014 / 0x200A) for them before the overrides
    msr_load: Tuple[Tuple[int, int, int], ...] = ()
    guest: str = "64"                # guest mode, a key of GUEST_MODES

    @property
    def bits(self) -> int:
        """The K_* bit mask of this record; InputError for an unknown guest mode."""
        if self.guest not in GUEST_MODES:
            raise InputError(f"guest mode {self.guest!r}: known modes are {', '.join(GUEST_MODES)}")
        return sum(bit for name, bit in KNOB_BITS.items() if getattr(self, name)) + GUEST_MODES[self.guest]


@dataclass(frozen=True)
class Config:
    """The whole configuration block."""

    cores: Mapping[int, CoreKnobs] = field(default_factory=dict)
    shutdown: bool = False           # Bochs exits after "[all] done"
    stop_at_end: bool = False        # magic breakpoint end_stop after "[all] done"
    expect_cpus: int = 0             # processors the bootstrap processor waits for

    def core(self, cpu: int) -> CoreKnobs:
        """The knobs of `cpu` (healthy when absent)."""
        return self.cores.get(cpu, CoreKnobs())


def _u(value: int, bits: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise InputError(f"{what}: {value!r} is not a {bits}-bit unsigned value")
    return value


def encode(config: Config) -> bytes:
    """The CONFIG_SIZE bytes of the block; InputError naming a bad processor/value."""
    page = bytearray(CONFIG_SIZE)
    struct.pack_into("<Q", page, 0, L["CFG_MAGIC"])
    flags = (L["CF_SHUTDOWN"] if config.shutdown else 0) | (L["CF_STOP_AT_END"] if config.stop_at_end else 0)
    struct.pack_into("<I", page, L["CFG_FLAGS"], flags)
    struct.pack_into("<I", page, L["CFG_EXPECT_CPUS"], _u(config.expect_cpus, 32, "expect_cpus"))
    for cpu, knobs in config.cores.items():
        if not isinstance(cpu, int) or not 0 <= cpu < MAX_CPUS:
            raise InputError(f"processor {cpu!r}: minihv supports processors 0-{MAX_CPUS - 1}")
        where = f"cpu{cpu}"
        base = L["CFG_CORES"] + cpu * L["CFG_CORE_SIZE"]
        if len(knobs.overrides) > MAX_OVERRIDES:
            raise InputError(f"{where}: {len(knobs.overrides)} overrides, at most {MAX_OVERRIDES}")
        if not 0 <= knobs.share_with < MAX_CPUS:
            raise InputError(f"{where}: share_with {knobs.share_with} is not a processor 0-{MAX_CPUS - 1}")
        struct.pack_into("<IIII", page, base + L["CC_KNOBS"], knobs.bits,
                         _u(knobs.revision_value, 32, f"{where} revision_value"),
                         knobs.share_with, len(knobs.overrides))
        for i, (encoding, value) in enumerate(knobs.overrides):
            struct.pack_into("<QQ", page, base + L["CC_OVERRIDES"] + 16 * i,
                             _u(encoding, 32, f"{where} override encoding"),
                             _u(value, 64, f"{where} override value"))
        if len(knobs.msr_load) > MAX_MSR_LOAD:
            raise InputError(f"{where}: {len(knobs.msr_load)} MSR-load entries, at most {MAX_MSR_LOAD}")
        lst = L["CFG_MSR_LISTS"] + cpu * L["CFG_MSR_LIST_SIZE"]
        struct.pack_into("<I", page, lst + L["ML_COUNT"], len(knobs.msr_load))
        for i, (index, value, reserved) in enumerate(knobs.msr_load):
            struct.pack_into("<IIQ", page, lst + L["ML_ENTRIES"] + 16 * i,
                             _u(index, 32, f"{where} msr_load index"),
                             _u(reserved, 32, f"{where} msr_load bits 63:32"),
                             _u(value, 64, f"{where} msr_load value"))
    return bytes(page)


def decode(data: bytes) -> Optional[Config]:
    """The Config in a block, or None without the magic (minihv then uses no knobs)."""
    if len(data) < CONFIG_SIZE:
        raise InputError(f"configuration block: {len(data)} bytes, expected {CONFIG_SIZE}")
    if struct.unpack_from("<Q", data, 0)[0] != L["CFG_MAGIC"]:
        return None
    flags, expect = struct.unpack_from("<II", data, L["CFG_FLAGS"])
    cores = {}
    for cpu in range(MAX_CPUS):
        base = L["CFG_CORES"] + cpu * L["CFG_CORE_SIZE"]
        bits, revision, share, count = struct.unpack_from("<IIII", data, base)
        count = min(count, MAX_OVERRIDES)        # minihv caps it the same way
        overrides = tuple(struct.unpack_from("<QQ", data, base + L["CC_OVERRIDES"] + 16 * i)
                          for i in range(count))
        lst = L["CFG_MSR_LISTS"] + cpu * L["CFG_MSR_LIST_SIZE"]
        loads = min(struct.unpack_from("<I", data, lst + L["ML_COUNT"])[0], MAX_MSR_LOAD)
        msr_load = tuple((i, v, r) for i, r, v in (struct.unpack_from("<IIQ", data, lst + L["ML_ENTRIES"] + 16 * k)
                                                    for k in range(loads)))
        guest = next((m for m, bit in GUEST_MODES.items() if bit and bits & bit), "64")
        knobs = CoreKnobs(revision_value=revision, share_with=share, overrides=overrides, msr_load=msr_load,
                          guest=guest,
                          **{name: bool(bits & bit) for name, bit in KNOB_BITS.items()})
        if knobs != CoreKnobs():
            cores[cpu] = knobs
    return Config(cores=cores, shutdown=bool(flags & L["CF_SHUTDOWN"]),
                  stop_at_end=bool(flags & L["CF_STOP_AT_END"]), expect_cpus=expect)


def patch_image(image: Path, config: Config) -> None:
    """Write the block into a built floppy image, in place."""
    data = encode(config)
    with open(image, "r+b") as f:
        f.seek(CONFIG_OFFSET)
        if f.read(8) != struct.pack("<Q", L["CFG_MAGIC"]):
            raise InputError("no minihv configuration block at image offset "
                             f"{CONFIG_OFFSET:#x}", source=str(image))
        f.seek(CONFIG_OFFSET)
        f.write(data)


def from_specs(specs: Iterable[str], **config_fields: object) -> Config:
    """Config from spec strings ("1:wrong_revision,stops", "1:override=0x2800:0")."""
    cores: Dict[int, dict] = {}
    for spec in specs:
        cpu_text, sep, items = spec.partition(":")
        if not sep or not cpu_text.strip().isdigit():
            raise InputError(f"knob spec {spec!r}: expected CPU:KNOB[,KNOB...]")
        cpu = int(cpu_text)
        fields = cores.setdefault(cpu, {"overrides": [], "msr_load": []})
        for item in filter(None, (x.strip() for x in items.split(","))):
            name, _, arg = item.partition("=")
            if name in KNOB_BITS and not arg:
                fields[name] = True
            elif name == "revision" and arg:
                fields["wrong_revision"] = True
                fields["revision_value"] = parse_int(arg, what=f"knob spec {spec!r} revision")
            elif name == "share_vmxon" and arg:
                fields["share_vmxon"] = True
                fields["share_with"] = parse_int("0n" + arg if arg.isdigit() else arg,
                                                 what=f"knob spec {spec!r} share_vmxon")
            elif name == "guest" and arg in GUEST_MODES:
                fields["guest"] = arg
            elif name == "override" and arg.count(":") == 1:
                enc, val = arg.split(":")
                fields["overrides"].append((parse_int(enc, what=f"knob spec {spec!r} encoding"),
                                            parse_int(val, what=f"knob spec {spec!r} value")))
            elif name == "msr_load" and arg.count(":") in (1, 2):
                parts = [parse_int(x, what=f"knob spec {spec!r} msr_load") for x in arg.split(":")]
                fields["msr_load"].append((parts[0], parts[1], parts[2] if len(parts) == 3 else 0))
            else:
                known = ", ".join(sorted(KNOB_BITS) + ["revision=V", "share_vmxon=CPU", "override=ENC:VAL",
                                                       "guest=" + "|".join(GUEST_MODES),
                                                       "msr_load=MSR:VAL[:RESERVED]"])
                raise InputError(f"knob spec {spec!r}: unknown knob {item!r} (known: {known})")
    built = {cpu: CoreKnobs(**{**f, "overrides": tuple(f["overrides"]), "msr_load": tuple(f["msr_load"])})
             for cpu, f in cores.items()}
    return Config(cores=built, **config_fields)  # type: ignore[arg-type]
