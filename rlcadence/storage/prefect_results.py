"""Prefect task results kept inside the store, so a resume on any machine finds them.

Prefect 3 wants result storage saved server-side; the block is named after the store, so every
process (and a worker on another machine) pointing at the same store shares it.
"""

from __future__ import annotations

import hashlib

from prefect.filesystems import LocalFileSystem, WritableFileSystem

from rlcadence.storage.location import open_location


def result_storage_for(store: str) -> WritableFileSystem:
    loc = open_location(store)
    name = "rlcadence-results-" + hashlib.sha256(loc.uri.encode()).hexdigest()[:12]
    if loc.is_local:
        block: WritableFileSystem = LocalFileSystem(basepath=loc.path("prefect-results"))
    else:
        from rlcadence.storage.s3 import prefect_result_storage

        block = prefect_result_storage(loc)
    block.save(name, overwrite=True)
    return block
