"""Which file of a submission folder starts its server: the entry point.

PROTOCOL.md does not name the file: most submissions have `server.py`, others
`main.py`, `Main.py` or `src/main.py`. The order: the file the grader names
(`--entry`); else `server.py` at the top of the folder; else the one module
with an `if __name__ == "__main__":` guard that binds a socket, itself or
through the folder's own modules it imports. Several such modules: the one
called `main` or `server`, if there is one; otherwise the folder is ambiguous
and the grader names one. The text is searched, not imported: nothing of the
submission runs here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENTRY = "server.py"
MAX_DEPTH = 2  # folders below the top where an entry point is looked for (src/main.py, app/src/main.py)
# Folders that hold no entry point: environments, caches, tests, build output.
SKIPPED_FOLDERS = frozenset(
    {"venv", "env", "site-packages", "node_modules", "__pycache__", "build", "dist", "tests", "test"}
)
PREFERRED_STEMS = ("main", "server")  # among several candidates, a module so named is the one
MAIN_GUARD = re.compile(
    r"""^if\s+(__name__\s*==\s*["']__main__["']|["']__main__["']\s*==\s*__name__)""", re.M
)
# What a module that listens does: a socket bound, a socketserver/asyncio/http server made.
BINDS = re.compile(
    r"\.bind\s*\(|\.listen\s*\(|\bsocketserver\b|\bcreate_server\s*\(|\bstart_server\s*\("
    r"|\bserve_forever\s*\(|\b(HTTP|TCP|ThreadingTCP|ThreadingHTTP)Server\b"
)
IMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+import\s+([\w, ()*]+)|import\s+([\w., ]+))", re.M)


@dataclass(frozen=True)
class EntryPoint:
    """The file to run (relative to the folder, with `/`), how it was chosen, or why none was."""

    path: str | None
    how: str = ""
    problem: str | None = None

    def describe(self) -> str:
        """`src/main.py (found: ...)`, for the report."""
        return f"{self.path} ({self.how})" if self.path is not None else str(self.problem)


def find_entry(folder: Path, named: str | None = None) -> EntryPoint:
    """The entry point of the submission in `folder` (see the module's docstring)."""
    if named is not None:
        if (folder / named).is_file():
            return EntryPoint(Path(named).as_posix(), "named with --entry")
        return EntryPoint(None, problem=f"there is no {named} in it (--entry)")
    if (folder / DEFAULT_ENTRY).is_file():
        return EntryPoint(DEFAULT_ENTRY, "the usual name")
    return _discovered(folder)


def _discovered(folder: Path) -> EntryPoint:
    """The module with a `__main__` guard that binds a socket, or why there is not one."""
    modules = _python_files(folder)
    guarded = [path for path in modules if MAIN_GUARD.search(_text(path))]
    candidates = [path for path in guarded if _binds(path, folder, set())]
    names = [path.relative_to(folder).as_posix() for path in candidates]
    if len(candidates) == 1:
        return EntryPoint(
            names[0], 'found: the only module with an `if __name__ == "__main__":` guard that binds a socket'
        )
    preferred = [
        name for name, path in zip(names, candidates, strict=True) if path.stem.lower() in PREFERRED_STEMS
    ]
    if len(preferred) == 1:
        return EntryPoint(
            preferred[0],
            f"found: named {' or '.join(PREFERRED_STEMS)}, among the {len(candidates)} modules with an "
            f'`if __name__ == "__main__":` guard that bind a socket ({", ".join(names)})',
        )
    if candidates:
        return EntryPoint(
            None,
            problem=f"no single entry point: {_listed(preferred or names)} each have an "
            '`if __name__ == "__main__":` guard and bind a socket (name one with --entry)',
        )
    others = [path.relative_to(folder).as_posix() for path in guarded]
    aside = ""
    if others:
        verb = "has a guard but binds" if len(others) == 1 else "have guards but bind"
        aside = f"; {_listed(others)} {verb} no socket"
    return EntryPoint(
        None,
        problem='no entry point: no server.py, and no module with an `if __name__ == "__main__":` guard '
        f"that binds a socket{aside} (name it with --entry)",
    )


def _listed(names: list[str]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]


def _python_files(folder: Path) -> list[Path]:
    """The folder's modules, its top first, at most MAX_DEPTH folders down, in a stable order."""
    found: list[Path] = []
    level = [folder]
    for _ in range(MAX_DEPTH + 1):
        below: list[Path] = []
        for directory in level:
            try:
                entries = sorted(directory.iterdir())
            except OSError:
                continue
            for path in entries:
                if path.name.startswith("."):
                    continue
                if path.is_dir() and path.name.lower() not in SKIPPED_FOLDERS:
                    below.append(path)
                elif path.suffix == ".py" and path.is_file() and not _is_test(path.name):
                    found.append(path)
        level = below
    return found


def _is_test(name: str) -> bool:
    return name.startswith("test_") or name.endswith("_test.py") or name in ("conftest.py", "setup.py")


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _binds(path: Path, folder: Path, seen: set[Path]) -> bool:
    """Whether this module, or one of the folder's modules it imports (transitively), binds a socket."""
    seen.add(path)
    text = _text(path)
    if BINDS.search(text):
        return True
    return any(
        _binds(module, folder, seen) for module in _local_imports(path, folder, text) if module not in seen
    )


def _local_imports(path: Path, folder: Path, text: str) -> list[Path]:
    """The folder's own modules that `path` imports (`import x`, `from x import y`, `from .x import y`)."""
    names: list[tuple[str, list[str]]] = []
    for match in IMPORT.finditer(text):
        source, imported, plain = match.groups()
        if plain is not None:
            names += [(name.strip().split(" ")[0], []) for name in plain.split(",") if name.strip()]
        else:
            members = [name.strip().split(" ")[0] for name in imported.strip("()").split(",") if name.strip()]
            names.append((source, members))
    found = []
    for source, members in names:
        dots = len(source) - len(source.lstrip("."))
        dotted = source.lstrip(".")
        if dots:
            ancestors = [path.parent, *path.parent.parents]
            bases = ancestors[dots - 1 : dots]  # empty if it climbs above the filesystem's root
        else:
            bases = [path.parent, folder]
        for base in bases:
            prefix = base.joinpath(*dotted.split(".")) if dotted else base
            # `from pkg import module`: each member may be a module of the package too.
            for module in [prefix, *(prefix / member for member in members if member != "*")]:
                for candidate in (module.with_suffix(".py"), module / "__init__.py"):
                    if candidate.is_file() and candidate.resolve().is_relative_to(folder.resolve()):
                        found.append(candidate)
    return found
