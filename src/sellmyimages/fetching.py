"""Fetch URLs that the service did not build itself, guarded against SSRF.

Customer-supplied image URLs and result URLs sent back by upscaling providers
both go through fetch_to_file(). It allows only http and https, follows
redirects itself so that every hop is checked again, and refuses to connect to
private, loopback, link-local and other non-public addresses. The address check
runs inside the connection backend on the addresses that the socket then
connects to, so a DNS answer that changes between a check and the connect
(DNS rebinding) cannot slip through.

This module does not import Django: callers build a FetchPolicy from settings.
"""

import email.utils
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Bytes requested per read of the response body, which bounds memory per fetch.
CHUNK_SIZE = 64 * 1024

ALLOWED_SCHEMES = frozenset({"http", "https"})
REDACTED_URL_MAX_LENGTH = 200
REDIRECT_STATUS_CODES = frozenset({301, 302, 303, 307, 308})

# Instance metadata services hand out cloud credentials (AWS, GCP, Azure and
# others use 169.254.169.254, AWS Nitro also fd00:ec2::254).
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
# Carrier-grade NAT space (RFC 6598). It is neither private nor global in
# Python's ipaddress, so it needs its own check.
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
# NAT64 well-known prefix (RFC 6052). The last 32 bits of an address in it are
# the IPv4 address that the gateway connects to.
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and allowlists that apply to one fetch_to_file() call."""

    max_bytes: int = 50 * 1024 * 1024
    # Wall time for the whole fetch: connects, TLS, redirects and the body.
    timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 5.0
    max_redirects: int = 3
    # Exact lower-case hostnames that every hop must use, or None for any host.
    allowed_hosts: frozenset[str] | None = None
    # Non-public IP addresses that may be fetched anyway, for test servers and
    # private deployments.
    allowed_addresses: frozenset[str] = frozenset()
    user_agent: str = "SellMyImages/1.0"

    def __post_init__(self):
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes!r}.")
        if self.timeout_seconds <= 0:
            raise ValueError(
                f"timeout_seconds must be positive, got {self.timeout_seconds!r}."
            )
        if self.connect_timeout_seconds <= 0:
            raise ValueError(
                "connect_timeout_seconds must be positive, "
                f"got {self.connect_timeout_seconds!r}."
            )
        if self.max_redirects < 0:
            raise ValueError(
                f"max_redirects must be 0 or more, got {self.max_redirects!r}."
            )
        for host in self.allowed_hosts or ():
            if host != host.lower():
                raise ValueError(
                    f"allowed_hosts must be lower-case, so use {host.lower()!r} "
                    f"instead of {host!r}."
                )
        for address in self.allowed_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError as exc:
                raise ValueError(
                    f"allowed_addresses must contain IP addresses, got {address!r}."
                ) from exc

    def allowed_ip_addresses(self) -> frozenset[IPAddress]:
        """Return allowed_addresses parsed into ipaddress objects."""
        return frozenset(ipaddress.ip_address(a) for a in self.allowed_addresses)


@dataclass(frozen=True)
class FetchResult:
    """A response body saved to disk by fetch_to_file()."""

    # The URL after redirects. It can contain a signed query string, so pass it
    # through redact_url() before logging it.
    final_url: str
    status_code: int
    # The Content-Type header as the server sent it, or None when it is missing.
    content_type: str | None
    size_bytes: int
    sha256: str
    path: Path


class FetchError(Exception):
    """Base class for fetch failures.

    `transient` is True when the same fetch may succeed if retried later.
    """

    transient = False

    def __init__(self, message: str, *, transient: bool | None = None):
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class BlockedAddress(FetchError):
    """The host resolves to an address that the policy does not allow."""


class BlockedURL(FetchError):
    """The URL's scheme, host or userinfo is not allowed, or it does not parse."""


class TooManyRedirects(FetchError):
    """The server redirected more times than the policy allows."""


class TooLarge(FetchError):
    """The response body is larger than the policy's max_bytes."""


class FetchTimeout(FetchError):
    """The fetch did not finish within the policy's time budget."""

    transient = True


class FetchConnectionError(FetchError):
    """The connection failed, or the server broke the HTTP protocol."""

    transient = True


