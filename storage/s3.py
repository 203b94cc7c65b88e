"""A store on S3 (AWS or any S3-compatible server: SeaweedFS, MinIO, Ceph), and DuckDB pointed at it.

Usage::

    from rlcadence.storage.stores import open_location
    from rlcadence.storage.query import connect

    loc = open_location("s3://my-bucket/rlcadence")          # settings from AWS_* env / ~/.aws
    con = connect(loc)                                       # DuckDB views rollouts, metrics, runs
    con.sql("SELECT step, avg(reward) FROM rollouts WHERE run_id = 'r1' GROUP BY step").show()

Endpoint and region come from :class:`S3Settings` (default: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``AWS_REGION`` / ``AWS_DEFAULT_REGION``). Keys are never part of the settings: they are resolved at open
time through boto3's credential chain (env, profile, SSO, instance role) or a Prefect ``AwsCredentials``
block, handed to pyarrow and DuckDB, and kept out of every message, repr, log line and pickle.

The bucket is checked when the store is opened, so a wrong endpoint, wrong credentials or a missing
bucket fail at once with a :class:`StoreError` that says which, instead of minutes later inside a flow.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rlcadence.storage.location import StoreLocation

if TYPE_CHECKING:
    import boto3
    import duckdb

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreError(OSError):
    """A store cannot be opened or written; the message says why and never contains a secret."""


def _env(*names: str) -> str | None:
    import os

    return next((os.environ[n] for n in names if os.environ.get(n)), None)


class S3Settings(BaseModel):
    """How to reach an S3 store. Contains no secrets: keys come from the AWS credential chain."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)  # env values too

    endpoint_url: str | None = Field(
        default_factory=lambda: _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        description="S3 endpoint, e.g. http://127.0.0.1:8333; None means AWS itself.",
    )
    region: str = Field(
        default_factory=lambda: _env("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
        description="Region used for request signing.",
    )
    profile: str | None = Field(
        default=None, description="AWS profile for the boto3 session (AWS_PROFILE works too)."
    )
    credentials_block: str | None = Field(
        default=None,
        description="Name of a saved Prefect AwsCredentials block to take keys from (needs prefect-aws).",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="Attempts per S3 request (pyarrow and boto3)."
    )
    write_attempts: int = Field(
        default=4,
        ge=1,
        le=20,
        description="Attempts per whole-object write (write_bytes, put_dir) on transient errors.",
    )
    backoff_seconds: float = Field(
        default=0.5, gt=0, description="Wait before the 2nd write attempt; doubles after."
    )
    backoff_max_seconds: float = Field(
        default=8.0, gt=0, description="Cap on the wait between write attempts."
    )
    connect_timeout_seconds: float = Field(default=2.0, gt=0, description="TCP connect timeout per request.")
    request_timeout_seconds: float = Field(default=30.0, gt=0, description="Read timeout per request.")

    @field_validator("endpoint_url")
    @classmethod
    def _has_scheme(cls, v: str | None) -> str | None:
        if v is not None and urlparse(v).scheme not in ("http", "https"):
            raise ValueError(f"endpoint_url must start with http:// or https://, got {v!r}")
        return v.rstrip("/") if v else v

    @property
    def endpoint_label(self) -> str:
        """How messages name the endpoint."""
        return self.endpoint_url or f"AWS S3 ({self.region})"


@dataclass(frozen=True)
class _Credentials:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)

    def redact(self, text: str) -> str:
        for s in (self.secret_key, self.token):
            if s:
                text = text.replace(s, "***")
        return text


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    p = urlparse(uri)
    if p.scheme != "s3" or not p.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] URI: {uri!r}")
    return p.netloc, p.path.strip("/")


