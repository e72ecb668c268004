"""Tests for the guarded outbound fetcher, against real HTTP servers on loopback.

The main test server listens on 127.0.0.2, the only address the policies
allow. A second server on 127.0.0.1 stands for an internal service and records
every request, so the tests can check that blocked fetches never reach it.
"""

import email.utils
import hashlib
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sellmyimages.fetching import (
    BlockedAddress,
    BlockedURL,
    FetchConnectionError,
    FetchError,
    FetchHTTPError,
    FetchPolicy,
    FetchTimeout,
    GuardedBackend,
    TooLarge,
    TooManyRedirects,
    describe_blocked_address,
    fetch_to_file,
    redact_url,
)

IMAGES = Path("/work/shared/testdata/images")
RETINA_JPEG = IMAGES / "photo_retina_fundus_1411x1411.jpg"

SERVER_ADDRESS = "127.0.0.2"
POLICY = FetchPolicy(
    timeout_seconds=5.0,
    connect_timeout_seconds=1.0,
    allowed_addresses=frozenset({SERVER_ADDRESS}),
)


class RouteHandler(BaseHTTPRequestHandler):
    """Serve each path with the function registered for it in server.routes."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.requests.append((self.path, dict(self.headers)))
        route = self.server.routes.get(urlsplit(self.path).path)
        try:
            if route is None:
                send_status(404)(self)
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            # The client closed the connection, as several tests expect it to.
            pass

    def log_message(self, format, *args):
        pass


@contextmanager
def run_server(address):
    server = ThreadingHTTPServer((address, 0), RouteHandler)
    server.daemon_threads = True
    server.routes = {}
    server.requests = []
    server.base_url = f"http://{address}:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def send_bytes(data, content_type="image/jpeg", content_length=True):
    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        if content_length:
            handler.send_header("Content-Length", str(len(data)))
        else:
            handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(data)
        handler.close_connection = True

    return route


def send_chunked(chunk, count):
    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(count):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        handler.wfile.write(b"0\r\n\r\n")

    return route


def send_trickle(declared_length, interval_seconds, max_seconds=20.0):
    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(declared_length))
        handler.end_headers()
        handler.wfile.flush()
        stop_at = time.monotonic() + max_seconds
        for _ in range(declared_length):
            if time.monotonic() > stop_at:
                break
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(interval_seconds)
        handler.close_connection = True

    return route


def send_redirect(location, status=302):
    def route(handler):
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def send_status(status, headers=None):
    def route(handler):
        body = b"error page"
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return route


@pytest.fixture(autouse=True)
def loopback_only_connections(monkeypatch):
    """Fail the test if anything tries to connect to a non-loopback address.

    The fetcher's sockets are opened by httpcore's SyncBackend through
    socket.create_connection(). A bug that let a blocked address through would
    hit this check before any packet leaves the machine.
    """
    create_connection = socket.create_connection

    def create_loopback_connection(address, *args, **kwargs):
        try:
            ip = ipaddress.ip_address(address[0])
        except ValueError:
            raise AssertionError(f"connect by hostname {address[0]!r}") from None
        if not ip.is_loopback:
            raise AssertionError(f"connect to non-loopback address {address[0]!r}")
        return create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_loopback_connection)


@pytest.fixture
def server():
    with run_server(SERVER_ADDRESS) as server:
        yield server


@pytest.fixture
def download_dir(tmp_path):
    """An empty folder for downloads, apart from what other fixtures put in tmp_path."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def internal_server():
    """A server on 127.0.0.1 that the policies do not allow."""
    with run_server("127.0.0.1") as server:
        server.routes["/"] = send_bytes(b"internal secret", "text/plain")
        server.routes["/latest/meta-data/"] = server.routes["/"]
        yield server


def test_fetch_saves_image(server, download_dir):
    image = RETINA_JPEG.read_bytes()
    server.routes["/image.jpg"] = send_bytes(image)
    destination = download_dir / "image.jpg"

    result = fetch_to_file(
        f"{server.base_url}/image.jpg", destination, policy=POLICY
    )

    assert destination.read_bytes() == image
    assert result.sha256 == hashlib.sha256(image).hexdigest()
    assert result.size_bytes == len(image)
    assert result.path == destination
    assert result.status_code == 200
    assert result.content_type == "image/jpeg"
    assert result.final_url == f"{server.base_url}/image.jpg"
    assert list(download_dir.iterdir()) == [destination]


