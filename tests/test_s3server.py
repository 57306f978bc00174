"""The S3 test fixtures run a real SeaweedFS server on loopback that boto3 and pyarrow can use."""

import shutil
import subprocess
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from helpers.s3server import S3Server, create_bucket, s3_bucket, s3_server, s3_session_server

__all__ = ["s3_bucket", "s3_server", "s3_session_server"]  # fixtures used by name below


def listening(pid: int, proto: str) -> list[str]:
    """Local addresses (`ip:port`) the process listens on, from `ss -l{t,u}npH`."""
    out = subprocess.run(["ss", f"-l{proto}npH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


def test_put_get_list(s3_server: S3Server, s3_bucket: str):
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="dir/a.txt", Body=b"hello")
    client.put_object(Bucket=s3_bucket, Key="dir/b.txt", Body=b"world")

    assert client.get_object(Bucket=s3_bucket, Key="dir/a.txt")["Body"].read() == b"hello"
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="dir/")
    assert [item["Key"] for item in listed["Contents"]] == ["dir/a.txt", "dir/b.txt"]
    assert s3_bucket in [bucket["Name"] for bucket in client.list_buckets()["Buckets"]]
    # Like AWS, an upload does not create a missing bucket.
    with pytest.raises(ClientError, match="NoSuchBucket"):
        client.put_object(Bucket="no-such-bucket", Key="x", Body=b"x")


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` (iproute2) to list listening sockets")
def test_listens_on_loopback_only_on_its_own_ports(s3_server: S3Server, s3_session_server: S3Server):
    assert set(s3_server.ports.values()).isdisjoint(s3_session_server.ports.values())
    for server in (s3_server, s3_session_server):
        assert server.pid is not None
        # S3 answers before weed's admin server (started last) listens: wait until all its sockets are up.
        deadline = time.monotonic() + 20
        while True:
            addresses = listening(server.pid, "t")
            ports = {int(address.rsplit(":", 1)[1]) for address in addresses}
            if ports == set(server.ports.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert all(address.startswith("127.0.0.1:") for address in addresses), addresses
        assert ports == set(server.ports.values())
        assert listening(server.pid, "u") == []
        server.client().list_buckets()


def test_stop_and_start_keep_data(s3_server: S3Server, s3_bucket: str):
    s3_server.client().put_object(Bucket=s3_bucket, Key="kept.txt", Body=b"survives a restart")
    endpoint, ports = s3_server.endpoint_url, dict(s3_server.ports)

    s3_server.stop()
    assert not s3_server.running
    quick = s3_server.client(connect_timeout=1, retries={"total_max_attempts": 1})
    with pytest.raises(EndpointConnectionError) as unreachable:
        quick.list_buckets()
    assert "Connection refused" in str(unreachable.value.kwargs["error"])  # at once, as by a stopped server

    s3_server.start()
    assert (s3_server.endpoint_url, s3_server.ports) == (endpoint, ports)
    assert quick.get_object(Bucket=s3_bucket, Key="kept.txt")["Body"].read() == b"survives a restart"


def test_wrong_credentials_are_rejected(s3_session_server: S3Server):
    bucket = create_bucket(s3_session_server)
    for access_key, secret_key, code in [
        ("WRONGKEY0000", s3_session_server.secret_key, "InvalidAccessKeyId"),
        (s3_session_server.access_key, "wrong-secret", "SignatureDoesNotMatch"),
    ]:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=s3_session_server.endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name="us-east-1",
            config=Config(proxies={}, retries={"total_max_attempts": 1}),
        )
        for call in (client.list_buckets, lambda c=client: c.list_objects_v2(Bucket=bucket)):
            with pytest.raises(ClientError) as raised:
                call()
            assert raised.value.response["Error"]["Code"] == code
            assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_env_feeds_the_standard_credential_chain(s3_session_server: S3Server, monkeypatch: pytest.MonkeyPatch):
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_session_server.env().items():
        monkeypatch.setenv(name, value)
    client = boto3.session.Session().client(
        "s3", endpoint_url=s3_session_server.endpoint_url, config=Config(proxies={})
    )
    bucket = create_bucket(s3_session_server)
    client.put_object(Bucket=bucket, Key="env.txt", Body=b"via env")
    assert s3_session_server.client().get_object(Bucket=bucket, Key="env.txt")["Body"].read() == b"via env"


def test_pyarrow_reads_and_writes(s3_session_server: S3Server):
    from pyarrow import fs

    bucket = create_bucket(s3_session_server)
    arrow = fs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{s3_session_server.ports['s3.port']}",
        scheme="http",
        access_key=s3_session_server.access_key,
        secret_key=s3_session_server.secret_key,
        region="us-east-1",
    )
    with arrow.open_output_stream(f"{bucket}/arrow/data.bin") as out:
        out.write(b"written by pyarrow")
    with arrow.open_input_stream(f"{bucket}/arrow/data.bin") as stream:
        assert stream.read() == b"written by pyarrow"
    listed = arrow.get_file_info(fs.FileSelector(f"{bucket}/arrow"))
    assert [info.path for info in listed] == [f"{bucket}/arrow/data.bin"]
    # The same object through boto3, and the helper gives an equivalent filesystem.
    body = s3_session_server.client().get_object(Bucket=bucket, Key="arrow/data.bin")["Body"].read()
    assert body == b"written by pyarrow"
    with s3_session_server.arrow_fs().open_input_stream(f"{bucket}/arrow/data.bin") as stream:
        assert stream.read() == b"written by pyarrow"
