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


def test_the_settings_reference_is_the_table_the_declarations_make():
    """The table users configure from (docs/configuration.md): every flag with its environment variable
    and the default the code really has (it once said 1024 tokens per call after the code had moved to
    512). The README's short table of the flags most often changed agrees with it, row by row."""
    import re
    from pathlib import Path

    from transformer.settings import TABLE_END, TABLE_START, settings_table

    root = Path(__file__).parents[2]
    reference = (root / "docs" / "configuration.md").read_text()
    documented = reference[reference.index(TABLE_START):reference.index(TABLE_END) + len(TABLE_END)]
    assert documented == settings_table(), (
        "docs/configuration.md's settings table is stale: python -m transformer.settings"
    )

    def rows(text: str) -> dict[str, tuple[str, str]]:
        return {flag: (env, default) for flag, env, default in
                re.findall(r"^\| `(--[a-z_]+)` \| (.*?) \| (.*?) \|", text, re.MULTILINE)}

    readme_rows, reference_rows = rows((root / "README.md").read_text()), rows(documented)
    assert readme_rows, "the README's short settings table is gone"
    differing = {flag: row for flag, row in readme_rows.items() if reference_rows.get(flag) != row}
    assert not differing, f"the README's settings rows differ from docs/configuration.md: {differing}"


def test_flag_and_environment_names_follow_from_the_field():
    from transformer.settings import sources

    by_field = {source.field: source for source in sources()}
    assert (by_field["predictor_timeout_s"].flag, by_field["predictor_timeout_s"].env) == (
        "--predictor_timeout", "PREDICTOR_TIMEOUT_SECONDS")
    assert (by_field["redis_timeout_ms"].flag, by_field["redis_timeout_ms"].env) == (
        "--redis_timeout_ms", "REDIS_TIMEOUT_MS")
    assert by_field["model_name"].kserve and by_field["traces_exporter"].flag is None
    assert len({source.flag for source in sources() if source.flag}) == len([s for s in sources() if s.flag])
    assert len({env for source in sources() for env in source.envs}) == sum(len(s.envs) for s in sources())


@pytest.mark.parametrize("earlier, current, field", [
    ("CACHE_BREAKER_FAILURES", "BREAKER_FAILURES", "breaker_failures"),
    ("CACHE_BREAKER_RESET_SECONDS", "BREAKER_RESET_SECONDS", "breaker_reset_s"),
    ("MAX_TEXTS_PER_REQUEST", "MAX_TEXTS", "max_texts"),
    ("MAX_INFLIGHT_REQUESTS", "MAX_INFLIGHT", "max_inflight"),
])
def test_the_earlier_environment_names_are_still_read(earlier, current, field):
    assert getattr(parse(env={earlier: "7"}), field) == 7
    assert getattr(parse(env={current: "9"}), field) == 9
    assert getattr(parse(env={earlier: "7", current: "9"}), field) == 9  # the current name wins


def test_every_flag_is_understood_with_its_default():
    from transformer.settings import sources

    defaults = Settings()
    for source in sources():
        if source.flag is None or source.kserve:
            continue
        default = getattr(defaults, source.field)
        text = "unset" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        if default is None:
            continue
        assert getattr(parse(source.flag, text), source.field) == default, source.flag


def test_the_help_names_every_flag_and_its_variable():
    """`python -m transformer --help` (the image build runs it): argparse formats each help text with
    %, so a doc line with a literal % once broke it."""
    from transformer.settings import build_parser, sources

    text = " ".join(build_parser().format_help().split())
    for source in sources():
        if source.flag and not source.kserve:
            assert source.flag in text and source.env in text, source.flag
