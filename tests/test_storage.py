"""storage.py on its own: base names, PathName, containment, temporary files, start-up reconciliation.

(Issue 10's points on storage, through a server, are in test_startup.py.)

No server: a FileStore on `tmp_path`. These are among the fast tests mutmut runs (docs/testing.md).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

import storage
from protocol import MalformedPayload, ProtocolError, ServerFailure
from storage import (
    DEFAULT_MIN_FREE_SPACE,
    INCOMING_DIR_NAME,
    MAX_STORED_BASE_NAME,
    MIN_FREE_INODES,
    PARTIAL_SUFFIX,
    STORAGE_DIR_NAME,
    UPLOAD_ID_CHARS,
    DiskSpace,
    FileStore,
    Partial,
    ShuttingDown,
    StorageError,
    UnsafeStorage,
    disk_space,
    make_private,
    safe_base_name,
)

CLIENT = bytes(range(16))
OTHER_CLIENT = bytes(range(16, 32))


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    data_dir = tmp_path / "data"  # beside it, tmp_path holds what must stay out of reach
    data_dir.mkdir()
    return FileStore(data_dir)


# --- safe_base_name -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "base"),
    [
        ("x.bin", "x.bin"),
        ("a/b/x.bin", "x.bin"),
        ("/home/me/x.bin", "x.bin"),
        ("C\\Users\\me\\x.bin", "x.bin"),
        ("a\\b/c\\x.bin", "x.bin"),
        ("...x", "...x"),
        ("name with spaces.txt", "name with spaces.txt"),
    ],
)
def test_the_base_name_is_the_last_component_of_either_kind_of_path(file_name: str, base: str) -> None:
    assert safe_base_name(file_name) == base


@pytest.mark.parametrize(
    "file_name",
    ["", ".", "..", "a/", "a\\", "a/..", "a\\.", "../..", "C:x.bin", "C:\\", "x\x7fy", "tab\there"],
)
def test_names_without_a_plain_base_name_are_refused(file_name: str) -> None:
    with pytest.raises(MalformedPayload, match="file name"):
        safe_base_name(file_name)


def test_a_base_name_at_the_limit_is_kept_whole() -> None:
    name = "n" * (MAX_STORED_BASE_NAME - 4) + ".bin"
    assert safe_base_name(name) == name
    assert safe_base_name("dir/" + name) == name


def test_a_long_base_name_is_cut_keeping_its_suffix() -> None:
    stem = "s" * 300
    cut = safe_base_name(stem + ".tar.gz")
    assert cut == "s" * (MAX_STORED_BASE_NAME - 3) + ".gz"
    assert len(cut) == MAX_STORED_BASE_NAME
    one_over = safe_base_name("t" * (MAX_STORED_BASE_NAME - 3) + ".bin")
    assert one_over == "t" * (MAX_STORED_BASE_NAME - 4) + ".bin"


def test_a_suffix_of_16_characters_is_kept_and_a_longer_one_is_not() -> None:
    kept = safe_base_name("a" * 300 + "." + "k" * 16)
    assert kept == "a" * (MAX_STORED_BASE_NAME - 17) + "." + "k" * 16
    long_suffix = "a" * 300 + "." + "k" * 17
    assert safe_base_name(long_suffix) == long_suffix[:MAX_STORED_BASE_NAME]
    no_suffix = "b" * 300
    assert safe_base_name(no_suffix) == "b" * MAX_STORED_BASE_NAME
    ends_with_dot = "c" * 300 + "."
    assert safe_base_name(ends_with_dot) == "c" * MAX_STORED_BASE_NAME


def test_storage_errors_are_server_failures_answered_2107() -> None:
    # A full disk is answered 2107 like any refusal (§3), through the one except of the loop;
    # it is the server's failure, not the peer's protocol error.
    assert issubclass(StorageError, ServerFailure) and not issubclass(StorageError, ProtocolError)
    assert StorageError.response_code == 2107


# --- path_name ------------------------------------------------------------------------


def test_path_name_is_the_client_folder_an_upload_id_and_the_base_name(store: FileStore) -> None:
    pattern = rf"{STORAGE_DIR_NAME}/{CLIENT.hex()}/[0-9a-f]{{{UPLOAD_ID_CHARS}}}-x\.bin"
    assert re.fullmatch(pattern, store.path_name(CLIENT, "dir/x.bin"))


def test_names_that_share_a_base_name_keep_separate_files(store: FileStore) -> None:
    # §5: a/x.bin and b/x.bin of one client are two FileName rows, so two stored files.
    paths = {store.path_name(CLIENT, name) for name in ("a/x.bin", "b/x.bin", "x.bin", "a\\x.bin")}
    assert len(paths) == 4
    assert {path.rsplit("-", 1)[1] for path in paths} == {"x.bin"}
    # Every upload gets a path of its own, even of one name (storage.py, "Placement").
    assert store.path_name(CLIENT, "x.bin") != store.path_name(CLIENT, "x.bin")
    assert (
        store.path_name(CLIENT, "x.bin").split("/")[1] != store.path_name(OTHER_CLIENT, "x.bin").split("/")[1]
    )


def test_the_longest_name_gives_a_path_name_within_255_characters(store: FileStore) -> None:
    # §5: PathName is at most 255 characters; a file name is at most 254 (§1).
    for name in ("z" * 254, "d/" + "z" * 252, "y" * 240 + ".0123456789abcdef"):
        path_name = store.path_name(CLIENT, name)
        assert len(path_name) == 255, path_name
        assert path_name.startswith(f"{STORAGE_DIR_NAME}/{CLIENT.hex()}/")


def test_a_path_name_of_a_refused_name_is_refused(store: FileStore) -> None:
    with pytest.raises(MalformedPayload):
        store.path_name(CLIENT, "a/..")


# --- absolute: containment ------------------------------------------------------------


def test_absolute_resolves_a_path_name_inside_the_storage_folder(store: FileStore) -> None:
    path_name = store.path_name(CLIENT, "x.bin")
    assert store.absolute(path_name) == (store.data_dir / path_name).resolve()
    assert store.absolute(path_name).is_relative_to(store.root.resolve())


@pytest.mark.parametrize(
    "path_name",
    [
        "defensive.db",
        "storage/../defensive.db",
        f"storage/{CLIENT.hex()}/../../defensive.db",
        "/etc/passwd",
        "../outside",
        "storage2/x",
    ],
)
def test_absolute_refuses_a_path_name_outside_the_storage_folder(store: FileStore, path_name: str) -> None:
    # Only a tampered database can hold such a PathName; it is never followed.
    with pytest.raises(StorageError, match="outside the storage folder"):
        store.absolute(path_name)


def test_absolute_refuses_a_symlink_out_of_the_storage_folder(store: FileStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / CLIENT.hex()).symlink_to(outside, target_is_directory=True)
    with pytest.raises(StorageError):
        store.absolute(f"storage/{CLIENT.hex()}/x.bin")


def test_remove_refuses_a_path_outside_and_leaves_it(store: FileStore) -> None:
    victim = store.data_dir / "defensive.db"
    victim.write_bytes(b"keep me")
    with pytest.raises(StorageError):
        store.remove("storage/../defensive.db")
    assert victim.read_bytes() == b"keep me"


def test_commit_refuses_a_path_outside_and_moves_nothing(store: FileStore) -> None:
    partial = store.begin_upload(0)
    with pytest.raises(StorageError):
        store.commit_partial(partial, "storage/../escaped")
    store.end_upload(partial)
    assert not (store.data_dir / "escaped").exists()


# --- the folder and free space ----------------------------------------------------------


def test_the_storage_folder_is_created_private(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    assert store.root == tmp_path / STORAGE_DIR_NAME
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert store.min_free_space == DEFAULT_MIN_FREE_SPACE
    FileStore(tmp_path)  # an existing folder is fine


def test_free_space_is_checked_with_the_margin(tmp_path: Path) -> None:
    store = FileStore(tmp_path, min_free_space=0)
    store.end_upload(store.begin_upload(0))
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(StorageError, match="not enough disk space"):
        store.begin_upload(free + (1 << 40))
    with pytest.raises(StorageError, match="not enough disk space"):
        FileStore(tmp_path, min_free_space=free + (1 << 40)).begin_upload(0)


# --- temporary files --------------------------------------------------------------------


def _written(store: FileStore, content: bytes) -> Partial:
    partial = store.begin_upload(len(content))
    assert os.write(partial.fd, content) == len(content)
    return partial


def test_a_partial_is_a_private_temporary_file_in_the_incoming_folder(store: FileStore) -> None:
    partial = _written(store, b"abc")
    assert partial.path.parent == store.root / INCOMING_DIR_NAME
    assert re.fullmatch(rf"[0-9a-f]{{32}}{re.escape(PARTIAL_SUFFIX)}", partial.name), "128 random bits"
    assert stat.S_IMODE(partial.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(partial.path.stat().st_mode) == 0o600
    assert partial.path.read_bytes() == b"abc"
    second = store.begin_upload(0)
    assert second.path != partial.path
    store.end_upload(partial)
    store.end_upload(second)


def test_commit_moves_the_partial_into_place(store: FileStore) -> None:
    for content in (b"first", b"second"):
        path_name = store.path_name(CLIENT, "x.bin")
        partial = _written(store, content)
        store.commit_partial(partial, path_name)
        store.end_upload(partial)
        assert not partial.path.exists()
        assert (store.data_dir / path_name).read_bytes() == content
        assert stat.S_IMODE((store.data_dir / path_name).parent.stat().st_mode) == 0o700
    store.close()  # a committed file is no longer a partial: it stays
    assert (store.data_dir / path_name).read_bytes() == b"second"


def test_ended_uploads_leave_nothing(store: FileStore) -> None:
    partial = _written(store, b"abc")
    store.end_upload(partial)
    assert not partial.path.exists()


def test_shutdown_removes_every_partial_still_in_progress(store: FileStore) -> None:
    partials = [_written(store, b"x") for _ in range(3)]
    ended = store.begin_upload(0)
    store.end_upload(ended)
    partials[2].path.unlink()  # already gone by other means: no error
    store.close()
    assert not [p for p in partials if p.path.exists()]
    store.close()  # twice is fine
    with pytest.raises(StorageError, match="shutting down"):
        store.begin_upload(0)
    for partial in partials:
        store.end_upload(partial)


def test_remove_deletes_a_stored_file_and_a_missing_one_is_fine(store: FileStore) -> None:
    path_name = _stored(store, CLIENT, "x.bin")
    store.remove(path_name)
    assert not (store.data_dir / path_name).exists()
    store.remove(path_name)


# --- start-up reconciliation --------------------------------------------------------------


def _stored(store: FileStore, client: bytes, name: str, content: bytes = b"c") -> str:
    path_name = store.path_name(client, name)
    partial = _written(store, content)
    store.commit_partial(partial, path_name)
    store.end_upload(partial)
    return path_name


def test_reconcile_keeps_recorded_files_and_removes_leftovers(store: FileStore) -> None:
    kept = _stored(store, CLIENT, "kept.bin")
    other = _stored(store, OTHER_CLIENT, "kept.bin")
    orphan = _stored(store, CLIENT, "orphan.bin")  # moved into place, its record never written
    partial = _written(store, b"half")  # an interrupted transfer
    missing = store.path_name(CLIENT, "lost.bin")  # a record whose file is gone
    assert store.reconcile({kept, other, missing}) == {missing}
    assert (store.data_dir / kept).exists() and (store.data_dir / other).exists()
    assert not (store.data_dir / orphan).exists()
    assert not partial.path.exists()


def test_reconcile_removes_a_partial_even_under_a_recorded_name(store: FileStore) -> None:
    partial = _written(store, b"half")
    recorded = partial.path.relative_to(store.data_dir).as_posix()
    assert store.reconcile({recorded}) == {recorded}
    assert not partial.path.exists()


def test_reconcile_of_an_empty_folder(store: FileStore) -> None:
    assert store.reconcile(set()) == set()
    assert store.reconcile({"storage/x/y"}) == {"storage/x/y"}


# --- the new API's edges (killing mutmut's survivors) ----------------------------------------


class Space:
    """A disk of a given size, for the reservation checks (FileStore's space_source)."""

    def __init__(self, free_bytes: int, free_inodes: int | None) -> None:
        self.space = DiskSpace(free_bytes, free_inodes)

    def __call__(self, path: Path) -> DiskSpace:
        return self.space


def test_reservations_count_what_transfers_in_progress_have_not_yet_written(tmp_path: Path) -> None:
    store = FileStore(tmp_path, min_free_space=100, space_source=Space(1000, None))
    first = store.begin_upload(600)  # 600 reserved: 400 left, 100 of them the margin
    assert first.outstanding() == 600
    os.write(first.fd, bytes(250))
    assert first.outstanding() == 350
    with pytest.raises(StorageError, match=r"not enough disk space for 551 bytes \(1000 free, 350 reserved"):
        store.begin_upload(551)
    second = store.begin_upload(550)  # exactly what is left: accepted
    store.end_upload(second)
    store.end_upload(first)
    store.end_upload(store.begin_upload(900))  # released reservations count no more


def test_a_partial_written_past_its_reservation_reserves_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path, min_free_space=0)
    partial = store.begin_upload(10)
    os.write(partial.fd, bytes(30))
    assert partial.outstanding() == 0
    store.end_upload(partial)
    assert partial.outstanding() == 10  # its descriptor closed: counted as reserved whole