# -- credentials ------------------------------------------------------------------------------------
def _boto3_session(settings: S3Settings) -> boto3.Session:
    import boto3
    import botocore.exceptions

    if settings.credentials_block:
        try:
            from prefect_aws import AwsCredentials  # optional dependency
        except ImportError:
            raise StoreError(
                f"S3Settings.credentials_block={settings.credentials_block!r} needs the prefect-aws package "
                "(pip install prefect-aws); or drop it and use AWS_* env vars / a profile"
            ) from None
        try:
            return AwsCredentials.load(settings.credentials_block).get_boto3_session()
        except Exception as e:  # a missing block, a server error: say which block, never its contents
            raise StoreError(
                f"cannot load Prefect AwsCredentials block {settings.credentials_block!r}: {type(e).__name__}"
            ) from None
    try:
        return boto3.Session(profile_name=settings.profile, region_name=settings.region)
    except botocore.exceptions.ProfileNotFound:
        raise StoreError(f"AWS profile {settings.profile!r} not found") from None


def resolve_credentials(settings: S3Settings) -> _Credentials:
    """Keys from boto3's chain (or the Prefect block), resolved now; raises StoreError if there are none."""
    creds = _boto3_session(settings).get_credentials()
    if creds is None:
        raise StoreError(
            f"no AWS credentials found for {settings.endpoint_label}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or S3Settings.credentials_block"
        )
    frozen = creds.get_frozen_credentials()
    return _Credentials(frozen.access_key, frozen.secret_key, frozen.token)


def boto3_client(settings: S3Settings, creds: _Credentials, max_attempts: int):
    """A boto3 S3 client for control calls (bucket check, upload cleanup), with short timeouts."""
    import boto3
    import botocore.config

    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        aws_session_token=creds.token,
        config=botocore.config.Config(
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=max(settings.connect_timeout_seconds, 5.0),
            retries={"max_attempts": max_attempts, "mode": "standard"},
            s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
        ),
    )


# -- the up-front bucket check ----------------------------------------------------------------------
def check_bucket(settings: S3Settings, creds: _Credentials, bucket: str) -> None:
    """HEAD the bucket with a short timeout; raise StoreError naming endpoint, bucket and the cause."""
    import botocore.exceptions as bex

    client = boto3_client(settings, creds, max_attempts=min(settings.max_attempts, 2))
    where = f"bucket {bucket!r} at endpoint {settings.endpoint_label}"
    try:
        client.head_bucket(Bucket=bucket)
    except bex.ClientError as e:
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (401, 403):
            raise StoreError(
                f"wrong credentials for {where}: access denied ({_denial_code(client, bucket)}); "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the bucket policy"
            ) from None
        if status == 404:
            raise StoreError(f"missing bucket: {where} does not exist (create it first)") from None
        if status == 301:
            raise StoreError(f"wrong region for {where}: the bucket lives in another region") from None
        raise StoreError(
            f"cannot open {where}: HTTP {status} {e.response.get('Error', {}).get('Code')}"
        ) from None
    except (
        bex.EndpointConnectionError,
        bex.ConnectTimeoutError,
        bex.ReadTimeoutError,
        bex.ConnectionClosedError,
    ):
        raise StoreError(
            f"wrong endpoint: cannot reach {settings.endpoint_label} for bucket {bucket!r} "
            "(nothing answers there; check AWS_ENDPOINT_URL or that the server is up)"
        ) from None
    except bex.BotoCoreError as e:
        raise StoreError(f"cannot open {where}: {creds.redact(str(e))}") from None


def _denial_code(client, bucket: str) -> str:
    """HEAD responses have no body; one GET tells an unknown key from a bad secret from a missing grant."""
    import botocore.exceptions as bex

    try:
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except bex.ClientError as e:
        return str(e.response.get("Error", {}).get("Code", "AccessDenied"))
    except bex.BotoCoreError:
        pass
    return "AccessDenied"


# -- the store --------------------------------------------------------------------------------------
_PERMANENT = (
    "ACCESS_DENIED",
    "AccessDenied",
    "INVALID_ACCESS_KEY_ID",
    "InvalidAccessKeyId",
    "SIGNATURE_DOES_NOT_MATCH",
    "SignatureDoesNotMatch",
    "NO_SUCH_BUCKET",
    "NoSuchBucket",
    "HTTP status 400",
    "HTTP status 403",
    "HTTP status 404",
)


