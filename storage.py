"""Storage of received files (PROTOCOL.md §2 "1028", §5 "storage folder").

Every client has a folder `storage/<client ID in hex>/` under the data
directory. A client-supplied name is reduced to a safe base name and prefixed
with a digest of the whole name, so that no name reaches outside its client's
folder and two names that reduce to the same base name (`a/x.bin`, `b/x.bin`)
keep separate files. Content is streamed into a temporary file in the same
folder and moved into place with an atomic rename once it is whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path, PurePosixPath

from protocol import MalformedPayload, ServerFailure

log = logging.getLogger(__name__)

STORAGE_DIR_NAME = "storage"
PARTIAL_SUFFIX = ".part"  # temporary files of transfers in progress
NAME_DIGEST_CHARS = 16  # 64 bits of SHA-256: distinct names of one client never share a file
# PathName is at most 255 characters (§5): "storage/" + 32 hex + "/" + digest + "-" + base.
MAX_STORED_BASE_NAME = 255 - len(STORAGE_DIR_NAME) - 1 - 32 - 1 - NAME_DIGEST_CHARS - 1
# Free space that must remain on the disk after a file is accepted, by default.
DEFAULT_MIN_FREE_SPACE = 64 * 1024 * 1024


class StorageError(ServerFailure):
    """The file cannot be stored (disk full, no space for the declared size, I/O error)."""


def safe_base_name(file_name: str) -> str:
    """The last path component of a client-supplied name, refused if it is not a plain name.

    Both `/` and `\\` separate components: names arrive as Windows and POSIX
    paths (§7). The caller has already cut the name at its NUL and refused
    control characters (protocol.decode_name).
    """
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    if base in ("", ".", ".."):
        raise MalformedPayload(f"file name {file_name!r} has no usable base name")
    if not base.isprintable() or ":" in base:
        raise MalformedPayload(f"file name {file_name!r} has forbidden characters")
    if len(base) > MAX_STORED_BASE_NAME:
        stem, dot, suffix = base.rpartition(".")
        if dot and 0 < len(suffix) <= 16:
            base = stem[: MAX_STORED_BASE_NAME - len(suffix) - 1] + "." + suffix
        else:
            base = base[:MAX_STORED_BASE_NAME]
    return base


class FileStore:
    """The storage folder: where each (client, file name) lives, and the temporary files."""

    def __init__(self, data_dir: Path, min_free_space: int = DEFAULT_MIN_FREE_SPACE) -> None:
        self.data_dir = data_dir
        self.min_free_space = min_free_space
        self.root = data_dir / STORAGE_DIR_NAME
        self.root.mkdir(mode=0o700, exist_ok=True)
        self._partials: set[Path] = set()
        self._partials_lock = threading.Lock()
        # Held while a file's record and its stored file change together (a 1028
        # moving a file into place, a 1031 removing one), so that two connections
        # of one client cannot interleave the two steps.
        self.placement_lock = threading.Lock()

    def path_name(self, client_id: bytes, file_name: str) -> str:
        """The `PathName` of a client's file: relative to the data directory, POSIX separators."""
        digest = hashlib.sha256(file_name.encode("ascii")).hexdigest()[:NAME_DIGEST_CHARS]
        stored = f"{digest}-{safe_base_name(file_name)}"
        return str(PurePosixPath(STORAGE_DIR_NAME, client_id.hex(), stored))

    def absolute(self, path_name: str) -> Path:
        path = (self.data_dir / path_name).resolve()
        if not path.is_relative_to(self.root.resolve()):
            # Only reachable through a tampered database: never follow it.
            raise StorageError(f"stored path {path_name!r} is outside the storage folder")
        return path

    def check_free_space(self, size: int) -> None:
        free = shutil.disk_usage(self.root).free
        if free < size + self.min_free_space:
            raise StorageError(f"not enough disk space for {size} bytes ({free} free)")

    def create_partial(self, client_id: bytes) -> tuple[Path, int]:
        """A new temporary file in the client's folder: its path and an open descriptor."""
        folder = self.root / client_id.hex()
        folder.mkdir(mode=0o700, exist_ok=True)
        fd, name = tempfile.mkstemp(suffix=PARTIAL_SUFFIX, prefix=".incoming-", dir=folder)
        path = Path(name)
        with self._partials_lock:
            self._partials.add(path)
        return path, fd

    def commit_partial(self, partial: Path, path_name: str) -> None:
        """Move a complete temporary file into place, replacing an earlier copy atomically."""
        os.replace(partial, self.absolute(path_name))
        with self._partials_lock:
            self._partials.discard(partial)

    def discard_partial(self, partial: Path) -> None:
        partial.unlink(missing_ok=True)
        with self._partials_lock:
            self._partials.discard(partial)

    def discard_all_partials(self) -> None:
        """Remove the temporary files of transfers still in progress (at shutdown)."""
        with self._partials_lock:
            partials, self._partials = self._partials, set()
        for partial in partials:
            partial.unlink(missing_ok=True)

    def remove(self, path_name: str) -> None:
        self.absolute(path_name).unlink(missing_ok=True)

    def reconcile(self, recorded: set[str]) -> set[str]:
        """At start-up: remove leftovers that no record owns; return records whose file is gone.

        After a crash the folder may hold temporary files of interrupted
        transfers, or a file moved into place whose record was never written.
        """
        present: set[str] = set()
        for path in self.root.glob("*/*"):
            path_name = str(PurePosixPath(*path.relative_to(self.data_dir).parts))
            if path.name.endswith(PARTIAL_SUFFIX) or path_name not in recorded:
                log.info("start-up: removing leftover %s", path_name)
                path.unlink(missing_ok=True)
            else:
                present.add(path_name)
        return recorded - present
