"""What every test of this folder needs from the process it runs in."""
from __future__ import annotations

import signal


def pytest_configure(config: object) -> None:
    """Ctrl-C behaves as it does at a terminal. A process started in the background by a
    non-interactive shell (`cmd &`, some CI runners, nohup) begins with SIGINT ignored, and
    its children inherit that (POSIX exec keeps an ignored signal ignored), so the tests that
    send SIGINT to a session would see nothing happen. Python's own handler is installed here;
    children then start with the default action, as they would from a terminal."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