class FetchHTTPError(FetchError):
    """The final response has a status code other than 2xx.

    `retry_after` is the server's Retry-After header in seconds, or None.
    """

    def __init__(
        self, message: str, *, status_code: int, retry_after: float | None = None
    ):
        transient = status_code == 429 or status_code >= 500
        super().__init__(message, transient=transient)
        self.status_code = status_code
        self.retry_after = retry_after


def redact_url(url: str | httpx.URL) -> str:
    """Return the URL without userinfo, query string and fragment.

    Signed URLs carry their secrets in the query string, so every message and
    log line shows URLs through this function. Results longer than
    REDACTED_URL_MAX_LENGTH characters (a data: URL, say) are shortened.
    """
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    redacted = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if len(redacted) > REDACTED_URL_MAX_LENGTH:
        redacted = redacted[: REDACTED_URL_MAX_LENGTH - 3] + "..."
    return redacted


def describe_blocked_address(
    ip: IPAddress, allowed: frozenset[IPAddress] = frozenset()
) -> str | None:
    """Return the kind of non-public address `ip` is, or None if it may be fetched."""
    if ip in allowed:
        return None
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        translated = ip.ipv4_mapped
        if translated is None and ip in NAT64_PREFIX:
            translated = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if translated is not None:
            reason = describe_blocked_address(translated, allowed)
            return None if reason is None else f"IPv6-embedded {reason}"
        # 6to4 and Teredo addresses route to an embedded IPv4 address.
        embedded = [ip.sixtofour, *(ip.teredo or ())]
        for address in filter(None, embedded):
            reason = describe_blocked_address(address, allowed)
            if reason is not None:
                return f"IPv6-embedded {reason}"
    return _describe_address_kind(ip)


def _describe_address_kind(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in SHARED_ADDRESS_SPACE:
        return "shared (100.64.0.0/10)"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-global"
    return None


def _blocked_address_error(host: str, ip: IPAddress, reason: str) -> BlockedAddress:
    if host == str(ip):
        subject = f"Address {host!r} is"
    else:
        subject = f"Host {host!r} resolves to {ip},"
    return BlockedAddress(
        f"{subject} a non-public address ({reason}) that is not in allowed_addresses."
    )


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose reads and writes all end by a shared deadline.

    A per-read timeout alone lets a server that trickles one byte at a time
    hold a fetch open forever, so each call gets at most the time left until
    `deadline`, a time.monotonic() value.
    """

    def __init__(self, stream: httpcore.NetworkStream, deadline: float):
        self._stream = stream
        self._deadline = deadline

    def _time_left(self, timeout: float | None, error_class: type[Exception]) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise error_class("The total time budget of the fetch is used up.")
        return remaining if timeout is None else min(timeout, remaining)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        timeout = self._time_left(timeout, httpcore.ReadTimeout)
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        timeout = self._time_left(timeout, httpcore.WriteTimeout)
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = self._time_left(timeout, httpcore.ConnectTimeout)
        stream = self._stream.start_tls(ssl_context, server_hostname, timeout)
        return DeadlineStream(stream, self._deadline)

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class GuardedBackend(httpcore.SyncBackend):
    """An httpcore network backend that connects only to vetted addresses.

    connect_tcp() resolves the host, rejects it with BlockedAddress if any of
    its addresses is non-public and not allowed, then connects to one of the
    vetted addresses. httpcore 1.0 starts TLS afterwards with the request's
    hostname as server_hostname (httpcore/_sync/connection.py, _connect()), so
    SNI and certificate checks still use the hostname, not the IP address.
    """

    def __init__(self, allowed_addresses: frozenset[IPAddress], deadline: float):
        self.allowed_addresses = allowed_addresses
        self.deadline = deadline

    def resolve(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """Return the (family, sockaddr) pairs that `host` resolves to."""
        # NOTE: getaddrinfo() has no timeout argument, so a slow resolver can
        # hold the fetch past the time budget (up to the resolv.conf timeouts).
        try:
            records = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(
                f"Could not resolve host {host!r}: {exc}"
            ) from exc
        addresses = []
        for family, _type, _proto, _canonname, sockaddr in records:
            if (family, sockaddr) not in addresses:
                addresses.append((family, sockaddr))
        return addresses

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self.resolve(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"Host {host!r} has no addresses.")
        for _family, sockaddr in addresses:
            ip = ipaddress.ip_address(sockaddr[0])
            reason = describe_blocked_address(ip, self.allowed_addresses)
            if reason is not None:
                raise _blocked_address_error(host, ip, reason)

        last_error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for _family, sockaddr in addresses:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                break
            connect_timeout = remaining if timeout is None else min(timeout, remaining)
            try:
                stream = self.connect_address(
                    sockaddr[0], port, connect_timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                logger.debug(
                    "connect failed host=%s address=%s error=%s", host, sockaddr[0], exc
                )
                last_error = exc
                continue
            return DeadlineStream(stream, self.deadline)

        if last_error is None:
            raise httpcore.ConnectTimeout(f"Connecting to host {host!r} timed out.")
        raise last_error

    def connect_address(
        self,
        address: str,
        port: int,
        timeout: float,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """Open a TCP connection to an IP address that connect_tcp() has vetted."""
        # An IP literal makes the base class's getaddrinfo() call a parse
        # without any DNS lookup, so the socket connects to `address` itself.
        return super().connect_tcp(
            address,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("Unix sockets are not allowed for fetches.")


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport whose connection pool uses a GuardedBackend."""

    def __init__(self, network_backend: GuardedBackend):
        ssl_context = httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False)
        # httpx 0.29 keeps its httpcore pool in `_pool`. Check that before
        # replacing it, so that a layout change fails loudly rather than
        # leaving an unguarded pool in use.
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise RuntimeError(
                "httpx.HTTPTransport has no httpcore.ConnectionPool in `_pool`, "
                "so the guarded backend cannot be installed "
                f"(httpx {httpx.__version__})."
            )
        self._pool.close()
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=1,
            max_keepalive_connections=1,
            http1=True,
            http2=False,
            retries=0,
            network_backend=network_backend,
        )


