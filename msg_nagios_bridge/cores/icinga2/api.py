"""Icinga 2's REST API over one kept-alive TLS connection (docs/icinga2-notes.md).

Icinga closes a connection after 10 s idle and on every reload, and refuses connections for a
moment while it reloads: any failure closes the connection, and the next request opens a new
one. A request that got no answer may or may not have been processed (the caller decides
whether to send it again). Icinga's certificate is always verified against ``ca_file``.
"""
from __future__ import annotations

import base64
import http.client
import json
import ssl
from typing import Any, Optional, Tuple

from ...config import Icinga2Settings

# An answer bigger than this is not read (the object list of a very large Icinga is read in
# pages by the caller, not in one answer).
MAX_ANSWER_BYTES = 256 << 20


class ApiUnavailable(Exception):
    """No answer: Icinga cannot be reached, closed the connection, or sent something that is
    not HTTP. The message says which."""


def ssl_context(settings: Icinga2Settings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=settings.ca_file)
    if settings.cert_file:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    return context


def headers(settings: Icinga2Settings) -> dict:
    # Without Accept: application/json Icinga answers 400 with an HTML page and closes.
    result = {"Accept": "application/json", "Content-Type": "application/json"}
    if settings.user:
        token = base64.b64encode(f"{settings.user}:{settings.password}".encode()).decode("ascii")
        result["Authorization"] = f"Basic {token}"
    return result


class ApiClient:
    """Requests to one Icinga 2 API, one at a time, on a connection kept between them."""

    def __init__(self, settings: Icinga2Settings):
        self.settings = settings
        self._context = ssl_context(settings)
        self._headers = headers(settings)
        self._connection: Optional[http.client.HTTPSConnection] = None

    def connection(self, timeout: Optional[float] = None) -> http.client.HTTPSConnection:
        """A new connection to the API (not yet opened), e.g. for the event stream."""
        return http.client.HTTPSConnection(
            self.settings.host, self.settings.port, context=self._context,
            timeout=self.settings.timeout if timeout is None else timeout)

    def request(self, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
        """(HTTP status, the answer parsed from JSON, or its text if it is not JSON);
        raises ApiUnavailable when there is no answer."""
        payload = None if body is None else json.dumps(body).encode("utf-8")
        if self._connection is None:
            self._connection = self.connection()
        try:
            self._connection.request(method, path, body=payload, headers=self._headers)
            response = self._connection.getresponse()
            data = response.read(MAX_ANSWER_BYTES + 1)
            if len(data) > MAX_ANSWER_BYTES:
                raise ApiUnavailable(f"{method} {path}: the answer is over {MAX_ANSWER_BYTES} bytes")
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ApiUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        except ApiUnavailable:
            self.close()
            raise
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data.decode("utf-8", "replace")

    @property
    def connected(self) -> bool:
        """A connection is open: the next request goes on it (not on a new one)."""
        return self._connection is not None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
