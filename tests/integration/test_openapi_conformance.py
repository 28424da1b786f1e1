"""Schemathesis against the live daemon: the OpenAPI document is true.

Every operation of ``/openapi.yaml`` is exercised with generated valid and
invalid requests under schemathesis's standard checks (no server errors,
documented status codes, content types and headers, response schemas,
valid data accepted, invalid data rejected, created objects retrievable,
auth enforced), on SQLite and on PostgreSQL. The seed is fixed so CI is
repeatable; change it locally to explore further.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from switchd.api.openapi import document

from ..daemon import Daemon

SEED = "20261121"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_schemathesis_finds_no_failures(tmp_path, request, backend):
    env = {}
    if backend == "postgresql":
        env = {"SWITCHD_DATABASE_URL": request.getfixturevalue("pg_schema_url"), "SWITCHD_DATABASE_AUTO_MIGRATE": "yes"}
    # A valid request the account cannot pay for is refused with 402 (insufficient funds), as
    # documented: for the "valid data accepted" check that is an answer, like 409.
    (tmp_path / "schemathesis.toml").write_text(
        '[checks.positive_data_acceptance]\n'
        'expected-statuses = ["2xx", "3xx", "401", "402", "403", "404", "409", "429", "5xx"]\n')
    daemon = Daemon(tmp_path, env=env).start()
    try:
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{daemon.url}/openapi.yaml",
                "--header",
                f"Authorization: Bearer {daemon.admin_key}",
                "--max-examples",
                "40",
                "--seed",
                SEED,
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        operations = sum(
            1 for item in document()["paths"].values() for method in item if method in ("get", "post", "patch", "delete")
        )
        assert f"Tested: {operations}" in output, output[-3000:]  # every operation was exercised
        assert "Traceback" not in daemon.log.read_text()
    finally:
        daemon.stop()
