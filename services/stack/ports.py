"""Free-port selection for processes that must know their port before they start."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def port_holder(port: int) -> str:
    """Who listens on a TCP port, as "pid N (command)" read from /proc; "" when it cannot be told (not Linux,
    or the holder belongs to another user whose file descriptors we may not read)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return ""
    proc = Path("/proc")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            return f"pid {entry.name} ({command[:120]})"
    return ""


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on the port (IPv4 and IPv6), from /proc/net/tcp*."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                found.add(inode)
    return found


_LISTEN = "0A"


def ensure_free(host: str, port: int, what: str) -> None:
    """Refuse to go on when the port is taken: a stale process answering there would pass for ours."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            holder = port_holder(port)
            by = f" by {holder}" if holder else ""
            raise PortTaken(
                f"{what} port {port} on {host} is taken{by}; stop that process or choose another port"
            ) from None


class PortTaken(RuntimeError):
    """A port the stack must listen on is held by another process."""
