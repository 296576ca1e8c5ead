"""What a running `sentiment up` tells other commands (the rollout): where its parts listen, the
transformer's PID and its control file. Written once the stack is up, removed when it stops."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sentiment.stack.triton import TritonPorts


class NoRunningStack(RuntimeError):
    """No `sentiment up` is running with these logs; the message says how to start one."""


@dataclass(frozen=True)
class StackState:
    repository: Path
    triton: TritonPorts
    transformer_pid: int
    transformer_url: str
    control_file: Path

    FILE = "stack.json"
    CONTROL_FILE = "control.json"

    def write(self, logs: Path) -> Path:
        path = Path(logs) / self.FILE
        path.write_text(json.dumps({
            "repository": str(self.repository), "transformer_pid": self.transformer_pid,
            "transformer_url": self.transformer_url, "control_file": str(self.control_file),
            "triton": {"http": self.triton.http, "grpc": self.triton.grpc, "metrics": self.triton.metrics},
        }, indent=2) + "\n")
        return path

    @classmethod
    def read(cls, logs: Path) -> "StackState":
        path = Path(logs) / cls.FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise NoRunningStack(f"no running stack writes to {logs}: start one with `sentiment up` (or `make run`), "
                                 "or pass the --logs folder it was started with") from None
        triton = data["triton"]
        return cls(Path(data["repository"]), TritonPorts(triton["http"], triton["grpc"], triton["metrics"]),
                   int(data["transformer_pid"]), data["transformer_url"], Path(data["control_file"]))

    @classmethod
    def remove(cls, logs: Path) -> None:
        (Path(logs) / cls.FILE).unlink(missing_ok=True)
