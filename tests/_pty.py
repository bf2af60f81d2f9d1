"""Run a command with its stderr on a pseudo-terminal (progress bars draw only on a terminal)."""
from __future__ import annotations

import os
import subprocess


def run_on_terminal(args, *, env, cwd=None, timeout=120):
    """``(returncode, stdout bytes, what reached the terminal on stderr)``."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=cwd)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        out, _ = proc.communicate(timeout=timeout)
    finally:
        os.close(master)
    return proc.returncode, out, b"".join(chunks)
