"""The `.wl` folder sink: DICOM Part-10 worklist files for wlmscpfs and Orthanc.

Files are written atomically (temporary file, fsync, rename, fsync of the folder) under a
write lock on the folder's ``lockfile``, the lock wlmscpfs read-locks while it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from bridge.dicomfile import file_name, is_item_file_name, part10_bytes, safe_folder_name
from bridge.store import StoredItem

LOCKFILE = "lockfile"


class FolderSink:
    name = "folder"

    def __init__(self, root: Path, layout: str = "flat", lockfile: bool = True):
        self.root = root
        self.layout = layout
        self.lockfile = lockfile
        root.mkdir(parents=True, exist_ok=True)
        if layout == "flat":
            self._prepare(root)
        # A write cut short by a crash leaves its temporary file (never a partial .wl).
        for stale in root.glob("**/.*.wl.tmp"):
            stale.unlink(missing_ok=True)

    def _prepare(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.lockfile:
            (folder / LOCKFILE).touch(exist_ok=True)

    def folder_for(self, item: StoredItem) -> Path:
        if self.layout == "flat":
            return self.root
        steps = item.dataset.get("ScheduledProcedureStepSequence") or [{}]
        station = str(steps[0].get("ScheduledStationAETitle", "")) if steps else ""
        return self.root / safe_folder_name(station)

    def path_for(self, item: StoredItem) -> Path:
        path = self.folder_for(item) / file_name(item.item_key)
        # file_name() admits no separator; this guards the invariant all the same.
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise ValueError(f"refusing to write outside {self.root}: {path}")
        return path

    async def put(self, item: StoredItem) -> None:
        await asyncio.to_thread(self._put, item)

    async def remove(self, item: StoredItem) -> None:
        await asyncio.to_thread(self._remove_everywhere, item.item_key, None)

    def _put(self, item: StoredItem) -> None:
        data = part10_bytes(item.dataset, item.item_key)
        target = self.path_for(item)
        self._prepare(target.parent)
        with self._locked(target.parent):
            tmp = target.with_name(f".{target.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        if self.layout != "flat":
            # The station may have changed: the item must not stay in its old folder.
            self._remove_everywhere(item.item_key, keep=target.parent)

    def _remove_everywhere(self, item_key: str, keep: Path | None) -> None:
        name = file_name(item_key)
        # A linked folder may lead out of root: never delete through one.
        folders = [self.root] if self.layout == "flat" else \
            [p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink()]
        for folder in folders:
            if keep is not None and folder == keep:
                continue
            path = folder / name
            if path.exists():
                with self._locked(folder):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    _fsync_dir(folder)

    def remove_strays(self, item_keys: set[str]) -> list[Path]:
        """Delete the .wl files named as this bridge names them (dicomfile.file_name) that
        belong to none of `item_keys` (resync); other programs' files stay."""
        names = {file_name(k) for k in item_keys}
        folders = [self.root] if self.layout == "flat" else \
            [p for p in self.root.iterdir() if p.is_dir()]
        removed = []
        for folder in folders:
            strays = [p for p in folder.glob("*.wl")
                      if is_item_file_name(p.name) and p.name not in names]
            if not strays:
                continue
            with self._locked(folder):
                for path in strays:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    removed.append(path)
                _fsync_dir(folder)
        return removed

    @contextlib.contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        if not self.lockfile:
            yield
            return
        fd = os.open(folder / LOCKFILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
            os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
