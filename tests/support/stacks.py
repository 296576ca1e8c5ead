"""A supervised local stack for tests: started the way `sentiment up` starts it (the `Stack` class on
free ports), supervised in a thread as `sentiment up` does in its main loop, stopped afterwards."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

from sentiment.stack.up import Stack, StackConfig


@contextlib.contextmanager
def supervised_stack(repository: Path, logs: Path, **settings) -> Iterator[tuple[Stack, list[str]]]:
    """Start the stack, supervise it in a thread (as `sentiment up` does in its main loop), stop it."""
    messages: list[str] = []
    stack = Stack(StackConfig.on_free_ports(repository, logs, **settings), say=messages.append)
    outcome: dict[str, int] = {}
    supervisor = threading.Thread(target=lambda: outcome.setdefault("code", stack.supervise(interval=0.1)))
    try:
        stack.start()
        supervisor.start()
        yield stack, messages
        assert supervisor.is_alive(), f"the stack ended on its own: {messages}"
    finally:
        stack.request_stop()
        if supervisor.ident is not None:
            supervisor.join(timeout=10)
        stack.stop()
    assert outcome.get("code") == 0, messages
