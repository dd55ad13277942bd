"""Is the process that owns a `running` run still alive?

A run records its owner as `host:pid:start`, where `start` is the process start
time from /proc (so a recycled pid is not mistaken for the owner), and refreshes
a heartbeat while it works. On the owner's host the pid decides; elsewhere (a
database on a shared disk) a heartbeat older than `STALE_S` does.
"""

from __future__ import annotations

import os
import socket
import time

STALE_S = 300.0        # another host's run whose heartbeat is older than this is taken for dead
HEARTBEAT_S = 15.0     # how often a running eval refreshes its heartbeat


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()) or ''}"


def owner_alive(owner: str | None, heartbeat_at: float | None) -> bool:
    if not owner:
        return heartbeat_at is not None and time.time() - heartbeat_at < STALE_S
    host, pid_text, start = owner.rsplit(":", 2)
    if host != socket.gethostname() or not pid_text.isdigit():
        return heartbeat_at is not None and time.time() - heartbeat_at < STALE_S
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, owned by another user
        pass
    now = _start_time(pid)
    return not (start and now and now != start)


def _start_time(pid: int) -> str | None:
    """Clock ticks since boot when `pid` started (field 22 of /proc/PID/stat); None off Linux."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None
