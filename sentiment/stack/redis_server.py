"""A private redis-server on loopback for the local stack and the tests (no persistence)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from sentiment.stack.processes import ManagedProcess


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def redis_process(port: int, data_dir: Path, log_file: Path, password: str | None = None) -> ManagedProcess:
    """A private redis-server on 127.0.0.1:`port`, not yet started; ready once it answers PING."""
    binary = redis_server_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (apt-get install -y redis-server)")
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(data_dir), "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"]
    if password:
        command += ["--requirepass", password]
    return ManagedProcess("redis", command, log_file, ready=lambda: redis_ping(port, password=password),
                          ready_timeout_s=20)


def redis_url(port: int, host: str = "127.0.0.1") -> str:
    return f"redis://{host}:{port}/0"


def redis_ping(port: int, host: str = "127.0.0.1", password: str | None = None) -> bool:
    """Speak RESP directly: readiness must not depend on the client library under test."""
    with socket.create_connection((host, port), timeout=1) as sock:
        if password:
            sock.sendall(f"*2\r\n$4\r\nAUTH\r\n${len(password)}\r\n{password}\r\n".encode())
            sock.recv(64)
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return sock.recv(64).startswith(b"+PONG")