def test_fetch_sends_user_agent(server, download_dir):
    server.routes["/image.jpg"] = send_bytes(b"abc")
    policy = FetchPolicy(
        allowed_addresses=POLICY.allowed_addresses, user_agent="SellMyImages/test"
    )

    fetch_to_file(f"{server.base_url}/image.jpg", download_dir / "a", policy=policy)

    _path, headers = server.requests[0]
    assert headers["User-Agent"] == "SellMyImages/test"
    assert headers["Accept-Encoding"] == "identity"


def test_fetch_without_content_length(server, download_dir):
    image = RETINA_JPEG.read_bytes()
    server.routes["/image.jpg"] = send_bytes(image, content_length=False)

    result = fetch_to_file(
        f"{server.base_url}/image.jpg", download_dir / "image.jpg", policy=POLICY
    )

    assert result.sha256 == hashlib.sha256(image).hexdigest()


def test_fetch_follows_redirects_up_to_limit(server, download_dir):
    image = RETINA_JPEG.read_bytes()
    server.routes["/image.jpg"] = send_bytes(image)
    server.routes["/hop1"] = send_redirect("/image.jpg", status=301)
    server.routes["/hop2"] = send_redirect(f"{server.base_url}/hop1", status=307)
    server.routes["/hop3"] = send_redirect("hop2", status=308)

    result = fetch_to_file(
        f"{server.base_url}/hop3?sig=abc", download_dir / "image.jpg", policy=POLICY
    )

    assert result.final_url == f"{server.base_url}/image.jpg"
    assert result.sha256 == hashlib.sha256(image).hexdigest()


def test_too_many_redirects_rejected(server, download_dir):
    for hop in range(1, 5):
        server.routes[f"/hop{hop}"] = send_redirect(f"/hop{hop - 1}")
    server.routes["/hop0"] = send_bytes(b"image")
    destination = download_dir / "image.jpg"

    with pytest.raises(TooManyRedirects) as caught:
        fetch_to_file(f"{server.base_url}/hop4", destination, policy=POLICY)

    assert caught.value.transient is False
    assert len(server.requests) == POLICY.max_redirects + 1
    assert not destination.exists()


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.2/image.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "gopher://127.0.0.2:70/_GET",
        "image.jpg",
    ],
)
def test_non_http_url_rejected(url, download_dir):
    with pytest.raises(BlockedURL) as caught:
        fetch_to_file(url, download_dir / "image.jpg", policy=POLICY)

    assert caught.value.transient is False


def test_userinfo_rejected(server, download_dir):
    server.routes["/image.jpg"] = send_bytes(b"image")
    host = server.base_url.removeprefix("http://")

    with pytest.raises(BlockedURL) as caught:
        fetch_to_file(
            f"http://admin:hunter2@{host}/image.jpg", download_dir / "a", policy=POLICY
        )

    assert "hunter2" not in str(caught.value)
    assert server.requests == []


def test_host_not_in_allowed_hosts_rejected(server, download_dir):
    server.routes["/image.jpg"] = send_bytes(b"image")
    policy = FetchPolicy(
        allowed_hosts=frozenset({"images.example"}),
        allowed_addresses=POLICY.allowed_addresses,
    )

    with pytest.raises(BlockedURL) as caught:
        fetch_to_file(f"{server.base_url}/image.jpg", download_dir / "a", policy=policy)

    assert "127.0.0.2" in str(caught.value)
    assert server.requests == []


