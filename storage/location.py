"""Where a store lives: a local directory or an ``s3://bucket/prefix`` URI, behind one pyarrow filesystem.

Everything in ``storage/`` goes through :class:`StoreLocation`, so local and object storage share one code
path: Parquet through ``pyarrow.fs``, whole directories (checkpoints) through ``put_dir``/``get_dir``.
Writes are atomic: locally a temp name then ``rename``; on S3 an object is visible only once its PUT
completes, so the final key is written directly.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from rlcadence import faults

TMP_PREFIX = "."  # pyarrow datasets and `*.parquet` globs both ignore dot-files


@dataclass(frozen=True)
class StoreLocation:
    """A filesystem plus the root path inside it (no scheme)."""

    uri: str
    fs: pafs.FileSystem
    root: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri_of(self, *parts: str) -> str:
        """A URI that DuckDB and humans understand (``/abs/path`` or ``s3://bucket/key``)."""
        p = self.path(*parts)
        return p if self.is_local else f"s3://{p}"

    # -- reads -------------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def list_files(self, *parts: str, suffix: str = "") -> list[str]:
        """Paths (relative to the root) of complete files below ``parts``; temp files are skipped."""
        base = self.path(*parts)
        info = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        out = []
        for i in info:
            if i.type != pafs.FileType.File or i.base_name.startswith(TMP_PREFIX):
                continue
            if i.path.endswith(suffix):
                out.append(posixpath.relpath(i.path, self.root))
        return sorted(out)

    def list_dirs(self, *parts: str) -> list[str]:
        base = self.path(*parts)
        info = self.fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
        return sorted(i.base_name for i in info if i.type == pafs.FileType.Directory)

    # -- writes ------------------------------------------------------------------------------
    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write a whole file atomically; readers see the old state or the complete new file."""
        final = self.path(*parts)
        if not self.is_local:  # no create_dir: on S3 it costs a HEAD and a marker PUT per level
            with self.fs.open_output_stream(final) as f:
                f.write(data)
            return final
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        tmp = posixpath.join(posixpath.dirname(final), f"{TMP_PREFIX}{posixpath.basename(final)}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return final

    def delete_dir(self, *parts: str) -> None:
        p = self.path(*parts)
        if self.fs.get_file_info(p).type == pafs.FileType.Directory:
            with contextlib.suppress(FileNotFoundError):  # S3: an earlier attempt deleted them after the listing
                self.fs.delete_dir(p)

    def delete_file(self, *parts: str) -> None:
        p = self.path(*parts)
        if self.fs.get_file_info(p).type == pafs.FileType.File:
            self.fs.delete_file(p)

    def delete_files(self, paths: list[str]) -> None:
        """Delete files by path relative to the root (missing ones are fine); S3 batches the requests."""
        for rel in paths:
            if self.is_local:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path(rel))
            else:
                self.delete_file(rel)

    def move_file(self, src: tuple[str, ...], dst: tuple[str, ...], after_copy=None) -> str:
        """Give file ``src`` the name ``dst`` (replacing it): locally one ``rename``; on S3 a server-side
        copy (visible whole, at once) and then a delete of ``src``. A retry after a kill finds ``src``
        gone and ``dst`` there, and does nothing. ``after_copy``: a fail point between copy and delete."""
        s, d = self.path(*src), self.path(*dst)
        if self.fs.get_file_info(s).type == pafs.FileType.NotFound and self.exists(*dst):
            return d
        if self.is_local:
            os.replace(s, d)
            return d
        self.fs.copy_file(s, d)
        if after_copy is not None:
            after_copy()
        self.fs.delete_file(s)
        return d

    def sweep_temp_files(self, *parts: str) -> int:
        """Remove temp files a crashed writer left (they were never visible); returns how many."""
        base = self.path(*parts)
        info = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        n = 0
        for i in info:
            if i.type == pafs.FileType.File and i.base_name.startswith(TMP_PREFIX) and i.base_name.endswith(".tmp"):
                self.fs.delete_file(i.path)
                n += 1
        return n

    def sweep_temp_dirs(self, *parts: str, of: str | None = None) -> int:
        """Remove temp directories a killed ``put_dir`` left directly below ``parts`` (``of``: only those
        of the directory named so, ``.<of>.<uuid hex>.tmp``); returns how many."""
        import re

        pattern = re.compile(rf"\.{re.escape(of)}\.[0-9a-f]{{32}}\.tmp" if of else r"\..*\.tmp")
        n = 0
        for name in self.list_dirs(*parts):
            if pattern.fullmatch(name):
                self.fs.delete_dir(self.path(*parts, name))
                n += 1
        return n

    def sweep_incomplete_dirs(self, *parts: str, only: str | None = None) -> int:
        """Remove directories below ``parts`` that a killed ``put_dir`` left without their ``_COMPLETE``
        marker (``only``: just that one). Locally a directory is published by one rename, so none exist."""
        return 0

    def abort_uploads(self, prefix: str, exact: bool = False) -> int:
        """Abort unfinished multipart uploads under ``prefix``; a local store has none."""
        return 0

    # -- whole directories (checkpoints, models) ----------------------------------------------
    def put_dir(self, local_dir: Path, *parts: str) -> str:
        """Publish a local directory under ``parts`` atomically: it appears complete or not at all.

        Locally: copy to a temp sibling, then one ``rename``. On S3: upload every file, then write a
        ``_COMPLETE`` marker last; readers (``dir_complete``) only trust directories with the marker.
        """
        final = self.path(*parts)
        files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
        if self.is_local:
            parent = posixpath.dirname(final)
            os.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, f"{TMP_PREFIX}{posixpath.basename(final)}.{uuid.uuid4().hex}.tmp")
            os.makedirs(tmp)
            for i, src in enumerate(files):
                dst = Path(tmp) / src.relative_to(local_dir)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(src.read_bytes())
                faults.maybe_crash_in_dir(parts, i + 1, len(files))
            (Path(tmp) / "_COMPLETE").write_text("ok")
            if os.path.exists(final):
                import shutil

                shutil.rmtree(final)
            os.replace(tmp, final)
            return final
        for i, src in enumerate(files):
            with self.fs.open_output_stream(posixpath.join(final, src.relative_to(local_dir).as_posix())) as f:
                f.write(src.read_bytes())
            faults.maybe_crash_in_dir(parts, i + 1, len(files))
        with self.fs.open_output_stream(posixpath.join(final, "_COMPLETE")) as f:
            f.write(b"ok")
        return final

    def dir_complete(self, *parts: str) -> bool:
        return self.exists(*parts, "_COMPLETE")

    def get_dir(self, local_dir: Path, *parts: str) -> Path:
        """Copy a published directory to ``local_dir`` (a no-op path return when the store is local)."""
        if self.is_local:
            return Path(self.path(*parts))
        local_dir = Path(local_dir)
        for rel in self.list_files(*parts):
            sub = posixpath.relpath(rel, posixpath.join(*parts))
            dst = local_dir / sub
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(self.read_bytes(rel))
        return local_dir

    def walk_files(self, *parts: str) -> Iterator[str]:
        yield from self.list_files(*parts)


def open_local_location(uri: str) -> StoreLocation:
    root = str(Path(uri).expanduser().resolve())
    os.makedirs(root, exist_ok=True)
    return StoreLocation(uri=root, fs=pafs.LocalFileSystem(), root=root)
