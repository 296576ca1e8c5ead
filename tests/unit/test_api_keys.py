"""API keys as pure logic: reading the file, the three outcomes, rotation by change, what a failed
rotation keeps, the error rows, and that no key reaches a log line."""

import logging

import pytest

from transformer import metrics
from transformer.api_keys import ApiKeyFileError, ApiKeys, read_key_digests, require_key
from transformer.errors import ERROR_TABLE, Unauthorized


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def keys_file(tmp_path, *lines: str):
    path = tmp_path / "keys"
    path.write_text("\n".join(lines) + "\n")
    return path


def outcome_count(outcome: str) -> float:
    return metrics.API_KEY_CHECKS.labels(outcome=outcome)._value.get()


def test_the_file_holds_keys_one_per_line_comments_and_blanks_skipped(tmp_path):
    path = keys_file(tmp_path, "# rotated 2026-12-04", "", "  key-one  ", "key-two", "key-two")
    assert len(read_key_digests(path)) == 2
    keys = ApiKeys(path)
    assert keys.count == 2
    assert keys.check("Bearer key-one") == "accepted"
    assert keys.check("bearer key-two") == "accepted"  # the scheme is case-insensitive (RFC 7235)


@pytest.mark.parametrize("header, outcome", [
    (None, "missing"), ("", "missing"), ("Bearer ", "missing"), ("Basic a2V5LW9uZQ==", "missing"),
    ("Bearer key-on", "wrong"), ("Bearer key-one-and-more", "wrong"), ("Bearer # rotated 2026-12-04", "wrong"),
])
def test_a_missing_or_wrong_key_is_told_apart_and_counted(tmp_path, header, outcome):
    keys = ApiKeys(keys_file(tmp_path, "# rotated 2026-12-04", "key-one"))
    before = outcome_count(outcome)
    assert keys.check(header) == outcome
    assert outcome_count(outcome) == before + 1


def test_only_digests_are_kept_in_memory(tmp_path):
    keys = ApiKeys(keys_file(tmp_path, "very-secret-key"))
    held = repr(vars(keys)) if hasattr(keys, "__dict__") else ""
    assert "very-secret-key" not in held
    assert all(len(digest) == 32 for digest in keys._digests)


def test_a_bad_file_at_start_is_refused_with_what_is_wrong(tmp_path):
    with pytest.raises(ApiKeyFileError, match="cannot read"):
        ApiKeys(tmp_path / "absent")
    with pytest.raises(ApiKeyFileError, match="holds no key"):
        ApiKeys(keys_file(tmp_path, "# only a comment", ""))


def test_a_changed_file_is_read_again_within_a_second(tmp_path):
    clock = Clock()
    path = keys_file(tmp_path, "old-key")
    keys = ApiKeys(path, clock=clock)
    assert keys.check("Bearer old-key") == "accepted"
    path.write_text("new-key\n")  # another size: a change even within the same mtime tick
    assert keys.check("Bearer old-key") == "accepted"  # not looked at yet
    clock.now += 1.01
    assert keys.check("Bearer new-key") == "accepted"
    assert keys.check("Bearer old-key") == "wrong"


def test_a_failed_rotation_keeps_the_loaded_keys(tmp_path, caplog):
    path = keys_file(tmp_path, "key-one")
    keys = ApiKeys(path)
    path.write_text("\n")
    with caplog.at_level(logging.WARNING, logger="transformer.api_keys"):
        assert keys.reload() is False
    assert "holds no key; keeping the 1 keys loaded" in caplog.text
    path.unlink()
    assert keys.reload() is False
    assert keys.check("Bearer key-one") == "accepted"
    path.write_text("key-two\n")
    assert keys.reload() is True
    assert keys.check("Bearer key-one") == "wrong"


def test_no_key_reaches_the_log(tmp_path, caplog):
    path = keys_file(tmp_path, "first-secret")
    with caplog.at_level(logging.DEBUG):
        keys = ApiKeys(path)
        keys.check("Bearer wrong-secret")
        path.write_text("second-secret\n")
        keys.reload()
        with pytest.raises(Unauthorized) as refused:
            require_key(keys, "Bearer wrong-secret", "'Authorization: Bearer <key>'")
    for secret in ("first-secret", "second-secret", "wrong-secret"):
        assert secret not in caplog.text and secret not in refused.value.message


def test_unauthorized_is_a_row_of_the_error_table():
    kind = ERROR_TABLE["unauthorized"]
    assert (kind.http_status, kind.grpc_status.name) == (401, "UNAUTHENTICATED")
    require_key(None, None, "anything")  # no keys configured: every call passes