def test_redirect_outside_allowed_hosts_rejected(server, internal_server, download_dir):
    port = internal_server.server_address[1]
    server.routes["/start"] = send_redirect(f"http://localhost:{port}/")
    policy = FetchPolicy(
        allowed_hosts=frozenset({SERVER_ADDRESS}),
        allowed_addresses=frozenset({SERVER_ADDRESS, "127.0.0.1"}),
    )

    with pytest.raises(BlockedURL):
        fetch_to_file(f"{server.base_url}/start", download_dir / "a", policy=policy)

    assert internal_server.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/",
        "http://localhost:{port}/",
        "http://[::1]:{port}/",
        "http://0.0.0.0:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://10.0.0.1/image.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.64.0.1/image.jpg",
        "http://[::ffff:10.0.0.1]/image.jpg",
        "http://[2002:a00:1::]/image.jpg",
    ],
)
def test_non_public_address_rejected(url, internal_server, download_dir):
    url = url.format(port=internal_server.server_address[1])
    policy = FetchPolicy(
        timeout_seconds=1.0,
        connect_timeout_seconds=0.2,
        allowed_addresses=POLICY.allowed_addresses,
    )

    with pytest.raises(BlockedAddress) as caught:
        fetch_to_file(url, download_dir / "image.jpg", policy=policy)

    assert caught.value.transient is False
    assert internal_server.requests == []
    assert list(download_dir.iterdir()) == []


def test_resolved_address_used_for_connect(server, download_dir, monkeypatch):
    server.routes["/image.jpg"] = send_bytes(b"image")
    port = server.server_address[1]

    def resolve_to_server(self, host, port):
        assert host == "images.example"
        return [(socket.AF_INET, (SERVER_ADDRESS, port))]

    monkeypatch.setattr(GuardedBackend, "resolve", resolve_to_server)

    result = fetch_to_file(
        f"http://images.example:{port}/image.jpg", download_dir / "a", policy=POLICY
    )

    _path, headers = server.requests[0]
    assert headers["Host"] == f"images.example:{port}"
    assert result.size_bytes == len(b"image")


def test_any_blocked_resolved_address_rejects_host(server, download_dir, monkeypatch):
    # getaddrinfo() cannot be pointed at a test DNS server here, so a stand-in
    # resolver returns one allowed and one private address for the host.
    server.routes["/image.jpg"] = send_bytes(b"image")
    port = server.server_address[1]

    def resolve_to_mixed(self, host, port):
        return [
            (socket.AF_INET, (SERVER_ADDRESS, port)),
            (socket.AF_INET, ("10.0.0.1", port)),
        ]

    monkeypatch.setattr(GuardedBackend, "resolve", resolve_to_mixed)

    with pytest.raises(BlockedAddress) as caught:
        fetch_to_file(
            f"http://images.example:{port}/image.jpg", download_dir / "a", policy=POLICY
        )

    assert "10.0.0.1" in str(caught.value)
    assert server.requests == []


def test_redirect_to_loopback_rejected(server, internal_server, download_dir):
    port = internal_server.server_address[1]
    server.routes["/start"] = send_redirect(f"http://127.0.0.1:{port}/")
    destination = download_dir / "image.jpg"

    with pytest.raises(BlockedAddress):
        fetch_to_file(f"{server.base_url}/start", destination, policy=POLICY)

    assert internal_server.requests == []
    assert not destination.exists()


def test_redirect_to_localhost_rejected(server, internal_server, download_dir):
    port = internal_server.server_address[1]
    server.routes["/start"] = send_redirect(f"http://localhost:{port}/")

    with pytest.raises(BlockedAddress):
        fetch_to_file(f"{server.base_url}/start", download_dir / "a", policy=POLICY)

    assert internal_server.requests == []


def test_redirect_to_metadata_rejected(server, download_dir):
    server.routes["/start"] = send_redirect(
        "http://169.254.169.254/latest/meta-data/"
    )
    policy = FetchPolicy(
        timeout_seconds=1.0,
        connect_timeout_seconds=0.2,
        allowed_addresses=POLICY.allowed_addresses,
    )

    with pytest.raises(BlockedAddress) as caught:
        fetch_to_file(f"{server.base_url}/start", download_dir / "a", policy=policy)

    assert "169.254.169.254" in str(caught.value)


def test_oversize_body_with_content_length_rejected(server, download_dir):
    image = RETINA_JPEG.read_bytes()
    server.routes["/image.jpg"] = send_bytes(image)
    destination = download_dir / "image.jpg"
    destination.write_bytes(b"previous copy")
    policy = FetchPolicy(
        max_bytes=len(image) - 1, allowed_addresses=POLICY.allowed_addresses
    )

    with pytest.raises(TooLarge) as caught:
        fetch_to_file(f"{server.base_url}/image.jpg", destination, policy=policy)

    assert caught.value.transient is False
    assert destination.read_bytes() == b"previous copy"
    assert list(download_dir.iterdir()) == [destination]


