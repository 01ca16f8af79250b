"""The web app's API types are made from the API's OpenAPI schema, not copied by hand:
the committed ``frontend/src/lib/api.gen.ts`` is what the schema makes now."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from shared.settings import Settings
from voicepool.cli import openapi_schema

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "frontend" / "node_modules" / ".bin" / "openapi-typescript"
COMMITTED = ROOT / "frontend" / "src" / "lib" / "api.gen.ts"


def test_the_web_apps_api_types_match_the_schema(tmp_path: Path) -> None:
    if shutil.which("node") is None or not GENERATOR.exists():
        pytest.fail("needs Node and frontend/node_modules: `npm --prefix frontend ci`")
    schema = tmp_path / "openapi.json"
    schema.write_text(openapi_schema(Settings(redis_url="redis://-")))
    made = tmp_path / "api.gen.ts"
    subprocess.run(
        [str(GENERATOR), str(schema), "-o", str(made)],
        check=True, capture_output=True, cwd=ROOT / "frontend", timeout=120,
    )  # fmt: skip
    assert made.read_text() == COMMITTED.read_text(), (
        "frontend/src/lib/api.gen.ts is out of date with the API: run `make frontend-types`"
    )
