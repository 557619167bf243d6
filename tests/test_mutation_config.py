"""The mutation-testing set-up (docs/testing.md) stays runnable: CI does not run mutmut, so
these check that its configuration parses and names files that exist."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from support import REPO_ROOT

# The modules where a wrong byte or a wrong branch matters (issue 14, docs/testing.md).
MUTATED_MODULES = [
    "protocol.py",
    "crypto_utils.py",
    "storage.py",
    "database.py",
    "streams.py",
    "handlers.py",
    "pagecache.py",
]


def _mutmut_config() -> dict[str, object]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        config: dict[str, object] = tomllib.load(file)["tool"]["mutmut"]
    return config


def test_mutmut_mutates_the_seven_modules() -> None:
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


def _local_imports(path: Path) -> set[str]:
    """The project's own modules and packages that a file imports, at its top or in a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    local = set()
    for name in names:
        if (REPO_ROOT / f"{name}.py").is_file():
            local.add(f"{name}.py")
        elif (REPO_ROOT / name / "__init__.py").is_file():
            local.add(name)
    return local


def _files_of(entry: str) -> list[Path]:
    target = REPO_ROOT / entry
    return sorted(target.rglob("*.py")) if target.is_dir() else [target]


def test_mutmut_copies_every_module_the_mutated_code_and_its_tests_import() -> None:
    # mutmut runs the tests in mutants/, which holds only the mutated modules, tests/ and
    # also_copy: a module imported from there and not copied fails every test, so every
    # mutant counts as killed and the score means nothing.
    config = _mutmut_config()
    copied = set(config["source_paths"]) | set(config["also_copy"])  # type: ignore[call-overload]
    selection = config["pytest_add_cli_args_test_selection"]
    to_read = [REPO_ROOT / module for module in MUTATED_MODULES]
    to_read += [REPO_ROOT / test_file for test_file in selection]  # type: ignore[attr-defined]
    to_read.append(REPO_ROOT / "tests" / "support.py")
    seen: set[Path] = set()
    while to_read:
        path = to_read.pop()
        if path in seen:
            continue
        seen.add(path)
        for entry in _local_imports(path):
            assert entry in copied, f"{path.relative_to(REPO_ROOT)} imports {entry}, not in also_copy"
            to_read.extend(_files_of(entry))
