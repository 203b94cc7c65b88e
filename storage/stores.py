"""Which backend a store URI names: ``s3://bucket/prefix`` is S3, anything else a local directory.

The one place that knows both backends, so ``location.py`` (the interface and local disk) and ``s3.py``
(object storage) need not import each other.
"""

from __future__ import annotations

from rlcadence.storage.location import StoreLocation, open_local_location
from rlcadence.storage.s3 import S3Settings, open_s3_location


def open_location(uri: str, s3: S3Settings | None = None) -> StoreLocation:
    """Open ``uri`` (a local path or ``s3://bucket/prefix``); ``s3`` (endpoint, region, profile, credentials
    block; never keys) defaults to the AWS environment, see :class:`rlcadence.storage.s3.S3Settings`."""
    if uri.startswith("s3://"):
        return open_s3_location(uri, s3)
    return open_local_location(uri)