def test_free_inodes_are_checked_with_two_per_transfer(tmp_path: Path) -> None:
    store = FileStore(tmp_path, min_free_space=0, space_source=Space(1 << 40, MIN_FREE_INODES + 4))
    first = store.begin_upload(1)  # MIN + 4 - 0 >= MIN + 2
    second = store.begin_upload(1)  # MIN + 4 - 2 >= MIN + 2
    with pytest.raises(
        StorageError, match=rf"not enough free inodes on the disk \({MIN_FREE_INODES + 4} free\)"
    ):
        store.begin_upload(1)  # MIN + 4 - 4 < MIN + 2
    for partial in (first, second):
        store.end_upload(partial)
    unlimited = FileStore(tmp_path, min_free_space=0, space_source=Space(1 << 40, None))
    unlimited.end_upload(unlimited.begin_upload(1))  # no inode count: no inode check


def test_an_unreadable_free_space_is_a_storage_error(tmp_path: Path) -> None:
    def broken(path: Path) -> DiskSpace:
        raise OSError(5, "Input/output error")

    with pytest.raises(StorageError, match="cannot read the free disk space: Input/output error"):
        FileStore(tmp_path, space_source=broken).begin_upload(1)


def test_disk_space_reads_statvfs(tmp_path: Path) -> None:
    fs = os.statvfs(tmp_path)
    space = disk_space(tmp_path)
    assert abs(space.free_bytes - fs.f_bavail * fs.f_frsize) < (64 << 20)
    if fs.f_files:
        assert space.free_inodes is not None and abs(space.free_inodes - fs.f_favail) < 1000
    else:
        assert space.free_inodes is None


