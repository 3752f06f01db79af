"""Property-based fuzzing of the REST API from its own OpenAPI schema (schemathesis).

Every operation in ``/openapi.json`` gets generated requests: query values inside and outside
their ranges, bodies of every declared media type (schemathesis makes real images for the
image types and random bytes for the rest), with a key, without one. Each reply must be no 5xx
and match the schema: a declared status code, the declared content type, a body that validates
(every error an ``ErrorBody``). ``positive_data_acceptance`` is left out: the schema can say
"JPEG bytes" but not "a JPEG that decodes", so schema-valid random bytes are rightly a 4xx.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance
from server_harness import LiveServer, server_settings

pytestmark = pytest.mark.slow
EXAMPLES = 120  # per scenario, spread over all operations (~10 s each on 2 busy cores)
KEY = "fuzz-key-0123456789"


@pytest.fixture(scope="module")
def fuzz_server(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    # A small body limit keeps generated bodies cheap and lets the fuzzer reach the 413 path.
    server = LiveServer(server_settings(tiny_checkpoint, max_body_bytes=256 * 1024, api_keys=KEY)).start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("mode", "with_key"),
    [(GenerationMode.POSITIVE, True), (GenerationMode.NEGATIVE, True), (GenerationMode.POSITIVE, False)],
    ids=["valid", "invalid", "no-key"],
)
def test_api_conforms_to_its_schema(fuzz_server: LiveServer, mode: GenerationMode, with_key: bool) -> None:
    # The schema comes from the running server: exactly what clients see. The test is built by
    # hand from a strategy because schemathesis' lazy pytest fixture loader fails on pytest 9.
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    headers = {"X-API-Key": KEY} if with_key else {}
    statuses: set[tuple[str, int]] = set()

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: Case) -> None:
        resp = case.call_and_validate(
            base_url=fuzz_server.url,
            headers=headers,
            timeout=30,
            # With our real key in the headers, schemathesis' garbled-auth probe of the other scheme
            # rightly gets 200 (either scheme suffices); without a key, ignored_auth still runs.
            excluded_checks=[positive_data_acceptance, *([ignored_auth] if with_key else [])],
        )
        statuses.add((case.path, resp.status_code))

    check()
    assert httpx.get(fuzz_server.url + "/healthz").status_code == 200
    predict = {status for path, status in statuses if path == "/v1/predict"}
    if with_key:
        assert predict & {400, 415, 422} and (mode != GenerationMode.POSITIVE or 200 in predict)
    else:
        assert predict == {401}