def is_transient(err: BaseException) -> bool:
    """Worth retrying: connection refused/reset, timeouts, 5xx, throttling; not auth or a missing bucket."""
    return (
        isinstance(err, OSError)
        and not isinstance(err, (StoreError, FileNotFoundError))
        and not any(p in str(err) for p in _PERMANENT)
    )


@dataclass(frozen=True)
class S3StoreLocation(StoreLocation):
    """A StoreLocation on S3 whose whole-object writes retry with exponential backoff.

    Every S3 object appears only once its upload completed (single PUT, or a multipart upload that is
    completed last), and keys are deterministic, so a retried write replaces rather than duplicates and
    a failed one leaves nothing visible. Pickles as (uri, settings): keys are re-resolved on load.
    """

    settings: S3Settings = field(default_factory=S3Settings)
    _credentials: _Credentials | None = field(default=None, repr=False, compare=False)
    _clients: dict = field(default_factory=dict, repr=False, compare=False)  # one boto3 client, made on first use

    @property
    def bucket(self) -> str:
        return self.root.split("/", 1)[0]

    @property
    def credentials(self) -> _Credentials:
        return self._credentials or resolve_credentials(self.settings)

    def write_bytes(self, data: bytes, *parts: str) -> str:
        key = self.path(*parts)
        return self._retrying(
            f"write {self.uri_of(*parts)}",
            lambda: StoreLocation.write_bytes(self, data, *parts),
            cleanup=lambda: self.abort_uploads(key, exact=True),
        )

    def read_bytes(self, *parts: str) -> bytes:
        # a server restarting answers INTERNAL_FAILURE for a moment: reads retry like writes
        return self._retrying(f"read {self.uri_of(*parts)}", lambda: StoreLocation.read_bytes(self, *parts))

    def put_dir(self, local_dir: Path, *parts: str) -> str:
        # Drop an old marker first: a directory being replaced must not look complete half-way through.
        self._retrying(f"unmark {self.uri_of(*parts)}", lambda: self.delete_file(*parts, "_COMPLETE"))
        return self._retrying(
            f"put_dir {self.uri_of(*parts)}",
            lambda: StoreLocation.put_dir(self, local_dir, *parts),
            cleanup=lambda: self.abort_uploads(self.path(*parts) + "/"),
        )

    def delete_files(self, paths: list[str]) -> None:
        """DeleteObjects, 1000 keys a request (a compaction removes hundreds of step files at once)."""
        keys = [self.path(p).split("/", 1)[1] for p in paths]
        if "delete" not in self._clients:  # making a client costs ~0.1 s: not once per compaction
            self._clients["delete"] = boto3_client(self.settings, self.credentials, max_attempts=self.settings.max_attempts)
        client = self._clients["delete"]
        for i in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
            out = self._retrying(f"delete {len(batch['Objects'])} objects under {self.uri}",
                                 lambda batch=batch: _delete_objects(client, self.bucket, batch))
            if out.get("Errors"):
                e = out["Errors"][0]
                raise StoreError(f"delete s3://{self.bucket}/{e.get('Key')} failed: {e.get('Code')} {e.get('Message')}")

    def move_file(self, src: tuple[str, ...], dst: tuple[str, ...], after_copy=None) -> str:
        return self._retrying(f"move {self.uri_of(*src)} to {self.uri_of(*dst)}",
                              lambda: StoreLocation.move_file(self, src, dst, after_copy))

    def sweep_incomplete_dirs(self, *parts: str, only: str | None = None) -> int:
        """Delete directories below ``parts`` without a ``_COMPLETE`` marker: a killed ``put_dir`` uploaded
        some of their files, and readers never trust them. Only safe while no one writes the run."""
        n = 0
        for name in self.list_dirs(*parts):
            if (only is None or name == only) and not self.dir_complete(*parts, name):
                self._retrying(f"sweep {self.uri_of(*parts, name)}", lambda name=name: self.delete_dir(*parts, name))
                n += 1
        return n

    def abort_uploads(self, prefix: str, exact: bool = False) -> int:
        """Abort unfinished multipart uploads under ``bucket/prefix`` (or of exactly that key); best effort.

        A failed large upload is never visible, but its parts stay on the server (billed on AWS) until
        aborted. Keys here are deterministic, so the only other writer of the same key would be a
        duplicate of the same write, which then fails and retries. Returns how many were aborted.
        """
        bucket, _, key = prefix.partition("/")
        n = 0
        try:
            client = boto3_client(self.settings, self.credentials, max_attempts=1)
            for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=key):
                for u in page.get("Uploads", []):
                    if not exact or u["Key"] == key:
                        client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
                        n += 1
        except Exception as e:  # the server may still be down; a later attempt cleans up
            log.debug("could not abort uploads under s3://%s: %s", prefix, type(e).__name__)
        if n:
            log.info("aborted %d unfinished multipart upload(s) under s3://%s", n, prefix)
        return n

    def _retrying(self, what: str, fn: Callable[[], T], cleanup: Callable[[], object] | None = None) -> T:
        """Run ``fn`` up to ``write_attempts`` times with exponential backoff on transient errors.

        ``cleanup`` runs after each failed attempt, and once more after a success that followed failures
        (the server may have been unreachable when the failed attempts tried to clean up).
        """
        s, start = self.settings, time.monotonic()
        for attempt in range(1, s.write_attempts + 1):
            try:
                out = fn()
            except OSError as e:
                if cleanup:
                    cleanup()
                msg = self.credentials.redact(str(e))
                if not is_transient(e) or attempt == s.write_attempts:
                    raise StoreError(
                        f"{what} failed after {attempt} attempt(s) in {time.monotonic() - start:.1f}s "
                        f"(endpoint {s.endpoint_label}, bucket {self.bucket!r}): {msg}"
                    ) from None
                wait = min(s.backoff_seconds * 2 ** (attempt - 1), s.backoff_max_seconds)
                log.warning(
                    "%s: attempt %d/%d failed, retrying in %.1fs: %s",
                    what,
                    attempt,
                    s.write_attempts,
                    wait,
                    msg,
                )
                time.sleep(wait)
            else:
                if cleanup and attempt > 1:
                    cleanup()
                return out
        raise AssertionError("unreachable")

    def __reduce__(self):
        return (_reopen, (self.uri, self.settings))