def test_an_upload_after_shutdown_is_not_placed(store: FileStore) -> None:
    partial = _written(store, b"late")
    path_name = store.path_name(CLIENT, "late.bin")
    store.close()
    with pytest.raises(ShuttingDown, match="shutting down") as caught:
        store.commit_partial(partial, path_name)
    assert caught.value.closes_connection
    store.end_upload(partial)
    assert not (store.data_dir / path_name).exists()


def test_an_ended_upload_is_not_placed(store: FileStore) -> None:
    partial = _written(store, b"x")
    store.end_upload(partial)
    with pytest.raises(ShuttingDown):
        store.commit_partial(partial, store.path_name(CLIENT, "x.bin"))


def test_a_placed_upload_keeps_its_file_when_it_ends(store: FileStore) -> None:
    partial = _written(store, b"kept")
    path_name = store.path_name(CLIENT, "x.bin")
    store.commit_partial(partial, path_name)
    assert partial.placed
    store.end_upload(partial)
    assert (store.data_dir / path_name).read_bytes() == b"kept"
    assert list((store.root / INCOMING_DIR_NAME).iterdir()) == []
    with pytest.raises(OSError):
        os.fstat(partial.fd)  # the descriptor is closed


@pytest.mark.parametrize(
    "path_name",
    [
        f"storage/{CLIENT.hex()}",
        f"storage/{CLIENT.hex()}/",
        f"storage/{CLIENT.hex()}/.",
        f"storage/{CLIENT.hex()}/..",
        f"storage/{CLIENT.hex()}/a\\b",
        f"storage/{CLIENT.hex()}/a\0b",
        f"storage/{CLIENT.hex()}/a/b",
        f"storage/{CLIENT.hex().upper()}/x",
        f"storage/{CLIENT.hex()[:-1]}/x",
        f"other/{CLIENT.hex()}/x",
        f"storage/{INCOMING_DIR_NAME}/x.part",
    ],
)
def test_a_path_name_of_another_shape_is_refused_everywhere(store: FileStore, path_name: str) -> None:
    partial = _written(store, b"x")
    for operation in (store.absolute, store.remove, lambda p: store.commit_partial(partial, p)):
        with pytest.raises(StorageError, match="outside the storage folder's layout"):
            operation(path_name)
    store.end_upload(partial)


