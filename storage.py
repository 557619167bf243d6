"""Storage of received files (PROTOCOL.md §2 "1028", §5 "storage folder").

Layout under the data directory:

- `storage/<client ID in hex>/<upload ID>-<base name>`: stored files. The
  upload ID is 16 random hex digits drawn for every 1028, so two names that
  reduce to one base name (`a/x.bin`, `b/x.bin`) keep separate files, and a
  resend never overwrites the file that the current record names (see
  "Placement" below).
- `storage/incoming/<random>.part`: temporary files of transfers in progress.
  `incoming` is not 32 hex digits, so it can never be a client's folder, and
  start-up removes what is in it and nothing else that looks temporary: a
  client's verified `movie.part` is a stored file like any other.

Placement needs no lock. A 1028 moves its temporary file into place under a
name nobody else knows, then points the record at it in one statement (which
returns the path it replaced), then removes the replaced file; a 1031 deletes
the record in one statement (which returns its path), then removes that file.
A record only ever names a file that is already in place, and only whoever
took a path out of the database removes its file, so no interleaving of the
two leaves a record without its file. A crash between two steps leaves at
worst an unrecorded file, which start-up removes.

Nothing under `storage/` is followed through a symbolic link: the folders are
opened once with O_NOFOLLOW and every file operation is made relative to an
open folder (`dir_fd`) where the platform allows it, so a link planted in the
tree (or `storage` itself replaced by one) is refused, not followed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from protocol import MalformedPayload, ServerFailure

log = logging.getLogger(__name__)

STORAGE_DIR_NAME = "storage"
# Temporary files live here; not 32 hex digits, so no client folder can have this name.
INCOMING_DIR_NAME = "incoming"
PARTIAL_SUFFIX = ".part"  # temporary files of transfers in progress, in INCOMING_DIR_NAME
UPLOAD_ID_CHARS = 16  # 64 random bits per upload: two uploads of one client never share a name
# PathName is at most 255 characters (§5): "storage/" + 32 hex + "/" + upload ID + "-" + base.
MAX_STORED_BASE_NAME = 255 - len(STORAGE_DIR_NAME) - 1 - 32 - 1 - UPLOAD_ID_CHARS - 1
# Free space that must remain on the disk after a file is accepted, by default.
DEFAULT_MIN_FREE_SPACE = 64 * 1024 * 1024
# Free inodes that must remain after a file is accepted, where the filesystem counts them:
# room for the database's journal and for every other program on the disk.
MIN_FREE_INODES = 1024
# A client's folder is named by its 16-byte ID in hex.
CLIENT_FOLDER = re.compile(r"[0-9a-f]{32}")

# Where the platform has them (POSIX), folders are opened without following a final
# symbolic link, and files are reached relative to the open folder.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
USES_DIR_FD = all(f in os.supports_dir_fd for f in (os.open, os.mkdir, os.unlink, os.rename))


class StorageError(ServerFailure):
    """The file cannot be stored (disk full, no space for the declared size, I/O error)."""


class ShuttingDown(StorageError):
    """The server is stopping: no new transfer starts (2107, and the connection closes)."""

    closes_connection = True


class UnsafeStorage(Exception):
    """The storage folder cannot be used safely (a symbolic link, not a folder): refuse to start."""


@dataclass(frozen=True)
class DiskSpace:
    free_bytes: int
    free_inodes: int | None  # None where the filesystem does not count inodes


def disk_space(path: Path) -> DiskSpace:
    """Free space for an unprivileged writer on the filesystem of `path`."""
    if hasattr(os, "statvfs"):
        fs = os.statvfs(path)
        # f_files == 0: a filesystem with no fixed inode table (btrfs reports 0).
        return DiskSpace(fs.f_bavail * fs.f_frsize, fs.f_favail if fs.f_files else None)
    return DiskSpace(shutil.disk_usage(path).free, None)


DiskSpaceSource = Callable[[Path], DiskSpace]


def safe_base_name(file_name: str) -> str:
    """The last path component of a client-supplied name, refused if it is not a plain name.

    Both `/` and `\\` separate components: names arrive as Windows and POSIX
    paths (§7). The caller has already cut the name at its NUL and refused
    control characters (protocol.decode_name).
    """
    base = file_name.replace("\\", "/").rpartition("/")[2]
    if base in ("", ".", ".."):
        raise MalformedPayload(f"file name {file_name!r} has no usable base name")
    if not base.isprintable() or ":" in base:
        raise MalformedPayload(f"file name {file_name!r} has forbidden characters")
    if len(base) > MAX_STORED_BASE_NAME:  # pragma: no mutate (>=: a cut at the limit cuts nothing)
        stem, dot, suffix = base.rpartition(".")
        if dot and 0 < len(suffix) <= 16:
            base = stem[: MAX_STORED_BASE_NAME - len(suffix) - 1] + "." + suffix
        else:
            base = base[:MAX_STORED_BASE_NAME]
    return base


def make_private(path: Path, mode: int, fd: int | None = None) -> None:
    """Set `path` (or the open `fd` of it) to `mode` if this process owns it; warn if it cannot.

    Run at every start (SECURITY.md, "loose permissions"): a database or folder
    created by an older version, or copied in, may be readable by others.
    """
    if not hasattr(os, "geteuid"):
        return  # Windows: no POSIX modes to set
    try:
        status = os.fstat(fd) if fd is not None else os.lstat(path)
        if stat.S_ISLNK(status.st_mode):
            log.warning("%s is a symbolic link: its permissions are left alone", path)
            return
        if stat.S_IMODE(status.st_mode) == mode:
            return
        if status.st_uid != os.geteuid():
            log.warning(
                "%s is owned by uid %d, not by the server's user: its mode %o is left as it is",
                path,
                status.st_uid,
                stat.S_IMODE(status.st_mode),
            )
            return
        if fd is not None:
            os.fchmod(fd, mode)
        else:
            os.chmod(path, mode)
    except OSError as err:
        log.warning("cannot set the permissions of %s to %o: %s", path, mode, err.strerror or err)


class _Folder:
    """A folder opened without following a symbolic link; names inside it reached through it."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self.fd = fd  # None where the platform has no dir_fd: then full paths are used

    @classmethod
    def open(cls, path: Path, parent: _Folder | None = None, create: bool = False) -> _Folder:
        """Open the folder `path` (made if missing, with `create`); UnsafeStorage if a link or a file."""
        relative = parent is not None and parent.fd is not None
        name, dir_fd = (path.name, parent.fd) if parent is not None and relative else (path, None)
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=dir_fd)
        if os.path.islink(path):
            raise UnsafeStorage(f"{path} is a symbolic link")
        if not USES_DIR_FD:
            if not path.is_dir():
                raise UnsafeStorage(f"{path} is not a folder")
            return cls(path, None)
        try:
            fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
        except OSError as err:
            # ELOOP: replaced by a link after the check above; ENOTDIR: a file.
            raise UnsafeStorage(f"{path} is not a folder of its own: {err.strerror}") from err
        return cls(path, fd)

    def at(self, name: str) -> tuple[str, int | None]:
        """Arguments for an os function on `name` inside this folder: (path, dir_fd)."""
        return (name, self.fd) if self.fd is not None else (str(self.path / name), None)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass(eq=False)
