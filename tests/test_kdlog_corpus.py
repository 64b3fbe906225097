"""Real kd excerpts (tests/data/kdreal): each with where it came from and what a careful
reader takes from it. The text of every .log file is copied from its source (blocks of a
page joined in their order; what was left out is said in `kept`); nothing in it was
written for vmxdbg. Excerpts found with the search tool's `find_string` name the string
searched and the id of the stored file, since that index gives no repository path."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


from vmxdbg.inputs.kdlog import parse_file
from vmxdbg.inputs.sources import kind_of

DATA = Path(__file__).resolve().parent / "data" / "kdreal"
DOCS = "MicrosoftDocs/windows-driver-docs, windows-driver-docs-pr/"

SOURCES = {
    "msdocs-dc-cached.log": DOCS + "debuggercmds/-db---dc---dd---dp---dq---du---dw.md (learn.microsoft.com "
                                   "…/debuggercmds/-db---dc---dd---dp---dq---du---dw)",
    "msdocs-vtop.log": DOCS + "debugger/converting-virtual-addresses-to-physical-addresses.md: its dbgcmd "
                              "blocks in order, the !process of the second section once",
    "msdocs-cpuinfo.log": DOCS + "debuggercmds/-cpuinfo.md (the x86 example; the Itanium one left out)",
    "msdocs-cpuid.log": DOCS + "debuggercmds/-cpuid.md (learn.microsoft.com …/debuggercmds/-cpuid)",
    "eskezje-cpuinfo-hpet.md.log": "eskezje's timer write-up on GitHub (links github.com/eskezje/time); "
                                   "find_string('kd> !cpuinfo'), stored id 34074379354; section 7 to 8, fences kept",
    "nohuto-amd-cpuinfo.log": "nohuto's quantum write-up on GitHub (links github.com/nohuto/decompiled-pseudocode); "
                              "find_string('kd> !cpuinfo'), stored id 56674373562; the lkd blocks of 'Cycles per QU'",
    "msr-fs-base-wrmsr.log": "a WinDbg MSR cheat sheet on GitHub ('Model Specific Registers'); "
                             "find_string('kd> rdmsr'), stored id 301113508",
    "sysenter-msrs-annotated.log": "a Chinese sysenter/KiFastCallEntry note on GitHub; find_string('kd> rdmsr'), "
                                   "stored id 38836310230 (the author's // notes kept)",
    "efer-formats.log": "an operation-mode write-up on GitHub ('Figure 2. Operation Sub-Mode Identification'); "
                        "find_string('kd> rdmsr'), stored id 13102408626",
    "kvas-lstar-cr3.log": "a Chinese KVA-shadow note on GitHub; find_string('kd> rdmsr') and "
                          "find_string('kd> !dq '), stored id 21114213760; two blocks of the file",
    "lkd-rdmsr-capital.log": "a syscall note on GitHub ('NTDLL.dll kernel gate'); find_string('kd> rdmsr'), "
                             "stored id 18145394744",
    "kvas-pagewalk-indented.log": "a Chinese KVAS page-walk note on GitHub (indented list item); "
                                  "find_string('kd> !dq '), stored id 23236384022; the first walk",
    "pte-walk-vtop-dq.log": "a Chinese WinDbg note on GitHub (查看物理内存内容); find_string('kd> !dq '), "
                            "stored id 71020159935",
    "lkd-pagewalk-formats.log": "a page-walk write-up on GitHub; find_string('kd> !dq '), stored id 25182566562",
    "x86-pae-dq-padded.log": "a Chinese x86 PAE paging note on GitHub; find_string('kd> !dq '), "
                             "stored id 13621354437; the first two dumps",
    "cr3-pml4e-by-hand.log": "a Chinese (traditional) page-walk post on GitHub; find_string('kd> !dq '), "
                             "stored id 43198135010; its code blocks in order",
    "dq-p-read-failed.log": "a livekd/physical-memory post on GitHub; find_string('kd> !dq '), stored id 59130436748",
    "hyperdbg-r.log": "HyperDbg documentation, the 'r' command page (docs.hyperdbg.org); "
                      "find_string('kHyperDbg> '), stored id 4447061567",
    "quoted-dump-kb.log": "a dump opened in kd, quoted with '> ' in a reply on GitHub; "
                          "find_string('> 0: kd> '), stored id 27964797760; up to frame 01",
    "x86-tabs-r-rm100-dg.log": "a Chinese OS-basics note (reStructuredText, tab-indented) on GitHub; "
                               "find_string('kd> dg '), stored id 37995655227",
    "x86-r-fs-dg-fs.log": "an HEVD x86 shellcode write-up on GitHub; find_string('kd> dg '), stored id 6261617737",
    "dq-gdtr-dg10.log": "a Chinese x64 GDT note on GitHub; find_string('kd> dg '), stored id 42511442936; "
                        "the dq gdtr block (its cut last line left out) and dg 10",
    "hevd-r-annotation-dq.log": "a Turkish HEVD arbitrary-overwrite write-up on GitHub; "
                                "find_string(' ds:002b:00000000`'), stored id 26381722901",
    "cxr-wow64-annotation.log": "a crash analysis on GitHub; find_string(' ds:002b:00000000`'), stored id 25618302150",
    "windbg-feedback-75-banner.log": "microsoft/WinDbg-Feedback issue 75 (Bootloader Debug Failure), the Preview "
                                     "transcript: a kd banner and no prompt",
}


def load(name: str):
    return parse_file(DATA / name)


def p_(name: str, cpu: int = 0):
    return load(name).snapshot.processors[cpu]


def virt(log, cpu: int, address: int, size: int):
    return log.snapshot.processors[cpu].virtual_memory.read(address, size)


def q(value: int) -> bytes:
    return value.to_bytes(8, "little")


def run(*argv: str):
    r = subprocess.run([sys.executable, "-m", "vmxdbg", *argv], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def test_every_excerpt_has_its_source_and_is_a_kd_log():
    logs = sorted(p.name for p in DATA.glob("*.log"))
    assert len(logs) >= 20
    assert sorted(SOURCES) == logs
    for name in logs:
        assert kind_of(DATA / name) == "kd log", name


# ---------------------------------------------------------------- physical dumps

def test_padded_physical_dc_after_a_failed_read():
    log = load("msdocs-dc-cached.log")
    assert log.warnings == []
    assert log.notes == [(2, "physical memory read at e9000 failed")]
    assert log.snapshot.memory.read(0xE9000, 32) == bytes.fromhex("02a00e00") * 8
    assert log.snapshot.processors[0].provenance["mem:0xe9000"].endswith(":11")


def test_physical_and_virtual_dc_of_the_same_bytes_and_another_address_space():
    log = load("msdocs-vtop.log")
    row = bytes.fromhex("496e206d" "656d6f72" "79001200" "f4f91200")  # 6d206e49 726f6d65 ... little-endian
    assert log.snapshot.memory.read(0x9DE9980, 16) == row
    assert virt(log, 0, 0x12F980, 16) == row
    assert log.snapshot.memory.read(0x9DE9980, 48) == virt(log, 0, 0x12F980, 48)
    # the doc elides the last row of each dump ('.....'): looks like a dump line, does not parse
    assert [w.line for w in log.warnings] == [14, 19]
    # `dd 0xc00004bc` comes after `.process /p ff779190`: that process's memory, not processor 0's
    assert virt(log, 0, 0xC00004BC, 4) is None
    assert any(".process /p ff779190" in text for _, text in log.notes)
    assert log.snapshot.processors[0].registers == {}   # `.formats 12f980` is a typed number


def test_indented_page_walk_with_unpadded_and_padded_addresses():
    mem = load("kvas-pagewalk-indented.log").snapshot.memory
    assert mem.read(0x25C92F80, 8) == q(0x01208063)
    assert mem.read(0x1208040, 8) == q(0x01209063)
    assert mem.read(0x12093D0, 8) == q(0x01294063)
    assert mem.read(0x1293FA0, 8) == q(0x09000000022F0121)
    assert mem.read(0x22F0280, 16) == bytes.fromhex("f644240801745f0f01f8650fba242518")


def test_nine_digit_physical_and_the_same_qwords_virtually():
    log = load("pte-walk-vtop-dq.log")
    data = q(3) + q(0xFFFFBF0152CB4200)
    assert log.snapshot.memory.read(0x11B963280, 16) == data
    assert virt(log, 1, 0xFFFFBF0152163280, 16) == data
    assert sorted(log.snapshot.processors) == [1]
    assert log.snapshot.processors[1].provenance["vmem:0xffffbf0152163280"].endswith("pte-walk-vtop-dq.log:13")
    assert log.snapshot.processors[1].provenance["mem:0x11b963280"].endswith("pte-walk-vtop-dq.log:10")


def test_lkd_formats_then_physical_dq():
    log = load("lkd-pagewalk-formats.log")
    assert log.snapshot.memory.read(0x29556A48, 16) == q(0x0A00000004632863) + q(0)
    assert log.snapshot.processors[0].registers == {}


def test_x86_pae_dq_with_padded_addresses():
    mem = load("x86-pae-dq-padded.log").snapshot.memory
    assert mem.read(0x200400, 16) == q(0x0674D001) + q(0x03EEA001)
    assert mem.read(0x200460, 8) == q(0xFA0F2480)
    assert mem.read(0x674D010, 8) == q(0x02A36067)


def test_cr3_and_two_single_qwords():
    log = load("cr3-pml4e-by-hand.log")
    assert log.snapshot.processors[0].registers == {"cr3": 0x1AD000}
    assert log.snapshot.memory.read(0x1ADF80, 8) == q(0x03F09063)
    assert log.snapshot.memory.read(0x3F09048, 8) == q(0x03F0A063)


def test_failed_physical_read_gives_a_note_and_no_memory():
    log = load("dq-p-read-failed.log")
    assert not log.snapshot.memory and log.warnings == []
    assert log.notes == [(2, "physical memory read at 0 failed")]


def test_kva_shadow_lstar_and_user_directory_table():
    log = load("kvas-lstar-cr3.log")
    assert log.snapshot.processors[1].msr == {0xC0000082: 0xFFFFF8060B134140}
    assert log.snapshot.memory.read(0x31AA0000, 8) == q(0x0A0000003A487867)
    assert log.snapshot.memory.read(0x31AA0008, 0x78) == bytes(0x78)
    assert log.snapshot.memory.read(0x31620000, 8) == q(0x0A0000003A487867)


# ---------------------------------------------------------------- !cpuinfo / !cpuid

def test_cpuinfo_of_the_docs():
    log = load("msdocs-cpuinfo.log")
    assert log.identity[0] == {"family": 6, "model": 1, "stepping": 9, "vendor": "GenuineIntel", "mhz": 198,
                               "line": 3, "update_signature": 0xD200000000}


def test_cpuinfo_lists_every_processor():
    log = load("msdocs-cpuid.log")   # !cpuid: two processors, one of them AMD
    assert sorted(log.snapshot.processors) == [0, 1]
    assert log.snapshot.processors[1].state == {"vendor": "AuthenticAMD"}
    log = load("nohuto-amd-cpuinfo.log")
    assert sorted(log.snapshot.processors) == list(range(12))
    assert {log.identity[c]["model"] for c in range(12)} == {33}
    assert all(p.state["vendor"] == "AuthenticAMD" for p in log.snapshot.processors.values())
    assert virt(log, 0, 0xFFFFF8054591EA54, 4) == bytes.fromhex("5a620200")
    assert virt(log, 0, 0xFFFFF80545677C48, 10) == bytes.fromhex("060c12181e242a30363c")


def test_cpuinfo_with_the_msr_8b_column_in_a_fenced_page():
    log = load("eskezje-cpuinfo-hpet.md.log")
    assert log.identity[0]["model"] == 183 and log.identity[0]["update_signature"] == 0x12F00000000
    assert virt(log, 0, 0xFFFFF803EAD8E000, 8) == q(0xFFFFF7E080014000)
    assert virt(log, 0, 0xFFFFF7E080014000, 8) == q(0x031ABA858086A701)
    assert log.warnings == []


def test_an_amd_processor_fails_vmxon001_with_the_vendor_as_evidence():
    code, out, err = run("check", str(DATA / "msdocs-cpuid.log"))
    assert code == 1, err
    cpu1 = out[out.index("cpu 1 vmxon:"):]
    assert cpu1.startswith("cpu 1 vmxon: #UD") and "[FAIL] VMXON001" in cpu1 and "AuthenticAMD" in cpu1
    assert "state:vendor from " in cpu1 and "msdocs-cpuid.log:4" in cpu1
    assert "cpu 0 vmxon: unknown" in out          # GenuineIntel alone proves nothing


# ---------------------------------------------------------------- rdmsr

def test_rdmsr_written_and_read_back_with_at():
    assert p_("msr-fs-base-wrmsr.log", 3).msr == {0xC0000100: 0}
    p = parse_file(DATA / "msr-fs-base-wrmsr.log", at_line=5).snapshot.processors[3]
    assert p.msr == {0xC0000100: 0x31337} and p.segments["fs"].base == 0x31337
    assert p.provenance["msr:0xc0000100"].endswith(":5")


def test_rdmsr_with_the_authors_notes_after_the_value():
    log = load("sysenter-msrs-annotated.log")
    assert log.warnings == []
    assert log.snapshot.processors[0].msr == {0x174: 8, 0x175: 0xF88C7000, 0x176: 0x805426E0}


def test_efer_from_rdmsr_and_a_typed_formats():
    p = p_("efer-formats.log")
    assert p.msr == {0xC0000080: 0xD01} and p.registers == {"efer": 0xD01}


def test_local_kd_rdmsr_spelled_with_a_capital():
    assert p_("lkd-rdmsr-capital.log").msr == {0xC0000082: 0xFFFFF807192191C0}


# ---------------------------------------------------------------- r, rM, dg, dq

def test_x86_registers_tables_and_dg_indented_with_tabs():
    p = p_("x86-tabs-r-rm100-dg.log")
    assert p.registers["eip"] == 0x83C83110 and p.registers["rflags"] == 0x246
    assert (p.tables["gdtr"].base, p.tables["gdtr"].limit) == (0x80B99000, 0x3FF)
    assert (p.tables["idtr"].base, p.tables["idtr"].limit) == (0x80B99400, 0x7FF)
    assert p.segments["cs"].attributes == 0xC09B and p.segments["cs"].limit == 0xFFFFFFFF
    assert p.segments["ds"].attributes == 0xC0F3          # selector 0023 -> the 0020 row
    assert p.segments["tr"].selector == 0x28 and p.segments["tr"].attributes == 0x8B
    assert p.segments["tr"].base is None                  # dg shows half of a system descriptor's base
    assert p.state["cpl"] == 0


def test_r_fs_then_dg_fs():
    fs = p_("x86-r-fs-dg-fs.log").segments["fs"]
    assert (fs.selector, fs.attributes, fs.limit, fs.base) == (0x30, 0xC093, 0x1FFF, None)


def test_dq_of_the_gdt_is_virtual_memory():
    log = load("dq-gdtr-dg10.log")
    assert virt(log, 0, 0xFFFFF80187A77FC0, 8) == q(0x00209B0000000000)
    assert len(log.snapshot.processors[0].virtual_memory.read(0xFFFFF80187A77FB0, 112)) == 112


def test_effective_address_annotation_is_not_a_register():
    log = load("hevd-r-annotation-dq.log")
    p = log.snapshot.processors[0]
    assert p.registers["rip"] == 0xFFFFF88003398B9B and p.registers["r12"] == 0x2CFD40
    assert p.registers["rflags"] == 0x286 and p.state["cpl"] == 0
    assert p.segments["ds"].selector == 0x2B             # from `ds=002b`, not from `ds:002b:...=4242...`
    assert set(p.registers) <= {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip", "rflags",
                                "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"}
    assert 0x4242424242424242 not in p.registers.values()
    assert virt(log, 0, 0x2CFD40, 16) == q(0x4242424242424242) + q(0x4343434343434343)
    assert log.warnings == []


def test_cxr_context_with_annotation_is_not_live():
    log = load("cxr-wow64-annotation.log")
    p = log.snapshot.processors[2]
    assert p.registers == {} and p.segments == {}
    assert len(log.contexts) == 1 and log.contexts[0].registers["rip"] == 0x777A0DF4
    assert log.contexts[0].registers["cs"] == 0x33


# ---------------------------------------------------------------- sessions

def test_quoted_reply_is_a_session_that_shows_nothing_checked():
    log = load("quoted-dump-kb.log")
    assert log.prompts == 2 and sorted(log.snapshot.processors) == [0]
    code, out, err = run("check", str(DATA / "quoted-dump-kb.log"))
    assert code == 1 and "shows nothing vmxdbg checks" in err


def test_banner_without_prompt_is_no_session():
    code, out, err = run("check", str(DATA / "windbg-feedback-75-banner.log"))
    assert code == 2 and out == ""
    assert "no debugger session found" in err and "`kd>`" in err and "`lkd>`" in err


def test_hyperdbg_session_is_refused_by_name():
    code, out, err = run("check", str(DATA / "hyperdbg-r.log"))
    assert code == 2 and "HyperDbg" in err and "line 1" in err and "Traceback" not in err


def test_crlf_and_tabs_give_the_same_values(tmp_path):
    """A real excerpt with CRLF line ends and its spaces turned to tabs (as mail clients do)."""
    src = (DATA / "hevd-r-annotation-dq.log").read_text(encoding="utf-8")
    path = tmp_path / "crlf.log"
    path.write_bytes(src.replace("  ", "\t").replace("\n", "\r\n").encode())
    a, b = load("hevd-r-annotation-dq.log").snapshot, parse_file(path).snapshot
    assert a.processors[0].registers == b.processors[0].registers
    assert a.processors[0].virtual_memory == b.processors[0].virtual_memory


def test_nested_quotes_give_the_same_values(tmp_path):
    src = (DATA / "msr-fs-base-wrmsr.log").read_text(encoding="utf-8")
    path = tmp_path / "quoted.log"
    path.write_text("".join(f"> >{line}\n" if i % 2 else f">> {line}\n"
                            for i, line in enumerate(src.splitlines())), encoding="utf-8")
    assert kind_of(path) == "kd log"
    assert parse_file(path, at_line=5).snapshot.processors[3].msr == {0xC0000100: 0x31337}
