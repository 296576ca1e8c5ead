"""The served OpenAPI document tells the truth: schemathesis drives every documented operation of a
live stack (real Triton, redis-server, transformer) with generated inputs, and every answer must be
documented (status code, content type, headers, body schema) and never a 5xx. Bounded to fit two
shared CI cores: a fixed number of examples per operation and a time budget for the whole run."""

from __future__ import annotations

import re
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)

from transformer.transport.rest import _ROUTES, match_route

pytestmark = pytest.mark.usefixtures("require_redis_server")

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EXAMPLES_PER_OPERATION = 30
TIME_BUDGET_S = 150.0


@pytest.fixture(scope="module")
def api(tiny_service):
    return schemathesis.openapi.from_url(tiny_service.url + "/openapi.json")


def test_every_served_route_is_documented_and_nothing_else(api):
    documented = {op.ok().path for op in api.get_all_operations()}
    concrete = {re.sub(r"\{model_version\}", "1", re.sub(r"\{model_name\}", "sentiment", path)) for path in documented}
    kinds = {path: match_route(path) for path in concrete}
    assert all(route.kind != "refuse" and route.label != "other" or path in ("/", "/v1/models", "/v2", "/v2/models")
               for path, route in kinds.items()), kinds
    served_labels = {label for _, label, kind in _ROUTES if kind != "refuse"}
    assert served_labels <= {route.label for route in kinds.values()}
    assert not any(path.startswith("/v2/repository") or path.endswith(":explain") for path in documented)


def _strategy(operation, served: dict[str, str]):
    """Valid requests with any path, valid and invalid ones for the served model's own paths (otherwise
    almost every generated model name is a 404 and the routes behind it are never reached)."""
    names = {parameter.name for parameter in operation.path_parameters}
    own = {name: value for name, value in served.items() if name in names}
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    if own:
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=own))
    if any(parameter.name == "model_version" for parameter in operation.query):
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=own,
                                                query={"model_version": served["model_version"]}))
    if own or operation.method.upper() == "POST":
        try:
            strategies.append(operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=own or None))
        except Exception:  # noqa: BLE001 - an operation with nothing to make invalid
            pass
    return st.one_of(strategies)


def test_generated_requests_get_only_documented_answers(api, tiny_service):
    import httpx

    version = httpx.get(tiny_service.url + "/v2/models/sentiment").json()["versions"][0]
    served = {"model_name": "sentiment", "model_version": version}
    deadline = time.monotonic() + TIME_BUDGET_S
    operations = [result.ok() for result in api.get_all_operations()]
    exercised: dict[str, set[int]] = {}
    for operation in operations:
        if time.monotonic() > deadline:
            break
        name = f"{operation.method.upper()} {operation.path}"

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=_strategy(operation, served))
        def call(case):
            response = case.call(base_url=tiny_service.url, timeout=30)
            exercised.setdefault(name, set()).add(response.status_code)  # noqa: B023 - runs within this iteration
            case.validate_response(response, checks=CHECKS)

        call()
    print("\n[openapi contract] " + "; ".join(f"{name}: {sorted(codes)}" for name, codes in sorted(exercised.items())))
    assert len(exercised) == len(operations), f"time budget ran out after {len(exercised)} of {len(operations)}"
    assert any(200 in codes for name, codes in exercised.items() if "infer" in name or "predict" in name)


def test_an_undocumented_method_gets_405_with_allow_and_our_error_body(api, tiny_service):
    import httpx

    documented: dict[str, set[str]] = {}
    for result in api.get_all_operations():
        operation = result.ok()
        documented.setdefault(operation.path, set()).add(operation.method.upper())
    with httpx.Client(base_url=tiny_service.url, timeout=30) as client:
        for path, methods in documented.items():
            concrete = path.replace("{model_name}", "sentiment").replace("{model_version}", "1")
            for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - methods:
                response = client.request(method, concrete)
                assert response.status_code == 405, (method, path, response.status_code)
                assert set(response.headers["allow"].replace(" ", "").split(",")) == methods, (method, path)
                assert response.json()["code"] == "method_not_allowed"


def test_the_version_as_a_query_parameter_is_checked_like_the_path_segment(tiny_service):
    """KServe's handlers answer `?model_version=` with 501; the transport reads it like `/versions/{v}`."""
    import httpx

    version = httpx.get(tiny_service.url + "/v2/models/sentiment").json()["versions"][0]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}
    with httpx.Client(base_url=tiny_service.url, timeout=30) as client:
        for path in ("/v2/models/sentiment", "/v2/models/sentiment/ready"):
            assert client.get(path, params={"model_version": version}).status_code == 200
            other = client.get(path, params={"model_version": "999"})
            assert other.status_code == 404 and other.json()["code"] == "model_not_found"
        answer = client.post("/v2/models/sentiment/infer", params={"model_version": version}, json=body)
        assert answer.status_code == 200
        assert client.post("/v2/models/sentiment/infer", params={"model_version": "999"}, json=body).status_code == 404
        twice = client.get(f"/v2/models/sentiment/versions/{version}", params={"model_version": "999"})
        assert twice.status_code == 422 and "two versions" in twice.json()["error"]
