"""`sentiment up`'s flags default to StackConfig's fields: the ports are written once."""

from pathlib import Path

from sentiment.cli import build_parser
from sentiment.paths import LOGS_DIR
from sentiment.stack.cli import stack_config
from sentiment.stack.up import StackConfig


def test_sentiment_up_without_flags_is_the_default_stack_config():
    config = stack_config(build_parser().parse_args(["up"]), Path("repository"))
    assert config == StackConfig(model_repository=Path("repository").resolve(), logs=LOGS_DIR.resolve())


def test_the_optional_parts_take_their_default_ports_when_switched_on():
    config = stack_config(build_parser().parse_args(["up", "--with-prometheus", "--with-tracing", "--port", "9000"]),
                          Path("repository"))
    assert (config.prometheus_port, config.traces_port, config.port) == (
        StackConfig.PROMETHEUS_PORT, StackConfig.TRACES_PORT, 9000)