def _delete_objects(client, bucket: str, batch: dict) -> dict:
    import botocore.exceptions

    try:
        return client.delete_objects(Bucket=bucket, Delete=batch)
    except botocore.exceptions.BotoCoreError as e:  # connection errors: OSError-like, so _retrying retries
        raise OSError(str(e)) from None
    except botocore.exceptions.ClientError as e:
        raise OSError(str(e)) from None


def _reopen(uri: str, settings: S3Settings) -> S3StoreLocation:
    return open_s3_location(uri, settings, check=False)


def _s3_filesystem(settings: S3Settings, creds: _Credentials) -> pafs.S3FileSystem:
    endpoint = urlparse(settings.endpoint_url) if settings.endpoint_url else None
    return pafs.S3FileSystem(
        access_key=creds.access_key,
        secret_key=creds.secret_key,
        session_token=creds.token,
        region=settings.region,
        endpoint_override=endpoint.netloc if endpoint else None,
        scheme=endpoint.scheme if endpoint else "https",
        connect_timeout=settings.connect_timeout_seconds,
        request_timeout=settings.request_timeout_seconds,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=settings.max_attempts),
        allow_delayed_open=True,  # small objects go up as one PUT on close, not a 3-request multipart upload
    )


def open_s3_location(uri: str, settings: S3Settings | None = None, *, check: bool = True) -> S3StoreLocation:
    """Open ``s3://bucket/prefix``; with ``check`` the bucket is verified now (StoreError if unusable)."""
    settings = settings or S3Settings()
    bucket, prefix = split_s3_uri(uri)
    creds = resolve_credentials(settings)
    if check:
        check_bucket(settings, creds, bucket)
    root = posixpath.join(bucket, prefix) if prefix else bucket
    log.info("opened store s3://%s at %s (region %s)", root, settings.endpoint_label, settings.region)
    return S3StoreLocation(
        uri=f"s3://{root}",
        fs=_s3_filesystem(settings, creds),
        root=root,
        settings=settings,
        _credentials=creds,
    )


