"""Run vmxdbg with its stderr on a pseudo-terminal, as a person at a shell would see it."""
from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from typing import Dict, List, Optional, Tuple


def run_on_a_terminal(argv: List[str], env: Optional[Dict[str, str]] = None,
                      timeout: float = 120) -> Tuple[int, bytes, str]:
    """(exit status, stdout, what the terminal got with escape sequences removed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "vmxdbg", *argv], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    seen = bytearray()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            seen.extend(data)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=timeout)
    reader.join(5)
    os.close(master)
    return proc.returncode, out, re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b"", bytes(seen)).decode("latin-1")