def validate_url(url: str | httpx.URL, policy: FetchPolicy) -> httpx.URL:
    """Parse the URL and raise BlockedURL or BlockedAddress unless it may be fetched.

    Hostnames are checked against allowed_hosts here and against the address
    rules at connect time. IP literals are checked here too, so a blocked IP
    literal never reaches a socket.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise BlockedURL(f"URL {redact_url(url)!r} is not a valid URL.") from exc
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise BlockedURL(
            f"URL {redact_url(url)!r} has scheme {parsed.scheme!r}, "
            "but only http and https are allowed."
        )
    if parsed.userinfo:
        raise BlockedURL(
            f"URL {redact_url(url)!r} contains a username or password, "
            "which is not allowed."
        )
    host = parsed.host
    if not host:
        raise BlockedURL(f"URL {redact_url(url)!r} has no host.")
    if policy.allowed_hosts is not None and host not in policy.allowed_hosts:
        raise BlockedURL(f"Host {host!r} is not in the allowed hosts for this fetch.")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return parsed
    reason = describe_blocked_address(literal, policy.allowed_ip_addresses())
    if reason is not None:
        raise _blocked_address_error(host, literal, reason)
    return parsed


def parse_retry_after(value: str | None) -> float | None:
    """Return a Retry-After header value as seconds from now, or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def fetch_to_file(url: str, destination: Path, *, policy: FetchPolicy) -> FetchResult:
    """Download `url` into `destination` and return what was saved.

    The body is streamed to a temporary file in destination's directory, which
    replaces `destination` only after the whole body arrived within the
    policy's limits. Raise a FetchError subclass when the fetch fails, or the
    OSError when the file cannot be written, after deleting the temporary file.
    """
    destination = Path(destination)
    deadline = time.monotonic() + policy.timeout_seconds
    current_url = validate_url(url, policy)
    backend = GuardedBackend(policy.allowed_ip_addresses(), deadline)
    client = httpx.Client(
        transport=GuardedTransport(backend),
        trust_env=False,
        follow_redirects=False,
        headers={"User-Agent": policy.user_agent, "Accept-Encoding": "identity"},
        timeout=httpx.Timeout(
            policy.timeout_seconds, connect=policy.connect_timeout_seconds
        ),
    )
    redirects = 0
    with client, _translate_transport_errors(current_url, policy):
        while True:
            with client.stream("GET", current_url) as response:
                if response.status_code in REDIRECT_STATUS_CODES:
                    current_url = _next_hop(current_url, response, redirects, policy)
                    redirects += 1
                    continue
                _raise_for_status(current_url, response)
                result = _save_body(current_url, response, destination, policy)
                break

    logger.info(
        "fetch complete host=%s size_bytes=%d redirects=%d",
        current_url.host,
        result.size_bytes,
        redirects,
    )
    return result


