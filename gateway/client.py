"""The CLI's HTTP client of the admin API, and where it keeps the operator's session.

The session file (``session.json``, mode 0600) lives in ``$TELGATE_CLI_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/telgate``, else ``~/.config/telgate``. Errors from the server come back as the
API's JSON error shape and are raised as ``ApiError`` carrying its code, so the CLI maps them to the
exit codes of INTERFACE.md through the same table as the server.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import AuthenticationError, BackendUnavailableError, TelgateError


class ApiError(TelgateError):
    """An error the server answered with; ``code`` is the server's code."""

    def __init__(self, code: str, message: str, status: int, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details=details)
        self.code = code
        self.status = status


def config_dir() -> Path:
    """Where the CLI keeps its session."""
    explicit = os.environ.get("TELGATE_CLI_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "telgate"


@dataclass(frozen=True)
class StoredSession:
    """The server URL and session token saved by ``telgate login``."""

    url: str
    user: str
    token: str

    @classmethod
    def load(cls) -> StoredSession:
        """The saved session, or an AuthenticationError telling the operator to log in."""
        path = config_dir() / "session.json"
        try:
            data = json.loads(path.read_text())
            return cls(url=str(data["url"]), user=str(data["user"]), token=str(data["token"]))
        except (OSError, ValueError, KeyError) as exc:
            raise AuthenticationError("not logged in: run `telgate login --url URL --user NAME`") from exc

    def save(self) -> Path:
        """Write the session 0600 (the directory 0700)."""
        directory = config_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / "session.json"
        temp = path.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"url": self.url, "user": self.user, "token": self.token}, handle)
        temp.replace(path)
        return path

    @staticmethod
    def forget() -> None:
        """Delete the saved session."""
        (config_dir() / "session.json").unlink(missing_ok=True)


class AdminClient:
    """Blocking JSON client of the admin API."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send one request; the decoded JSON answer, or ApiError."""
        url = self.url + path
        if query:
            from urllib.parse import urlencode

            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        if not url.startswith(("http://", "https://")):
            raise BackendUnavailableError(f"server URL must start with http:// or https://: {self.url}")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - scheme checked above
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return dict(json.loads(response.read() or b"{}"))
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise BackendUnavailableError(f"cannot reach the gateway at {self.url}: {exc}") from exc

    def download(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        write: Callable[[bytes], None],
        progress: Callable[[int, int | None], None] | None = None,
        piece_size: int = 256 * 1024,
    ) -> dict[str, str]:
        """Send one request answered by a byte stream; hand each piece to ``write`` as it arrives.

        ``progress(received, total)`` follows the transfer (total from Content-Length, or None).
        Returns the response headers (lower-case names). Raises ``ApiError`` for an error answer and
        ``BackendUnavailableError`` when the connection fails or the body ends short of its length.
        """
        url = self.url + path
        if not url.startswith(("http://", "https://")):
            raise BackendUnavailableError(f"server URL must start with http:// or https://: {self.url}")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - scheme checked above
        request.add_header("Accept", "application/octet-stream")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        received = 0
        total: int | None = None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                headers = {name.lower(): value for name, value in response.headers.items()}
                total = int(headers["content-length"]) if "content-length" in headers else None
                if progress is not None:
                    progress(0, total)
                while piece := response.read(piece_size):
                    write(piece)
                    received += len(piece)
                    if progress is not None:
                        progress(received, total)
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise BackendUnavailableError(
                f"the transfer from {self.url} failed after {received} bytes: {type(exc).__name__}"
            ) from exc
        if total is not None and received != total:
            raise BackendUnavailableError(f"the transfer was cut off after {received} of {total} bytes")
        return headers

    @staticmethod
    def _error(exc: urllib.error.HTTPError) -> ApiError:
        try:
            payload = json.loads(exc.read())["error"]
            return ApiError(str(payload["code"]), str(payload["message"]), exc.code, payload.get("details"))
        except (ValueError, KeyError, TypeError):
            return ApiError("internal", f"HTTP {exc.code} {exc.reason}", exc.code)