class Partial:
    """The temporary file of one 1028 in progress and the disk space it has reserved."""

    name: str  # inside storage/incoming
    fd: int  # owned by the store: closed by end_upload
    reserved: int  # the declared content size
    path: Path = field(repr=False)
    placed: bool = False

    def outstanding(self) -> int:
        """Reserved bytes not yet written (what the disk's free space does not yet show)."""
        try:
            return max(0, self.reserved - os.fstat(self.fd).st_size)
        except OSError:
            return self.reserved


class FileStore:
    """The storage folder: where each (client, file name) lives, and the temporary files."""

    def __init__(
        self,
        data_dir: Path,
        min_free_space: int = DEFAULT_MIN_FREE_SPACE,
        space_source: DiskSpaceSource = disk_space,
    ) -> None:
        self.data_dir = data_dir
        self.min_free_space = min_free_space
        self.space_source = space_source
        self.root = data_dir / STORAGE_DIR_NAME
        self._root = _Folder.open(self.root, create=True)
        self._incoming = _Folder.open(self.root / INCOMING_DIR_NAME, self._root, create=True)
        for folder in (self._root, self._incoming):
            # pragma below: given an fd, make_private uses the path only to name it in a warning
            make_private(folder.path, 0o700, folder.fd)  # pragma: no mutate
        # Guards the reservations and the set of temporary files, and the shutdown flag.
        self._lock = threading.Lock()
        self._partials: dict[str, Partial] = {}
        self._closed = False  # pragma: no mutate (read as a truth value only: None is the same)

    # --- names --------------------------------------------------------------

    def path_name(self, client_id: bytes, file_name: str) -> str:
        """A new `PathName` for an upload of `file_name`: relative to the data directory, POSIX
        separators, unique to this upload (see the module's docstring, "Placement")."""
        stored = f"{secrets.token_hex(UPLOAD_ID_CHARS // 2)}-{safe_base_name(file_name)}"
        return str(PurePosixPath(STORAGE_DIR_NAME, client_id.hex(), stored))

    def _split(self, path_name: str) -> tuple[str, str]:
        """(client folder, file name) of a `PathName`, refused unless it has exactly our shape."""
        parts = path_name.split("/")
        if (
            len(parts) != 3
            or parts[0] != STORAGE_DIR_NAME
            or not CLIENT_FOLDER.fullmatch(parts[1])
            or parts[2] in ("", ".", "..")
            or "\\" in parts[2]
            or "\0" in parts[2]
        ):
            # Only reachable through a tampered database: never follow it.
            raise StorageError(f"stored path {path_name!r} is outside the storage folder's layout")
        return parts[1], parts[2]

    def absolute(self, path_name: str) -> Path:
        """Where a PathName's file is; refused if that is not inside a client folder of ours."""
        folder, name = self._split(path_name)
        if os.path.islink(self.root / folder):
            raise StorageError(f"stored path {path_name!r} goes through a symbolic link")
        return self.root / folder / name

    # --- transfers ----------------------------------------------------------

    def begin_upload(self, size: int) -> Partial:
        """Reserve `size` bytes and create the temporary file of a 1028 (§2).

        The check and the reservation happen under one lock, so concurrent
        1028s cannot each pass against the same free space (SECURITY.md).
        """
        with self._lock:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            self._check_room(size)
            name = f"{secrets.token_hex(16)}{PARTIAL_SUFFIX}"
            path, dir_fd = self._incoming.at(name)
            # pragma below: O_EXCL never follows a link and os.open is close-on-exec anyway (PEP 446),
            # so a mutant that drops _NOFOLLOW or _CLOEXEC (or _BINARY, 0 on POSIX) behaves the same
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY  # pragma: no mutate
            try:
                fd = os.open(path, flags, 0o600, dir_fd=dir_fd)
            except OSError as err:
                raise StorageError(f"cannot create a temporary file: {err.strerror}") from err
            partial = Partial(name, fd, size, self._incoming.path / name)
            self._partials[name] = partial
            return partial

    def _check_room(self, size: int) -> None:
        """Refuse `size` more bytes unless they fit beside what transfers in progress reserved."""
        try:
            space = self.space_source(self.root)
        except OSError as err:
            raise StorageError(f"cannot read the free disk space: {err.strerror}") from err
        reserved = sum(partial.outstanding() for partial in self._partials.values())
        if space.free_bytes - reserved < size + self.min_free_space:
            raise StorageError(
                f"not enough disk space for {size} bytes "
                f"({space.free_bytes} free, {reserved} reserved by transfers in progress)"
            )
        # Each transfer needs an inode for its file, and one for a new client folder.
        inodes = space.free_inodes
        if inodes is not None and inodes - 2 * len(self._partials) < MIN_FREE_INODES + 2:
            raise StorageError(f"not enough free inodes on the disk ({space.free_inodes} free)")

    def commit_partial(self, partial: Partial, path_name: str) -> None:
        """Move a complete temporary file to `path_name` (a name from path_name(): new)."""
        folder_name, name = self._split(path_name)
        with self._lock:
            if self._closed or partial.name not in self._partials:
                raise ShuttingDown("the server is shutting down")
        try:
            folder = _Folder.open(self.root / folder_name, self._root, create=True)
        except (UnsafeStorage, OSError) as err:
            raise StorageError(f"cannot use the client's folder: {err}") from err
        try:
            source, source_fd = self._incoming.at(partial.name)
            target, target_fd = folder.at(name)
            os.replace(source, target, src_dir_fd=source_fd, dst_dir_fd=target_fd)
        except OSError as err:
            raise StorageError(f"cannot move the file into place: {err.strerror}") from err
        finally:
            folder.close()
        partial.placed = True

    def end_upload(self, partial: Partial) -> None:
        """Release the reservation; remove the temporary file unless it was moved into place."""
        with self._lock:
            self._partials.pop(partial.name)
        if not partial.placed:
            self._unlink_partial(partial.name)
        os.close(partial.fd)

    def _unlink_partial(self, name: str) -> None:
        path, dir_fd = self._incoming.at(name)
        try:
            os.unlink(path, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("cannot remove the temporary file %s: %s", name, err.strerror)

    def remove(self, path_name: str) -> None:
        """Remove a stored file (its record is already gone); a missing one is no error."""
        folder_name, name = self._split(path_name)
        try:
            folder = _Folder.open(self.root / folder_name, self._root)
        except (UnsafeStorage, OSError) as err:
            log.warning("cannot remove %s: %s", path_name, err)
            return
        try:
            path, dir_fd = folder.at(name)
            os.unlink(path, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("cannot remove %s: %s", path_name, err.strerror)
        finally:
            folder.close()

    def close(self) -> None:
        """At shutdown: no transfer starts or is placed from now on; remove the temporary files.

        A handler still receiving keeps writing into its unlinked file (its
        descriptor stays open) and then fails to place it: 2107, nothing kept.
        """
        with self._lock:
            self._closed = True
            names = list(self._partials)
        for name in names:
            self._unlink_partial(name)

    # --- start-up -----------------------------------------------------------

    def reconcile(self, recorded: set[str]) -> set[str]:
        """At start-up: remove leftovers that no record owns; return records whose file is gone.

        After a crash the folder may hold temporary files of interrupted
        transfers, or a file moved into place whose record was never written
        (or whose record a 1031 or a replacement had removed). Symbolic links
        and anything that is not a regular file are left alone and logged;
        a client folder that is a symbolic link stops the start (UnsafeStorage).
        """
        self._remove_temporary_files()
        present: set[str] = set()
        for name, kind in self._list(self._root):
            path = self.root / name
            if kind == "a symbolic link":
                raise UnsafeStorage(f"{path} is a symbolic link: refusing to follow it")
            if name == INCOMING_DIR_NAME:
                continue
            if kind != "a folder" or not CLIENT_FOLDER.fullmatch(name):
                log.warning("start-up: skipping %s: not a client folder", path)
                continue
            present |= self._reconcile_client_folder(path, recorded)
        return recorded - present

    def _remove_temporary_files(self) -> None:
        for name, kind in self._list(self._incoming):
            if kind == "file":
                log.info("start-up: removing the temporary file %s", name)
                self._unlink_partial(name)
            else:
                log.warning("start-up: skipping %s in %s: %s", name, self._incoming.path, kind)

    def _reconcile_client_folder(self, path: Path, recorded: set[str]) -> set[str]:
        folder = _Folder.open(path, self._root)
        present = set()
        try:
            make_private(path, 0o700, folder.fd)  # pragma: no mutate (path: named in a warning only)
            for name, kind in self._list(folder):
                path_name = f"{STORAGE_DIR_NAME}/{path.name}/{name}"
                if kind != "file":
                    log.warning("start-up: skipping %s: %s", path_name, kind)
                elif path_name in recorded:
                    present.add(path_name)
                else:
                    log.info("start-up: removing leftover %s", path_name)
                    where, dir_fd = folder.at(name)
                    os.unlink(where, dir_fd=dir_fd)
        finally:
            folder.close()
        return present

    @staticmethod
    def _list(folder: _Folder) -> list[tuple[str, str]]:
        """(name, kind) of each entry of `folder`, never following a link: kind "file" for a
        regular file, else what it is."""
        found = []
        with os.scandir(folder.fd if folder.fd is not None else folder.path) as entries:
            for entry in entries:
                if entry.is_symlink():
                    kind = "a symbolic link"
                elif entry.is_file(follow_symlinks=False):  # pragma: no mutate (links are out already)
                    kind = "file"
                elif entry.is_dir(follow_symlinks=False):  # pragma: no mutate (links are out already)
                    kind = "a folder"
                else:
                    kind = "not a regular file"
                found.append((entry.name, kind))
        return found