def test_remove_goes_through_no_symbolic_link(store: FileStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep")
    (store.root / CLIENT.hex()).symlink_to(outside, target_is_directory=True)
    store.remove(f"storage/{CLIENT.hex()}/victim")
    assert (outside / "victim").read_bytes() == b"keep"
    store.remove(f"storage/{OTHER_CLIENT.hex()}/x")  # no such client folder: nothing to do
    assert not (store.root / OTHER_CLIENT.hex()).exists(), "remove creates no folder"


def test_a_removed_file_leaves_the_other_files_of_its_folder(store: FileStore) -> None:
    first, second = _stored(store, CLIENT, "a"), _stored(store, CLIENT, "b")
    store.remove(first)
    assert not (store.data_dir / first).exists() and (store.data_dir / second).exists()


def test_commit_into_a_client_folder_that_is_a_link_is_refused(store: FileStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / CLIENT.hex()).symlink_to(outside, target_is_directory=True)
    partial = _written(store, b"x")
    with pytest.raises(StorageError, match="cannot use the client's folder"):
        store.commit_partial(partial, store.path_name(CLIENT, "x.bin"))
    store.end_upload(partial)
    assert list(outside.iterdir()) == []


def test_reconcile_skips_what_is_not_a_regular_file_and_refuses_a_linked_client_folder(
    store: FileStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="storage")
    kept = _stored(store, CLIENT, "kept.bin")
    folder = store.root / CLIENT.hex()
    (folder / "subfolder").mkdir()
    os.mkfifo(folder / "fifo")
    (folder / "link").symlink_to(store.data_dir / kept)
    (store.root / "not-a-client").mkdir()
    (store.root / "stray-file").write_bytes(b"s")
    os.mkfifo(store.root / INCOMING_DIR_NAME / "fifo.part")
    (store.root / INCOMING_DIR_NAME / "sub").mkdir()
    assert store.reconcile({kept}) == set()
    for left in ("subfolder", "fifo", "link"):
        assert os.path.lexists(folder / left), left
    assert (store.root / "not-a-client").is_dir() and (store.root / "stray-file").exists()
    assert os.path.lexists(store.root / INCOMING_DIR_NAME / "fifo.part")
    assert (store.root / INCOMING_DIR_NAME / "sub").is_dir()
    assert (store.data_dir / kept).exists()
    # The operator's log says what each skipped entry is.
    for skipped in ("subfolder: a folder", "fifo: not a regular file", "link: a symbolic link"):
        assert f"skipping {STORAGE_DIR_NAME}/{CLIENT.hex()}/{skipped}" in caplog.text, skipped
    assert "skipping fifo.part in " in caplog.text and ": not a regular file" in caplog.text
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / OTHER_CLIENT.hex()).symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeStorage, match="symbolic link"):
        store.reconcile({kept})


