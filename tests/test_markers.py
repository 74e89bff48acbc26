"""The suite's bookkeeping: every test file has its stage markers (tests/conftest.py STAGES_OF_FILE), the tests
named in STARTS_PREFECT exist, and every marker the suite sets is registered (pyproject.toml; --strict-markers)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import STAGES_OF_FILE, STARTS_PREFECT, TIER_OF_FIXTURE

TESTS = Path(__file__).resolve().parent


def test_every_test_file_has_its_stages():
    files = {p.name for p in TESTS.glob("test_*.py")}
    assert not files - set(STAGES_OF_FILE), f"add these to STAGES_OF_FILE in tests/conftest.py: {files - set(STAGES_OF_FILE)}"


def test_the_tests_that_start_prefect_by_name_still_exist():
    for file, test in STARTS_PREFECT:
        path = TESTS / file
        assert not path.exists() or f"def {test}(" in path.read_text(encoding="utf-8"), f"{file}::{test} is gone"


def test_the_tier_and_stage_markers_are_registered(pytestconfig):
    registered = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    used = set(TIER_OF_FIXTURE.values()) | {s for stages in STAGES_OF_FILE.values() for s in stages}
    assert used <= registered, used - registered
