"""Prefect task results kept inside the store, so a resume on any machine finds them.

Prefect 3 wants result storage saved server-side; the block is named after the store, so every
process (and a worker on another machine) pointing at the same store shares it. A local store uses
Prefect's ``LocalFileSystem``; an S3 store uses :class:`StoreResults`, which writes through the
store's own S3 client (same endpoint, credential chain and retries as the rollouts) and so needs no
``prefect-aws`` or ``s3fs``. The block holds settings only: keys are resolved where it runs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import anyio
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import LocalFileSystem, WritableFileSystem
from pydantic import Field, PrivateAttr

from rlcadence.storage.location import StoreLocation
from rlcadence.storage.s3 import S3Settings
from rlcadence.storage.stores import open_location

RESULTS_DIR = "prefect-results"


class StoreResults(WritableFileSystem):
    """Prefect results as objects under ``<store>/prefect-results/`` of an rlcadence S3 store.

    A result is one PUT, visible only once complete, so a crash mid-write leaves no half result that a
    retried run would load; a missing key raises, which Prefect reads as "not cached".
    """

    _block_type_name = "rlcadence store results"
    _description = "Prefect result storage inside an rlcadence S3 store (settings only, no secrets)."

    store: str = Field(description="s3://bucket/prefix of the rlcadence store.")
    s3: dict[str, Any] = Field(default_factory=dict, description="S3Settings fields (endpoint, region, ...).")
    _location: StoreLocation | None = PrivateAttr(default=None)

    def _loc(self) -> StoreLocation:
        if self._location is None:
            self._location = open_location(self.store, S3Settings(**self.s3))
        return self._location

    def _read(self, path: str) -> bytes:
        return self._loc().read_bytes(RESULTS_DIR, path)

    def _write(self, path: str, content: bytes) -> str:
        return self._loc().write_bytes(content, RESULTS_DIR, path)

    async def aread_path(self, path: str) -> bytes:
        return await anyio.to_thread.run_sync(self._read, path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return self._read(path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return await anyio.to_thread.run_sync(self._write, path, content)

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        return self._write(path, content)


def result_storage_for(store: str, s3: S3Settings | None = None) -> WritableFileSystem:
    loc = open_location(store, s3)  # fails here, naming endpoint and bucket, when the store is unusable
    name = "rlcadence-results-" + hashlib.sha256(loc.uri.encode()).hexdigest()[:12]
    if loc.is_local:
        block: WritableFileSystem = LocalFileSystem(basepath=loc.path(RESULTS_DIR))
    else:
        settings = s3 or S3Settings()
        block = StoreResults(store=loc.uri, s3=settings.model_dump(exclude_defaults=False))
    block.save(name, overwrite=True)
    return block