@contextmanager
def _translate_transport_errors(url: httpx.URL, policy: FetchPolicy) -> Iterator[None]:
    # `url` is the first hop, the URL the caller passed in, because errors
    # from a later hop do not carry that hop's URL.
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise FetchTimeout(
            f"Connecting while fetching {redact_url(url)!r} timed out after the "
            f"{policy.connect_timeout_seconds}s connect timeout or the "
            f"{policy.timeout_seconds}s total budget."
        ) from exc
    except httpx.TimeoutException as exc:
        # Read and write timeouts are clamped to the time left in the budget,
        # so reaching one means the whole fetch took too long.
        raise FetchTimeout(
            f"Fetching {redact_url(url)!r} did not finish within the "
            f"{policy.timeout_seconds}s time budget."
        ) from exc
    except httpx.TransportError as exc:
        raise FetchConnectionError(
            f"Fetching {redact_url(url)!r} failed: {exc}",
            transient=not _is_certificate_error(exc),
        ) from exc


def _is_certificate_error(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _next_hop(
    url: httpx.URL, response: httpx.Response, redirects: int, policy: FetchPolicy
) -> httpx.URL:
    """Return the validated target of a redirect response."""
    if redirects >= policy.max_redirects:
        raise TooManyRedirects(
            f"Host {url.host!r} sent another redirect for {redact_url(url)!r} "
            f"after {policy.max_redirects} redirects, the maximum allowed."
        )
    location = response.headers.get("Location")
    if not location:
        raise FetchHTTPError(
            f"Host {url.host!r} returned HTTP {response.status_code} without a "
            f"Location header for {redact_url(url)!r}.",
            status_code=response.status_code,
        )
    try:
        target = url.join(location)
    except httpx.InvalidURL as exc:
        raise BlockedURL(
            f"Host {url.host!r} redirected to an invalid URL "
            f"{redact_url(location)!r}."
        ) from exc
    target = validate_url(target, policy)
    logger.debug(
        "following redirect status=%d from=%s to=%s",
        response.status_code,
        redact_url(url),
        redact_url(target),
    )
    return target


def _raise_for_status(url: httpx.URL, response: httpx.Response) -> None:
    if 200 <= response.status_code < 300:
        return
    raise FetchHTTPError(
        f"Host {url.host!r} returned HTTP {response.status_code} "
        f"for {redact_url(url)!r}.",
        status_code=response.status_code,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


def _check_headers(url: httpx.URL, response: httpx.Response, policy: FetchPolicy):
    """Reject a body that is too large or encoded before reading any of it."""
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise TooLarge(
            f"Host {url.host!r} declared a body of {int(declared)} bytes for "
            f"{redact_url(url)!r}, over the limit of {policy.max_bytes} bytes."
        )
    # The request sends Accept-Encoding: identity. A compressed body would be
    # saved as compressed bytes, and inflating it could exceed max_bytes in one
    # chunk.
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise FetchError(
            f"Host {url.host!r} sent Content-Encoding {encoding!r} for "
            f"{redact_url(url)!r}, but only unencoded bodies are accepted."
        )


def _save_body(
    url: httpx.URL,
    response: httpx.Response,
    destination: Path,
    policy: FetchPolicy,
) -> FetchResult:
    """Stream the body into a temporary file, then move it onto `destination`."""
    _check_headers(url, response, policy)
    fd, temp_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    temp_path = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as temp_file:
            size, digest = _write_chunks(url, response, temp_file, policy)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_path, destination)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(destination.parent)
    return FetchResult(
        final_url=str(url),
        status_code=response.status_code,
        content_type=response.headers.get("Content-Type"),
        size_bytes=size,
        sha256=digest,
        path=destination,
    )


def _write_chunks(url, response, temp_file, policy) -> tuple[int, str]:
    size = 0
    digest = hashlib.sha256()
    for chunk in response.iter_raw(CHUNK_SIZE):
        size += len(chunk)
        if size > policy.max_bytes:
            raise TooLarge(
                f"Host {url.host!r} sent more than {policy.max_bytes} bytes for "
                f"{redact_url(url)!r}."
            )
        digest.update(chunk)
        temp_file.write(chunk)
    return size, digest.hexdigest()


def _fsync_directory(directory: Path) -> None:
    """Persist the rename of the new file, where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
