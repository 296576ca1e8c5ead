"""Hostile input against the live transformer: always a 4xx with a JSON error or a 200 with a valid
shape, never a 5xx; the server stays up and its memory bounded. Hypothesis generates the bodies
(schemathesis drives the OpenAPI document: test_openapi_contract.py)."""

import json

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TransformerServer, started

ALLOWED = {200, 400, 404, 405, 413, 415, 422}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
NASTY_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200) | \
    st.sampled_from([
    "", " ", "\x00\x01\x02", "\u200b\u200c\u200d\ufeff", "\u202e\u05e9\u05dc\u05d5\u05dd", "👍🏽🔥" * 50,
    "مرحبا بالعالم", "a\nb\tc\r\n", "\\" * 100, '"quoted"', "<script>alert(1)</script>", "' OR 1=1 --",
])


@pytest.fixture(scope="module")
def service(tiny_triton, logs_dir):
    yield from started(TransformerServer(tiny_triton, logs_dir, extra_args=["--max_text_chars", "10000"]))


@pytest.fixture(scope="module")
def client(service):
    with httpx.Client(base_url=service.url, timeout=30) as client:
        yield client


def assert_well_formed(response, texts=None):
    assert response.status_code in ALLOWED, (response.status_code, response.text[:300])
    body = response.json()
    assert "Traceback" not in response.text and 'File "' not in response.text
    if response.status_code == 200 and texts is not None:
        assert len(body["predictions"]) == len(texts)
        for ranked in body["predictions"]:
            assert abs(sum(item["score"] for item in ranked) - 1) < 1e-4
    elif response.status_code != 200:
        assert isinstance(body.get("error"), str) and body["error"]


FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(texts=st.lists(NASTY_TEXT, min_size=1, max_size=20))
def test_any_list_of_strings_is_classified(client, texts):
    response = client.post("/project/bulk-predict", json={"text": texts})
    assert response.status_code == 200, response.text[:300]
    assert_well_formed(response, texts)


@FAST
@given(body=JSON_VALUES)
def test_any_json_body_gets_200_or_a_clear_4xx(client, body):
    assert_well_formed(client.post("/project/bulk-predict", json=body))
    assert_well_formed(client.post("/project/bulk-predict", json={"text": body}))
    assert_well_formed(client.post("/v1/models/sentiment:predict", json={"instances": body}))
    assert_well_formed(client.post("/v2/models/sentiment/infer", json={"inputs": body}))


@FAST
@given(raw=st.binary(max_size=300), content_type=st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "",
     "application/xml", "application/json; charset=latin-1", "application/octet-stream"]))
def test_any_bytes_with_any_content_type(client, raw, content_type):
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/project/bulk-predict", "/v1/models/sentiment:predict", "/v2/models/sentiment/infer"):
        assert_well_formed(client.post(path, content=raw, headers=headers))


@pytest.mark.parametrize("name, body, status", [
    ("1 MB text", {"text": ["x" * 1_000_000]}, 413),
    ("10,000 texts", {"text": ["hi"] * 10_000}, 413),
    ("deeply nested", json.loads("[" * 500 + "]" * 500), 422),
    ("null text", {"text": None}, 422),
    ("number", 42, 422),
])
def test_named_hostile_bodies(client, name, body, status):
    response = client.post("/project/bulk-predict", json=body)
    assert response.status_code == status, name
    assert_well_formed(response)


def test_raw_hostile_bodies(client):
    cases = [
        (b"[" * 200_000 + b"]" * 200_000, 422),                 # nesting far past any parser's limit
        (b'{"text": ["\xff\xfe\xfd"]}', 422),                    # invalid UTF-8
        (b'{"text": ["a"]' + b" " * 10, 422),                    # truncated
        (b"x" * (4 * 1024 * 1024 + 1), 413),                     # over the body limit
        (b'{"text": ["\\ud800"]}', 422),                          # lone surrogate escape
    ]
    for raw, status in cases:
        response = client.post("/project/bulk-predict", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == status, (raw[:40], response.text[:200])
        assert_well_formed(response)
    for path in ("/v1/models/sentiment:predict", "/v2/models/sentiment/infer"):
        for raw, _ in cases:
            assert_well_formed(client.post(path, content=raw, headers={"content-type": "application/json"}))


def test_unsupported_and_dangerous_routes(client):
    assert_well_formed(client.post("/v1/models/sentiment:explain", json={"instances": ["x"]}))
    assert client.post("/v1/models/sentiment:explain", json={"instances": ["x"]}).status_code == 404
    # KServe's repository extension could unload the model from the public port: it is not exposed.
    assert client.post("/v2/repository/models/sentiment/unload").status_code == 404
    assert client.get("/project/health").status_code == 200


def test_memory_stays_bounded_under_hostile_bodies(service, client):
    process = psutil.Process(service.process.pid)
    before = process.memory_info().rss
    for _ in range(20):
        client.post(
            "/project/bulk-predict", content=b"x" * (4 * 1024 * 1024), headers={"content-type": "application/json"}
        )
        client.post("/project/bulk-predict", json={"text": ["y" * 9_999] * 256})  # the largest accepted request
    after = process.memory_info().rss
    print(f"\n[hostile memory] RSS {before / 1e6:.0f} -> {after / 1e6:.0f} MB after 40 maximal requests")
    assert after - before < 150e6
    assert client.get("/project/health").status_code == 200