def test_reconcile_makes_client_folders_private(store: FileStore) -> None:
    _stored(store, CLIENT, "x")
    folder = store.root / CLIENT.hex()
    folder.chmod(0o755)
    store.reconcile(set())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_make_private_sets_the_mode_and_leaves_a_link_alone(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"")
    target.chmod(0o644)
    make_private(target, 0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    target.chmod(0o644)
    fd = os.open(target, os.O_RDONLY)
    try:
        make_private(target, 0o600, fd)
    finally:
        os.close(fd)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    link = tmp_path / "link"
    link.symlink_to(target)
    target.chmod(0o644)
    make_private(link, 0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    make_private(tmp_path / "missing", 0o600)  # warned, not raised


def test_a_one_character_suffix_is_kept_too() -> None:
    assert safe_base_name("s" * 300 + ".c") == "s" * (MAX_STORED_BASE_NAME - 2) + ".c"


def test_reconcile_skips_a_file_named_like_a_client_folder(store: FileStore) -> None:
    (store.root / CLIENT.hex()).write_bytes(b"not a folder")
    assert store.reconcile(set()) == set()
    assert (store.root / CLIENT.hex()).read_bytes() == b"not a folder"


# --- free space on each platform --------------------------------------------------------


def test_disk_space_counts_no_inodes_on_a_filesystem_without_an_inode_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = SimpleNamespace(f_bavail=10, f_frsize=4096, f_favail=7, f_files=0)  # btrfs reports f_files 0
    monkeypatch.setattr(os, "statvfs", lambda path: fs)
    assert disk_space(tmp_path) == DiskSpace(10 * 4096, None)
    fs.f_files = 100
    assert disk_space(tmp_path) == DiskSpace(10 * 4096, 7)


def test_disk_space_without_statvfs_is_the_free_bytes_of_the_path_and_no_inode_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[object] = []

    def disk_usage(path: object) -> SimpleNamespace:
        asked.append(path)
        return SimpleNamespace(total=1 << 30, used=1 << 20, free=12345)

    monkeypatch.delattr(os, "statvfs")  # as on Windows
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    assert disk_space(tmp_path) == DiskSpace(12345, None)
    assert asked == [tmp_path]


def test_make_private_of_a_descriptor_sets_the_open_file_even_once_its_name_is_gone(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"")
    target.chmod(0o644)
    moved = tmp_path / "moved"
    fd = os.open(target, os.O_RDONLY)
    try:
        target.rename(moved)
        make_private(target, 0o600, fd)
    finally:
        os.close(fd)
    assert stat.S_IMODE(moved.stat().st_mode) == 0o600


# --- the open folders: no path is followed once the store is open ----------------------------


def _swap_storage_for_a_link(store: FileStore, tmp_path: Path) -> tuple[Path, Path]:
    """Move the open storage folder aside and put a link to a decoy folder where it was, as
    someone with write access to the data directory could: (the moved folder, the decoy)."""
    moved = store.data_dir / "storage.moved"
    store.root.rename(moved)
    decoy = tmp_path / "decoy"
    (decoy / INCOMING_DIR_NAME).mkdir(parents=True)
    store.root.symlink_to(decoy, target_is_directory=True)
    return moved, decoy


def test_an_open_store_keeps_to_its_folder_when_storage_is_swapped_for_a_link(
    store: FileStore, tmp_path: Path
) -> None:
    kept = _stored(store, CLIENT, "kept.bin", b"kept")
    orphan = _stored(store, CLIENT, "orphan.bin")
    gone = _stored(store, CLIENT, "gone.bin")
    moved, decoy = _swap_storage_for_a_link(store, tmp_path)
    # The decoy holds files at the same names: none of them may be touched.
    decoys = [decoy / path_name.split("/", 1)[1] for path_name in (kept, orphan, gone)]
    decoys[0].parent.mkdir()
    for path in decoys:
        path.write_bytes(b"decoy")

    store.remove(gone)
    new = _stored(store, OTHER_CLIENT, "new.bin", b"new")
    partial = _written(store, b"half")
    assert list((decoy / INCOMING_DIR_NAME).iterdir()) == [], "the partial is in the opened folder"
    assert store.reconcile({kept, new}) == set()
    store.end_upload(partial)

    def inside(path_name: str) -> Path:
        return moved / path_name.split("/", 1)[1]

    assert inside(kept).read_bytes() == b"kept" and inside(new).read_bytes() == b"new"
    assert not inside(gone).exists() and not inside(orphan).exists()
    assert list((moved / INCOMING_DIR_NAME).iterdir()) == []
    assert [path.read_bytes() for path in decoys] == [b"decoy"] * 3
    assert not (decoy / OTHER_CLIENT.hex()).exists()


def test_a_link_inside_the_open_storage_folder_is_refused_where_its_path_looks_fine(
    store: FileStore, tmp_path: Path
) -> None:
    # The path check (os.path.islink) sees the decoy's real folder; the open folder holds a
    # link there. Opening without following a link (O_NOFOLLOW) is what refuses it.
    moved, decoy = _swap_storage_for_a_link(store, tmp_path)
    (decoy / CLIENT.hex()).mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (moved / CLIENT.hex()).symlink_to(outside, target_is_directory=True)
    partial = _written(store, b"x")
    with pytest.raises(StorageError, match="cannot use the client's folder"):
        store.commit_partial(partial, store.path_name(CLIENT, "x.bin"))
    store.end_upload(partial)
    assert list(outside.iterdir()) == [] and list((decoy / CLIENT.hex()).iterdir()) == []


def test_incoming_is_opened_inside_the_storage_folder_just_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    decoy = tmp_path / "decoy"
    (decoy / INCOMING_DIR_NAME).mkdir(parents=True)
    real_open = storage._Folder.open

    def open_then_swap(path: Path, parent: storage._Folder | None = None, create: bool = False) -> object:
        folder = real_open(path, parent, create)
        if parent is None:  # the storage folder, just opened: swap it for a link before incoming
            path.rename(data_dir / "storage.moved")
            path.symlink_to(decoy, target_is_directory=True)
        return folder

    monkeypatch.setattr(storage._Folder, "open", open_then_swap)
    store = FileStore(data_dir, min_free_space=0)
    partial = _written(store, b"x")
    incoming = data_dir / "storage.moved" / INCOMING_DIR_NAME
    assert [path.name for path in incoming.iterdir()] == [partial.name]
    assert list((decoy / INCOMING_DIR_NAME).iterdir()) == []
    store.end_upload(partial)


@pytest.mark.parametrize("where", [STORAGE_DIR_NAME, f"{STORAGE_DIR_NAME}/{INCOMING_DIR_NAME}"])
@pytest.mark.parametrize("dir_fd", [True, False], ids=["with dir_fd", "without dir_fd"])
def test_a_file_where_a_storage_folder_belongs_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, dir_fd: bool
) -> None:
    monkeypatch.setattr(storage, "USES_DIR_FD", dir_fd)
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).write_bytes(b"not a folder")
    with pytest.raises(UnsafeStorage, match="is not a folder"):
        FileStore(tmp_path)


