"""`sentiment up` beside another stack: a taken port is named with the process that holds it, nothing
starts, and the clean-up does not warn about ports this stack never held."""

import os
import socket

import pytest

from sentiment.stack.processes import ProcessFailed, free_port
from sentiment.stack.triton import TritonPorts
from sentiment.stack.up import Stack, StackConfig


def test_a_taken_port_names_its_process_and_stop_has_nothing_to_warn_about(tmp_path, capsys):
    holder = socket.socket()
    holder.bind(("127.0.0.1", free_port()))
    holder.listen()
    taken = holder.getsockname()[1]
    messages: list[str] = []
    config = StackConfig(model_repository=tmp_path, logs=tmp_path / "logs", port=taken, grpc_port=free_port(),
                         triton=TritonPorts(free_port(), free_port(), free_port()), use_redis=False)
    stack = Stack(config, say=messages.append)
    try:
        with pytest.raises(ProcessFailed) as refused:
            stack.start()
        message = str(refused.value)
        assert f"\n  transformer HTTP {taken}: pid {os.getpid()} (python" in message
        assert "nothing was started" in message and "--port" in message
        assert stack.processes == []
        stack.stop()
        assert "still in use" not in capsys.readouterr().err
        assert messages == []
    finally:
        holder.close()
