"""moto's server mode on loopback, for the S3, cloud and secrets tests (nothing leaves the machine).

`moto` is a module-scoped fixture: one ThreadedMotoServer on 127.0.0.1 and a free port per test
module, AWS_ENDPOINT_URL pointed at it for this process (in-process boto3 clients) and, through
`aws_env(url)`, for the engines a test starts.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator

import pytest

from conftest import engine_env


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    before = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = url
    try:
        yield url
    finally:
        if before is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = before
        server.stop()


def aws_env(url: str, **extra: str) -> dict[str, str]:
    """engine_env() with AWS APIs at the moto server (plus overrides)."""
    env = engine_env()
    env["AWS_ENDPOINT_URL"] = url
    env.update(extra)
    return env


def bucket(name: str) -> str:
    """Create a bucket on the moto server (AWS_ENDPOINT_URL); its name."""
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return name
