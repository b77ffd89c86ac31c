"""API scanning (issue 7, item 5): schemathesis against the admin API's own OpenAPI document,
served by a real ``keyseed server`` process (tests/device/devprocs.py).

Every operation of the document gets generated requests, valid ones (positive) and invalid
ones (negative: wrong types, missing fields, out-of-range values), a bounded number of each
so that the scan stays well under a minute:

* with the admin token: no 5xx, and each response conforms to the document (status code
  declared, content type, body schema, headers);
* without a token and with a wrong one: every request, valid or not, is 401
  ``unauthorized`` with ``WWW-Authenticate: Bearer``, and the server's devices do not change.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from devprocs import ServerProc
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

#: Generated requests per operation and generation mode; each scan runs every operation of the
#: document in both modes, once with the token, once without and once with a wrong one.
EXAMPLES = 16
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
SCAN = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = ServerProc(tmp_path_factory.mktemp("scan"))
    srv.start()
    yield srv
    srv.stop()


def operations(srv: ServerProc) -> tuple[str, list[Any]]:
    base = f"http://127.0.0.1:{srv.admin_port}"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    ops = [result.ok() for result in schema.get_all_operations()]
    return base, ops


def scan(srv: ServerProc, headers: dict[str, str], check: Any) -> dict[str, int]:
    """Run generated requests of every operation in both modes through ``check``; the
    number of requests per operation."""
    base, ops = operations(srv)
    counts: dict[str, int] = {}
    with requests.Session() as session:
        for op in ops:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                counts[op.label] = counts.get(op.label, 0) + scan_one(
                    op, mode, base, session, headers, check
                )
    return counts


def scan_one(
    op: Any, mode: GenerationMode, base: str, session: Any, headers: Any, check: Any
) -> int:
    calls = [0]

    @SCAN
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        check(case, case.call(base_url=base, session=session, headers=headers))
        calls[0] += 1

    run()
    return calls[0]


def device_ids(srv: ServerProc) -> list[str]:
    with srv.admin() as c:
        return [d["device_id"] for d in c.get("/v1/admin/devices").json()]


def test_the_document_lists_every_admin_operation(admin_server: ServerProc) -> None:
    _, ops = operations(admin_server)
    labels = {op.label for op in ops}
    assert {
        "POST /v1/admin/devices",
        "GET /v1/admin/devices",
        "GET /v1/admin/devices/{device_id}",
        "POST /v1/admin/devices/{device_id}/rekey",
        "POST /v1/admin/devices/{device_id}/confirm",
        "POST /v1/admin/devices/{device_id}/approve",
        "POST /v1/admin/devices/{device_id}/revoke",
        "GET /v1/admin/audit",
        "GET /v1/admin/keys",
    } <= labels
    # The bearer scheme covers every operation.
    base, _ = operations(admin_server)
    doc = requests.get(f"{base}/openapi.json", timeout=10).json()
    for path, methods in doc["paths"].items():
        for method, spec in methods.items():
            assert spec.get("security"), (method, path)


def test_with_the_token_no_5xx_and_every_response_conforms(admin_server: ServerProc) -> None:
    token = {"Authorization": f"Bearer {admin_server.token}"}

    def conforms(case: Any, response: Any) -> None:
        case.validate_response(response, checks=CHECKS)

    counts = scan(admin_server, token, conforms)
    assert len(counts) >= 9 and all(n >= 2 for n in counts.values()), counts


@pytest.mark.parametrize("auth", ["none", "wrong"])
def test_without_the_token_everything_is_401(admin_server: ServerProc, auth: str) -> None:
    before = device_ids(admin_server)
    wrong = admin_server.token[:-4] + (
        "AAAA" if not admin_server.token.endswith("AAAA") else "BBBB"
    )
    # requests sends a header set to None as no header at all.
    headers: Any = (
        {"Authorization": None} if auth == "none" else {"Authorization": f"Bearer {wrong}"}
    )

    def refused(case: Any, response: Any) -> None:
        assert response.status_code == 401, (case.method, case.formatted_path, response.text)
        assert response.json()["error"] == "unauthorized"
        assert response.headers.get("www-authenticate") == ["Bearer"]

    counts = scan(admin_server, headers, refused)
    assert len(counts) >= 9, counts
    assert device_ids(admin_server) == before
