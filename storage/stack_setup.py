"""Least-privilege store access for the docker-compose stack (run by the register service).

``python -m storage.stack_setup -- <command...>`` with the MinIO root keys in the
environment:

1. creates the bucket of ``CMSVD_STORE_URL``;
2. creates (or updates) the MinIO user ``CMSVD_S3_ACCESS_KEY`` / ``CMSVD_S3_SECRET_KEY``
   with a policy that allows object reads, writes and deletes in that bucket only;
3. replaces itself with ``<command...>`` (``python -m flows.deployments register``) whose
   environment holds the worker key as ``AWS_*`` and no root key.

Only this one-shot service ever sees the root keys; the Dask and Prefect workers get the
bucket-scoped key.  Needs the ``minio`` package (installed in the image).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from urllib.parse import urlparse

POLICY_NAME = "cmsvd-store-rw"
_ROOT_VARS = ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")


def bucket_policy(bucket: str) -> dict:
    """IAM policy: list the bucket and read/write/delete its objects, nothing else."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
            },
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                           "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                "Resource": [f"arn:aws:s3:::{bucket}/*"],
            },
        ],
    }


def _required(env: dict, name: str) -> str:
    value = env.get(name)
    if not value:
        raise SystemExit(f"error: {name} is not set (see deploy/stack.env.example)")
    return value


def worker_environment(env: dict) -> dict:
    """The environment of the command run afterwards: worker key as AWS_*, no root key."""
    out = {k: v for k, v in env.items() if k not in _ROOT_VARS}
    out["AWS_ACCESS_KEY_ID"] = _required(env, "CMSVD_S3_ACCESS_KEY")
    out["AWS_SECRET_ACCESS_KEY"] = _required(env, "CMSVD_S3_SECRET_KEY")
    return out


def setup(env: dict, retries: int = 60) -> None:
    """Bucket, user and policy (idempotent); waits for MinIO up to *retries* seconds."""
    from minio import Minio, MinioAdmin
    from minio.credentials import StaticProvider

    store = urlparse(_required(env, "CMSVD_STORE_URL"))
    if store.scheme not in ("s3", "s3a"):
        return  # not an object store: nothing to set up
    bucket = store.netloc
    endpoint = urlparse(_required(env, "CMSVD_S3_ENDPOINT"))
    secure = endpoint.scheme == "https"
    root_user, root_password = _required(env, "MINIO_ROOT_USER"), _required(env, "MINIO_ROOT_PASSWORD")
    client = Minio(endpoint.netloc, access_key=root_user, secret_key=root_password, secure=secure)
    for attempt in range(retries):
        try:
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
            break
        except Exception:  # noqa: BLE001 - MinIO still starting
            if attempt == retries - 1:
                raise
            time.sleep(1)
    admin = MinioAdmin(endpoint.netloc, credentials=StaticProvider(root_user, root_password), secure=secure)
    access_key = _required(env, "CMSVD_S3_ACCESS_KEY")
    admin.user_add(access_key, _required(env, "CMSVD_S3_SECRET_KEY"))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(bucket_policy(bucket), f)
    try:
        admin.policy_add(POLICY_NAME, f.name)
    finally:
        os.unlink(f.name)
    try:
        admin.attach_policy([POLICY_NAME], user=access_key)
    except Exception as exc:  # noqa: BLE001 - already attached on a re-run
        if "already" not in str(exc).lower():
            raise


def main(argv: list[str] | None = None) -> None:
    """``python -m storage.stack_setup [-- command ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    env = dict(os.environ)
    setup(env)
    print(f"stack_setup: bucket and user {env.get('CMSVD_S3_ACCESS_KEY')!r} ready", flush=True)
    if command:
        os.execvpe(command[0], command, worker_environment(env))


if __name__ == "__main__":
    main()
