"""S3 URIs as the config names them (checkpoint.s3_uri, --s3): what is wrong with one, standard library only.

The config checks a URI here; engine/cloud/s3.py parses it into an S3Location and talks to S3.
"""

from __future__ import annotations

import re

#: S3's bucket-name rules (general purpose buckets): 3-63 lowercase letters, digits, dots, hyphens.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def uri_problem(uri: str) -> str | None:
    """What is wrong with an S3 URI (None: it is s3://bucket or s3://bucket/prefix)."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        return "expected s3://bucket/prefix"
    rest = uri[5:]
    bucket = rest.split("/", 1)[0]
    if "@" in bucket or ":" in bucket:
        return ("expected s3://bucket/prefix without credentials or a port "
                "(credentials come only from boto3's standard chain)")
    if not _BUCKET.match(bucket) or ".." in bucket:
        return (f"bucket {bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, "
                "dots and hyphens); expected s3://bucket/prefix")
    if any(c in rest for c in "?#\\") or "//" in rest.rstrip("/"):
        return "expected s3://bucket/prefix (no query, fragment, backslash or empty path part)"
    return None
