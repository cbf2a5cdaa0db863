"""One HTTP exchange with the credential cloud, for ``cloud_client.CloudClient``.

``CloudHttp.request`` sends one JSON request and returns the JSON object of
the answer, or raises what the failure means to the phone:

- ``CloudUnavailable`` with ``status`` "unreachable" (cannot connect), "reset"
  (dropped mid-answer), "garbage" (not HTTP, not JSON, too large) or
  "http-NNN" (5xx, 408, 429: the cloud may answer later);
- ``CloudRefused`` for any other 4xx: a definite no, with the cloud's reason
  made safe to print.

It sets no deadline of its own: the caller's ``asyncio.timeout`` covers
connect, send and read, so one operation has one deadline however many
requests it makes.
"""

from __future__ import annotations

import errno
import json
import re
from typing import Any, Final

import aiohttp

from .errors import CloudRefused, CloudUnavailable

MAX_ANSWER: Final = 64 * 1024  # every answer but the full revocation list is < 1 KiB
_MAX_ERROR_TEXT: Final = 200
_UNPRINTABLE: Final = re.compile(r"[^\x20-\x7e]")


class CloudHttp:
    """JSON over HTTP to the cloud at ``url`` (already validated). The aiohttp
    session is made on first use, so a client that never calls needs no loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No aiohttp timeout: the caller's deadline covers connect, send and read.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def get_json(
        self, method: str, path: str, body: object = None, *, limit: int = MAX_ANSWER
    ) -> dict[str, Any]:
        """The JSON object of a 2xx answer; anything else raises."""
        return (await self.request(method, path, body, limit=limit))[1]

    async def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        accept: tuple[int, ...] = (),
        limit: int = MAX_ANSWER,
    ) -> tuple[int, dict[str, Any]]:
        """Status and JSON object of a 2xx answer, or of one whose status is in
        ``accept`` (``{}`` if that one is not JSON); anything else raises."""
        try:
            async with self._http().request(
                method, self.url + path, json=body, allow_redirects=False
            ) as response:
                status = response.status
                raw = await _read_limited(response, limit)
        except aiohttp.ClientConnectorError as exc:
            raise CloudUnavailable(f"cannot connect: {_os_reason(exc)}", "unreachable") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            # Dropped mid-answer: a reset as far as anyone can tell.
            raise CloudUnavailable("connection reset", "reset") from exc
        except aiohttp.ClientOSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
                raise CloudUnavailable("connection reset", "reset") from None
            raise CloudUnavailable(f"network error: {_os_reason(exc)}", "unreachable") from None
        except aiohttp.ClientResponseError as exc:  # not HTTP at all
            raise invalid_response(f"not HTTP: {exc.message}") from None
        except aiohttp.ClientError as exc:
            raise CloudUnavailable(f"network error: {type(exc).__name__}", "unreachable") from None
        if 200 <= status < 300:
            return status, _json_object(raw)
        if status in accept:
            try:
                return status, _json_object(raw)
            except CloudUnavailable:
                return status, {}
        if 400 <= status < 500 and status not in (408, 429):
            raise CloudRefused(f"HTTP {status}: {_error_text(raw)}", status)
        raise CloudUnavailable(f"HTTP {status}", f"http-{status}")


def invalid_response(what: str) -> CloudUnavailable:
    """An answer that is not what the API promises: an outage, not a lie
    (nothing signed failed verification)."""
    return CloudUnavailable(f"invalid response ({what})", "garbage")


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise invalid_response(f"larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise invalid_response(f"larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise invalid_response("not JSON") from None
    if not isinstance(data, dict):
        raise invalid_response("not a JSON object")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _error_text(raw: bytes) -> str:
    """The cloud's one-sentence reason, made safe to print."""
    try:
        message = json.loads(raw.decode("utf-8")).get("error")
    except (ValueError, AttributeError, RecursionError):
        message = None
    if not isinstance(message, str) or not message:
        return "no reason given"
    return _UNPRINTABLE.sub("?", message)[:_MAX_ERROR_TEXT]


def _os_reason(exc: OSError) -> str:
    inner = getattr(exc, "os_error", None)
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()
    if exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