# -- DuckDB -----------------------------------------------------------------------------------------
def httpfs_extension_path() -> Path | None:
    """The httpfs extension shipped by the duckdb-extension-httpfs wheel for this DuckDB, if installed."""
    import importlib.util

    import duckdb

    spec = importlib.util.find_spec("duckdb_extension_httpfs")
    if spec is None or not spec.submodule_search_locations:
        return None
    version = duckdb.__version__.split("-")[0].split("+")[0]
    for base in spec.submodule_search_locations:
        p = Path(base) / "extensions" / f"v{version}" / "httpfs.duckdb_extension"
        if p.is_file():
            return p
    return None


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def configure_duckdb(con: duckdb.DuckDBPyConnection, loc: StoreLocation) -> None:
    """Let ``con`` read ``s3://`` paths of ``loc``'s bucket with the store's endpoint and credentials.

    Loads httpfs offline from the wheel and creates a temporary, bucket-scoped DuckDB secret. Without
    the wheel, routes ``s3://`` through pyarrow (an fsspec wrapper of ``loc.fs``): slower, same SQL.
    """
    import duckdb

    settings = loc.settings if isinstance(loc, S3StoreLocation) else S3Settings()
    creds = loc.credentials if isinstance(loc, S3StoreLocation) else resolve_credentials(settings)
    bucket = loc.root.split("/", 1)[0]
    ext = httpfs_extension_path()
    try:
        if ext is None:
            _register_pyarrow_fs(con, loc)
            return
        con.execute(f"LOAD {_sql_str(str(ext))}")
        con.execute(f"SET http_retries = {settings.max_attempts}")
        con.execute(_secret_sql(settings, creds, bucket))
    except duckdb.Error as e:
        # `from None`: DuckDB may echo the statement, and the statement holds the secret.
        raise StoreError(
            f"cannot configure DuckDB for bucket {bucket!r} at endpoint {settings.endpoint_label}: "
            f"{creds.redact(str(e))}"
        ) from None


def _secret_sql(settings: S3Settings, creds: _Credentials, bucket: str) -> str:
    opts = {
        "TYPE": "s3",
        "KEY_ID": _sql_str(creds.access_key),
        "SECRET": _sql_str(creds.secret_key),
        "REGION": _sql_str(settings.region),
        "SCOPE": _sql_str(f"s3://{bucket}"),
    }
    if creds.token:
        opts["SESSION_TOKEN"] = _sql_str(creds.token)
    if settings.endpoint_url:
        ep = urlparse(settings.endpoint_url)
        opts |= {
            "ENDPOINT": _sql_str(ep.netloc),
            "URL_STYLE": "'path'",
            "USE_SSL": str(ep.scheme == "https").lower(),
        }
    name = "rlcadence_" + "".join(c if c.isalnum() else "_" for c in bucket)
    return (
        f"CREATE OR REPLACE TEMPORARY SECRET {name} (" + ", ".join(f"{k} {v}" for k, v in opts.items()) + ")"
    )


def _register_pyarrow_fs(con: duckdb.DuckDBPyConnection, loc: StoreLocation) -> None:
    from fsspec.implementations.arrow import ArrowFSWrapper

    class _S3ViaArrow(ArrowFSWrapper):
        protocol = "s3"

    log.warning("duckdb-extension-httpfs not found: DuckDB reads s3:// through pyarrow (slower)")
    con.execute("SET autoinstall_known_extensions = false")
    con.register_filesystem(_S3ViaArrow(loc.fs))