def test_oversize_content_length_rejected_before_body(server, download_dir):
    # The server declares 10 MiB and then sends nothing, so a fetcher that
    # waited for the body would time out instead of reporting the size.
    def declare_large_body(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(10 * 1024 * 1024))
        handler.end_headers()
        handler.wfile.flush()
        handler.rfile.read(1)  # Returns when the client closes the connection.

    server.routes["/image.jpg"] = declare_large_body
    policy = FetchPolicy(
        max_bytes=1024 * 1024,
        timeout_seconds=2.0,
        allowed_addresses=POLICY.allowed_addresses,
    )

    with pytest.raises(TooLarge):
        fetch_to_file(f"{server.base_url}/image.jpg", download_dir / "a", policy=policy)

    assert list(download_dir.iterdir()) == []


def test_oversize_chunked_body_rejected(server, download_dir):
    # 64 MiB offered, 1 MiB allowed: the fetch must stop early, not buffer it.
    server.routes["/image.jpg"] = send_chunked(b"x" * 65536, count=1024)
    destination = download_dir / "image.jpg"
    policy = FetchPolicy(
        max_bytes=1024 * 1024, allowed_addresses=POLICY.allowed_addresses
    )

    with pytest.raises(TooLarge):
        fetch_to_file(f"{server.base_url}/image.jpg", destination, policy=policy)

    assert list(download_dir.iterdir()) == []


def test_oversize_body_without_content_length_rejected(server, download_dir):
    image = RETINA_JPEG.read_bytes()
    server.routes["/image.jpg"] = send_bytes(image, content_length=False)
    policy = FetchPolicy(max_bytes=100_000, allowed_addresses=POLICY.allowed_addresses)

    with pytest.raises(TooLarge):
        fetch_to_file(f"{server.base_url}/image.jpg", download_dir / "a", policy=policy)

    assert list(download_dir.iterdir()) == []


def test_trickling_body_cut_off_by_time_budget(server, download_dir):
    # Each byte arrives well within any per-read timeout, so only the total
    # budget can stop this fetch.
    server.routes["/image.jpg"] = send_trickle(
        declared_length=1000, interval_seconds=0.1
    )
    policy = FetchPolicy(
        timeout_seconds=1.5, allowed_addresses=POLICY.allowed_addresses
    )

    with pytest.raises(FetchTimeout) as caught:
        fetch_to_file(f"{server.base_url}/image.jpg", download_dir / "a", policy=policy)

    assert caught.value.transient is True
    assert list(download_dir.iterdir()) == []


def test_connection_refused_is_transient(download_dir):
    with socket.socket() as unused:
        unused.bind((SERVER_ADDRESS, 0))
        port = unused.getsockname()[1]

    with pytest.raises(FetchConnectionError) as caught:
        fetch_to_file(
            f"http://{SERVER_ADDRESS}:{port}/", download_dir / "a", policy=POLICY
        )

    assert caught.value.transient is True


@pytest.mark.parametrize(
    ("status", "headers", "transient", "retry_after"),
    [
        (500, {}, True, None),
        (503, {"Retry-After": "120"}, True, 120.0),
        (429, {"Retry-After": "7"}, True, 7.0),
        (404, {}, False, None),
        (403, {}, False, None),
    ],
)
def test_http_error_status(
    server, download_dir, status, headers, transient, retry_after
):
    server.routes["/image.jpg"] = send_status(status, headers)
    destination = download_dir / "image.jpg"

    with pytest.raises(FetchHTTPError) as caught:
        fetch_to_file(f"{server.base_url}/image.jpg", destination, policy=POLICY)

    assert caught.value.status_code == status
    assert caught.value.transient is transient
    assert caught.value.retry_after == retry_after
    assert not destination.exists()


