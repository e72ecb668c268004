"""Serving an output file with byte ranges, so interrupted downloads resume."""

import mimetypes
import os
import re
from pathlib import Path

from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from django.utils.http import content_disposition_header

CHUNK_SIZE = 256 * 1024
# 18 digits cover any file size and keep int() far from its digit limit.
RANGE_PATTERN = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")


def parse_range(header, size):
    """Return (start, end) inclusive for a single byte range, None to send
    the whole file, or "unsatisfiable".

    Only one range is honoured; a multi-range or malformed header is
    ignored, which RFC 9110 allows, and the whole file is sent.
    """
    if not header:
        return None
    match = RANGE_PATTERN.match(header.strip())
    if not match:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return max(size - length, 0), size - 1
    start = int(first)
    if last and int(last) < start:
        # RFC 9110 calls this range invalid, so the header is ignored.
        return None
    if start >= size:
        return "unsatisfiable"
    end = int(last) if last else size - 1
    return start, min(end, size - 1)


def read_range(path, start, end):
    remaining = end - start + 1
    with open(path, "rb") as handle:
        handle.seek(start)
        while remaining > 0:
            chunk = handle.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


def file_response(request, path, filename):
    """Return a response for `path`, honouring a Range header.

    Returns (response, whole_file): callers count a download only when the
    body runs from the first byte to the last, so probes such as
    "bytes=0-0" are not counted.
    """
    path = Path(path)
    size = path.stat().st_size
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    byte_range = parse_range(request.headers.get("Range", ""), size)
    if byte_range == "unsatisfiable":
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response, False
    if byte_range is None:
        response = FileResponse(
            open(path, "rb"), as_attachment=True, filename=filename, content_type=content_type
        )
        response["Content-Length"] = str(size)
        start, end = 0, size - 1
    else:
        start, end = byte_range
        response = StreamingHttpResponse(
            read_range(path, start, end), status=206, content_type=content_type
        )
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response["Content-Length"] = str(end - start + 1)
        response["Content-Disposition"] = content_disposition_header(True, filename)
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    stat = os.stat(path)
    response["ETag"] = f'"{stat.st_size:x}-{int(stat.st_mtime):x}"'
    return response, start == 0 and end == size - 1
