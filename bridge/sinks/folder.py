"""The `.wl` folder sink: DICOM Part-10 worklist files for wlmscpfs and Orthanc.

Files are written atomically (temporary file, fsync, rename, fsync of the folder) under a
write lock on the folder's ``lockfile``, the lock wlmscpfs read-locks while it reads.

A running bridge writes through a separate process: encoding a Part-10 file with pydicom
costs over a millisecond of CPU per item, and in the bridge's own process it would hold the
GIL against the listener (measured: ACK latency doubled). The process also puts that work on
the machine's other core.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from bridge.dicomfile import file_name, is_item_file_name, part10_bytes, safe_folder_name
from bridge.sinks.worker import Worker
from bridge.store import StoredItem

LOCKFILE = "lockfile"


class FolderSink:
    name = "folder"
    # Each instance keeps its own folder (for the wlmscpfs or Orthanc next to it): on a
    # shared database its outbox is named folder@<instance>.
    shared = False
    # The outbox hands this sink items with their datasets as stored JSON text
    # (StoredItem.dataset_json): the writer process decodes them, so the bridge's process
    # neither decodes nor pickles the dicts (issue 13: CPU per order under the GIL).
    takes_json = True

    def __init__(self, root: Path, layout: str = "flat", lockfile: bool = True,
                 writer_process: bool = True, _clean: bool = True):
        self.root = root
        self.layout = layout
        self.lockfile = lockfile
        self.writer_process = writer_process
        self._worker = Worker(self.name)
        root.mkdir(parents=True, exist_ok=True)
        if layout == "flat":
            self._prepare(root)
        # A write cut short by a crash leaves its temporary file (never a partial .wl).
        for stale in root.glob("**/.*.wl.tmp") if _clean else ():
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
        await self._run(_put_in_writer, item)

    async def put_many(self, items: list[StoredItem]) -> None:
        """Several files in one hand-over to the writer process: one at a time, a burst's
        files waited on a round trip each (measured: 10,000 orders left the folder 19 s
        behind the last ACK). Each file is still written atomically; returns once every
        rename is durable."""
        await self._run(_put_many_in_writer, items)

    async def remove(self, item: StoredItem) -> None:
        await self._run(_remove_in_writer, item)

    async def _run(self, job, item) -> None:
        if not self.writer_process:
            await asyncio.get_running_loop().run_in_executor(None, job, self._settings, item)
            return
        await self._worker.run(job, self._settings, item)

    @property
    def _settings(self) -> tuple[str, str, bool]:
        return (str(self.root), self.layout, self.lockfile)

    async def aclose(self) -> None:
        await self._worker.close()

    def _put(self, item: StoredItem) -> None:
        self._put_many([item])

    def _put_many(self, items: list[StoredItem]) -> None:
        # Grouped by folder: one lock and one fsync of the folder for its files.
        by_folder: dict[Path, list[tuple[Path, bytes]]] = {}
        items = [item.decoded() for item in items]
        for item in items:
            target = self.path_for(item)
            by_folder.setdefault(target.parent, []).append(
                (target, part10_bytes(item.dataset, item.item_key)))
        for folder, files in by_folder.items():
            self._prepare(folder)
            with self._locked(folder):
                for target, data in files:
                    tmp = target.with_name(f".{target.name}.tmp")
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    try:
                        os.write(fd, data)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    os.replace(tmp, target)
                _fsync_dir(folder)
        if self.layout != "flat":
            # The station may have changed: the item must not stay in its old folder.
            for item in items:
                self._remove_everywhere(item.item_key, keep=self.folder_for(item))

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


# The writer process keeps one sink per folder setting; it never cleans stale temporary
# files (the bridge's own sink did at start, and a write may be under way).
_writers: dict[tuple[str, str, bool], FolderSink] = {}


def _writer(settings: tuple[str, str, bool]) -> FolderSink:
    sink = _writers.get(settings)
    if sink is None:
        root, layout, lockfile = settings
        sink = _writers[settings] = FolderSink(Path(root), layout, lockfile,
                                               writer_process=False, _clean=False)
    return sink


def _put_in_writer(settings: tuple[str, str, bool], item: StoredItem) -> None:
    _writer(settings)._put(item)


def _put_many_in_writer(settings: tuple[str, str, bool], items: list[StoredItem]) -> None:
    _writer(settings)._put_many(items)


def _remove_in_writer(settings: tuple[str, str, bool], item: StoredItem) -> None:
    _writer(settings)._remove_everywhere(item.item_key, None)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