def test_retry_after_http_date(server, download_dir):
    retry_at = email.utils.formatdate(time.time() + 120, usegmt=True)
    server.routes["/image.jpg"] = send_status(429, {"Retry-After": retry_at})

    with pytest.raises(FetchHTTPError) as caught:
        fetch_to_file(f"{server.base_url}/image.jpg", download_dir / "a", policy=POLICY)

    assert 0 < caught.value.retry_after <= 120


def test_error_message_omits_query(server, download_dir):
    server.routes["/image.jpg"] = send_status(404)
    url = f"{server.base_url}/image.jpg?X-Amz-Signature=s3cr3t#frag"

    with pytest.raises(FetchHTTPError) as caught:
        fetch_to_file(url, download_dir / "a", policy=POLICY)

    message = str(caught.value)
    assert "s3cr3t" not in message
    assert SERVER_ADDRESS in message


def test_compressed_body_rejected(server, download_dir):
    def send_gzip(handler):
        handler.send_response(200)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", "3")
        handler.end_headers()
        handler.wfile.write(b"abc")

    server.routes["/image.jpg"] = send_gzip

    with pytest.raises(FetchError) as caught:
        fetch_to_file(f"{server.base_url}/image.jpg", download_dir / "a", policy=POLICY)

    assert "gzip" in str(caught.value)
    assert list(download_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://bucket.example/a/b.jpg?X-Amz-Signature=secret#frag",
            "https://bucket.example/a/b.jpg",
        ),
        ("https://user:pass@host.example:8443/x?y=1", "https://host.example:8443/x"),
        ("http://[::1]:8080/path", "http://[::1]:8080/path"),
        ("http://host.example", "http://host.example"),
        ("http://[::1/x?token=1", "<unparsable URL>"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_url_shortens_data_url():
    redacted = redact_url("data:image/png;base64," + "A" * 10_000)

    assert redacted.startswith("data:image/png;base64,AAAA")
    assert len(redacted) == 200


@pytest.mark.parametrize(
    ("address", "expected_reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("64:ff9b::808:808", None),
        ("127.0.0.2", "loopback"),
        ("::ffff:127.0.0.1", "IPv6-embedded loopback"),
        ("64:ff9b::a00:1", "IPv6-embedded private"),
        ("2002:a9fe:a9fe::", "IPv6-embedded cloud metadata"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "shared (100.64.0.0/10)"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "private"),
    ],
)
def test_describe_blocked_address(address, expected_reason):
    assert describe_blocked_address(ipaddress.ip_address(address)) == expected_reason


def test_allowed_address_is_not_blocked():
    allowed = frozenset({ipaddress.ip_address("127.0.0.2")})

    assert describe_blocked_address(ipaddress.ip_address("127.0.0.2"), allowed) is None
    assert describe_blocked_address(ipaddress.ip_address("127.0.0.1"), allowed) == (
        "loopback"
    )


@pytest.mark.parametrize(
    "values",
    [
        {"allowed_addresses": frozenset({"not-an-ip"})},
        {"allowed_hosts": frozenset({"Images.Example"})},
        {"max_bytes": 0},
        {"timeout_seconds": 0},
        {"max_redirects": -1},
    ],
)
def test_policy_rejects_invalid_values(values):
    with pytest.raises(ValueError):
        FetchPolicy(**values)


@pytest.fixture
def self_signed_certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_sni_uses_hostname(self_signed_certificate, download_dir):
    cert, key = self_signed_certificate
    server_names = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept_one():
        connection, _ = listener.accept()
        try:
            with context.wrap_socket(connection, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass  # The client rejects the self-signed certificate.

    thread = threading.Thread(target=accept_one, daemon=True)
    thread.start()
    policy = FetchPolicy(
        timeout_seconds=5.0, allowed_addresses=frozenset({"127.0.0.1"})
    )

    try:
        with pytest.raises(FetchConnectionError) as caught:
            fetch_to_file(
                f"https://localhost:{port}/image.jpg", download_dir / "a", policy=policy
            )
    finally:
        thread.join(timeout=5)
        listener.close()

    # The socket connected to 127.0.0.1, but the handshake sent the hostname as
    # SNI. The certificate was verified and rejected, which is a permanent error.
    assert server_names == ["localhost"]
    assert caught.value.transient is False
    assert not (download_dir / "a").exists()
