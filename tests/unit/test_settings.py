import pytest

from transformer.settings import Settings, build_parser, settings_from


def parse(*argv: str, env: dict | None = None) -> Settings:
    return settings_from(build_parser().parse_args(list(argv)), env or {})


def test_defaults_work_for_the_local_stack():
    settings = parse()
    assert settings.model_name == "sentiment"
    assert settings.predictor_protocol == "grpc-v2"
    assert settings.redis_url is None
    assert settings.cache_ttl_s == 86400
    assert (settings.max_texts, settings.max_text_chars, settings.max_request_tokens) == (256, 50_000, 65_536)


def test_flag_beats_environment_beats_default():
    env = {"REDIS_URL": "redis://env:6379/0", "CACHE_TTL_SECONDS": "60", "MAX_TEXTS_PER_REQUEST": "8",
           "PREDICTOR_HOST": "env-host:9000"}
    settings = parse("--cache_ttl", "120", "--predictor_host", "flag-host:9000", env=env)
    assert settings.cache_ttl_s == 120
    assert settings.predictor_host == "flag-host:9000"
    assert settings.redis_url == "redis://env:6379/0"
    assert settings.max_texts == 8


def test_kserve_controller_flags_are_understood():
    settings = parse("--model_name", "sentiment", "--predictor_host", "sentiment-predictor.ns",
                     "--predictor_protocol", "v2", "--http_port", "8080", "--enable_predictor_health_check")
    assert settings.predictor_host == "sentiment-predictor.ns"
    assert settings.predictor_protocol == "v2"


@pytest.mark.parametrize("argv, env", [
    (["--redis_url", "http://nope"], {}),
    ([], {"CACHE_TTL_SECONDS": "-1"}),
    ([], {"MAX_TEXTS_PER_REQUEST": "zero"}),
    (["--predictor_protocol", "v1"], {}),
])
def test_bad_settings_are_refused(argv, env):
    with pytest.raises(ValueError):
        parse(*argv, env=env)
