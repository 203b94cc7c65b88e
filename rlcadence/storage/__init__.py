"""Where runs live: a local directory or ``s3://bucket/prefix`` (see :mod:`.location`, :mod:`.s3`)."""

from rlcadence.storage.location import StoreLocation, open_location
from rlcadence.storage.s3 import S3Settings, StoreError, open_s3_location

__all__ = ["S3Settings", "StoreError", "StoreLocation", "open_location", "open_s3_location"]
