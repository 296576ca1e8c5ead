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


def test_the_settings_reference_names_every_setting_with_its_real_default():
    """The table users configure from (docs/configuration.md; the README's short table links it): every
    flag with its environment variable and the default the code really has (it once said 1024 tokens per
    call after the code had moved to 512)."""
    import re
    from pathlib import Path

    from transformer.settings import _KSERVE_SOURCES, _SOURCES

    def table(name: str) -> dict[str, tuple[str, str]]:
        text = (Path(__file__).parents[2] / name).read_text()
        return {flag: (env, default) for flag, env, default in
                re.findall(r"^\| `(--[a-z_]+)` \| `?([A-Z_]*)`? \| `?([^`|]*?)`? \|", text, re.MULTILINE)}

    rows, readme_rows = table("docs/configuration.md"), table("README.md")
    assert readme_rows, "the README's short settings table is gone"
    assert all(rows.get(flag) == row for flag, row in readme_rows.items()), \
        f"the README's settings rows differ from docs/configuration.md: {readme_rows}"
    defaults = Settings()
    sources = [(field, flag, env) for field, flag, env, _type in _SOURCES]
    sources += [(field, f"--{flag}", env) for field, flag, env in _KSERVE_SOURCES]
    missing = [flag for _field, flag, _env in sources if flag not in rows]
    assert not missing, f"flags missing from the settings table of docs/configuration.md: {missing}"
    for field, flag, env in sources:
        documented_env, documented = rows[flag]
        assert documented_env == env, flag
        actual = getattr(defaults, field)
        if actual is None:
            assert documented == "unset", flag
        elif isinstance(actual, bool):
            assert documented == str(actual).lower(), flag
        elif isinstance(actual, (int, float)):
            assert float(documented) == actual, f"{flag}: docs/configuration.md says {documented}, the code {actual}"
        else:
            assert documented == actual, flag
