"""`!vmxcheck` as a pykd script: `!py -g C:\\...\\vmxdbg\\windbg\\vmxcheck.py ARGS`.

For a pykd without the bootstrapper's `-m` (pykd.pyd loaded directly); with the
bootstrapper, `!py -3.9 -g -m vmxdbg.bang ARGS` does the same. See docs/windbg.md.
"""
import sys

from vmxdbg.bang import main

sys.exit(main(sys.argv[1:]))
