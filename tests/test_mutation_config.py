"""The mutation-testing set-up (docs/testing.md) stays runnable: CI does not run mutmut, so
these check that its configuration parses and names files that exist."""

from __future__ import annotations

import tomllib

from support import REPO_ROOT

# The modules where a wrong byte or a wrong branch matters (issue 14, docs/testing.md).
MUTATED_MODULES = ["protocol.py", "crypto_utils.py", "storage.py", "database.py", "streams.py", "handlers.py"]


def _mutmut_config() -> dict[str, object]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        config: dict[str, object] = tomllib.load(file)["tool"]["mutmut"]
    return config


def test_mutmut_mutates_the_six_modules() -> None:
    config = _mutmut_config()
    assert config["source_paths"] == MUTATED_MODULES
    assert all((REPO_ROOT / module).is_file() for module in MUTATED_MODULES)


def test_mutmut_runs_test_files_that_exist_without_the_live_server_harness() -> None:
    config = _mutmut_config()
    selection = config["pytest_add_cli_args_test_selection"]
    assert isinstance(selection, list) and selection
    for test_file in selection:
        assert (REPO_ROOT / test_file).is_file(), test_file
    # The forced-failure check of mutmut makes every mutated function raise; conftest.py
    # calls one at import (an RSA key), so the mutation run goes without it.
    assert "--noconftest" in config["pytest_add_cli_args"]  # type: ignore[operator]


def test_mutmut_is_pinned_apart_from_the_ci_requirements() -> None:
    lines = (REPO_ROOT / "requirements-mutation.txt").read_text().splitlines()
    assert any(line.startswith("mutmut==") for line in lines)
    assert "mutmut" not in (REPO_ROOT / "requirements-dev.txt").read_text()