def test_without_dir_fd_the_store_works_by_full_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the platform has no dir_fd (Windows), every operation goes by the full path.
    monkeypatch.setattr(storage, "USES_DIR_FD", False)
    store = FileStore(tmp_path, min_free_space=0)
    kept = _stored(store, CLIENT, "kept.bin", b"kept")
    orphan = _stored(store, CLIENT, "orphan.bin")
    gone = _stored(store, OTHER_CLIENT, "gone.bin")
    partial = _written(store, b"half")
    assert partial.path.read_bytes() == b"half"
    store.remove(gone)
    assert store.reconcile({kept}) == set()
    store.end_upload(partial)
    assert (tmp_path / kept).read_bytes() == b"kept"
    assert not (tmp_path / orphan).exists() and not (tmp_path / gone).exists()
    assert list((store.root / INCOMING_DIR_NAME).iterdir()) == []
    (store.root / OTHER_CLIENT.hex()).rmdir()
    (store.root / OTHER_CLIENT.hex()).symlink_to(tmp_path, target_is_directory=True)
    partial = store.begin_upload(0)
    with pytest.raises(StorageError, match="cannot use the client's folder"):
        store.commit_partial(partial, store.path_name(OTHER_CLIENT, "x"))
    store.end_upload(partial)


def _lowest_free_descriptor() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


def test_the_store_closes_every_folder_it_opens(store: FileStore) -> None:
    before = _lowest_free_descriptor()  # a descriptor left open would take this number
    for name in ("a", "b"):
        store.remove(_stored(store, CLIENT, name))
    _stored(store, OTHER_CLIENT, "c")
    store.reconcile(set())
    assert _lowest_free_descriptor() == before


def test_a_folder_closes_its_descriptor_once(tmp_path: Path) -> None:
    folder = storage._Folder.open(tmp_path / "folder", create=True)
    fd = folder.fd
    assert fd is not None
    folder.close()
    folder.close()  # twice is fine
    assert folder.fd is None
    with pytest.raises(OSError):
        os.fstat(fd)
