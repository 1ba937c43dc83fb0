"""Recording upload (PBX side) and the vault's admin routes: list, keys, rotation, retirement, verify.

Upload data flow (``PUT /v1/recordings/{call_id}``)::

    socket --aiohttp--> request.content --1 MiB pieces (views, no copy)--> RecordingUpload.write_parts
                        on an upload thread; the next piece is received while the previous one is encrypted
    end of body --> RecordingUpload.commit (fsync, key row) --> 201 {recording_id, call_id, size, sha256}

The body is never buffered whole and never written in plaintext. ``Expect: 100-continue`` clients
(curl) are refused before they send the body when unauthenticated or over ``vault.max_recording_bytes``.

Long admin work (rotation, verification) runs on the server. A client that sends
``Accept: application/x-ndjson`` receives progress lines ``{"progress": {"done", "total", "unit"}}`` and
then one ``{"result": ...}`` line (or ``{"error": ...}``); any other client gets the result as one JSON
document.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.web_urldispatcher import _default_expect_handler

from gateway.errors import AuthenticationError, BadRequestError, NotFoundError, error_code
from gateway.operators import Operator
from gateway.principals import Pbx
from gateway.routing import GATEWAY, admin_route, json_error, source_of
from vault.errors import KeyNotFoundError
from vault.service import (
    IntegrityReport,
    KeyVersionInfo,
    Progress,
    Recording,
    RecordingTooLargeError,
    RotateReport,
)

log = logging.getLogger("telgate.http")

PIECE_SIZE = 1024 * 1024  # bytes handed to the encrypting thread at a time
# Uploads encrypt and fsync on threads of their own, so that many large uploads at once queue among
# themselves instead of filling the default executor that logins, ingest and the audit trail use.
UPLOAD_THREADS = ThreadPoolExecutor(max_workers=max(4, 2 * (os.cpu_count() or 2)), thread_name_prefix="upload")
MAX_CALL_ID_LENGTH = 128
MAX_CONTENT_TYPE_LENGTH = 255
DEFAULT_CONTENT_TYPE = "application/octet-stream"
NDJSON = "application/x-ndjson"
DEFAULT_LIST_LIMIT = 1000


def validate_call_id(call_id: str) -> str:
    """A PBX call id: 1 to 128 printable characters, no ``/`` (Asterisk uniqueid, SIP Call-ID, ...)."""
    if not call_id or len(call_id) > MAX_CALL_ID_LENGTH:
        raise BadRequestError(f"call id must be 1 to {MAX_CALL_ID_LENGTH} characters")
    if not call_id.isprintable() or "/" in call_id or "\\" in call_id:
        raise BadRequestError("call id must be printable and must not contain / or \\")
    return call_id


def _content_type(request: web.Request) -> str:
    value = request.headers.get("Content-Type", "").strip() or DEFAULT_CONTENT_TYPE
    if len(value) > MAX_CONTENT_TYPE_LENGTH or not value.isprintable():
        raise BadRequestError("Content-Type is too long or not printable")
    return value


def recording_json(recording: Recording) -> dict[str, Any]:
    """A recording's metadata as the admin API shows it (never content or key material)."""
    return {
        "recording_id": recording.recording_id,
        "tenant": recording.tenant,
        "pbx": recording.pbx,
        "call_id": recording.call_id,
        "content_type": recording.content_type,
        "size": recording.size,
        "sha256": recording.sha256,
        "received_at": recording.received_at.isoformat(),
        "shredded_at": recording.shredded_at.isoformat() if recording.shredded_at else None,
        "shred_reason": recording.shred_reason,
    }


# --- PBX upload ----------------------------------------------------------------------------------


async def _pbx(request: web.Request) -> Pbx:
    gw = request.app[GATEWAY]
    pbx = await asyncio.to_thread(gw.principals.authenticate_pbx, request.headers.get("Authorization"))
    if pbx is None:
        log.warning("recording upload refused: bad PBX credentials from %s", source_of(request))
        raise AuthenticationError()
    return pbx


def _check_declared_size(request: web.Request) -> None:
    limit = request.app[GATEWAY].vault.max_recording_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RecordingTooLargeError(f"the recording exceeds the maximum of {limit} bytes")


async def expect_upload(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue`` only for an authenticated PBX and an acceptable size."""
    try:
        await _pbx(request)
        validate_call_id(request.match_info["call_id"])
        _check_declared_size(request)
    except Exception as exc:
        return json_error(exc)
    await _default_expect_handler(request)
    return None


class BodyPieces:
    """The request body as pieces of at most ``size`` bytes: views of aiohttp's buffers, never copied."""

    def __init__(self, content: StreamReader, size: int) -> None:
        self._content = content
        self._size = size
        self._carry: memoryview | None = None

    async def next(self) -> list[memoryview]:
        """The next piece as a list of consecutive views; empty at the end of the body."""
        parts: list[memoryview] = []
        got = 0
        if self._carry is not None:
            parts.append(self._carry[: self._size])
            got = len(parts[0])
            self._carry = self._carry[self._size :] or None
        while got < self._size and self._carry is None:
            # readchunk hands over one received buffer as it is; readany would join all buffered ones
            # into a fresh copy (a new 0.75 MB allocation per call under load).
            chunk, end_of_http_chunk = await self._content.readchunk()
            if not chunk:
                if end_of_http_chunk and not self._content.at_eof():
                    continue  # a chunk boundary of Transfer-Encoding: chunked, not the end
                break
            view = memoryview(chunk)
            room = self._size - got
            if len(view) > room:
                view, self._carry = view[:room], view[room:]
            parts.append(view)
            got += len(view)
        return parts


async def put_recording(request: web.Request) -> web.Response:
    """Receive a recording, streamed and encrypted on the fly; 201 when new, 200 for a duplicate."""
    gw = request.app[GATEWAY]
    pbx = await _pbx(request)
    call_id = validate_call_id(request.match_info["call_id"])
    content_type = _content_type(request)
    _check_declared_size(request)
    loop = asyncio.get_running_loop()
    begin = functools.partial(
        gw.vault.begin_upload,
        tenant=pbx.tenant,
        pbx=pbx.name,
        call_id=call_id,
        content_type=content_type,
        source=source_of(request),
    )
    upload = await loop.run_in_executor(UPLOAD_THREADS, begin)
    body = BodyPieces(request.content, PIECE_SIZE)
    pending: asyncio.Future[None] | None = None
    try:
        while True:
            piece = await body.next()  # received while the previous piece is being encrypted
            if pending is not None:
                await pending
                pending = None
            if not piece:
                break
            pending = loop.run_in_executor(UPLOAD_THREADS, upload.write_parts, piece)
        result = await loop.run_in_executor(UPLOAD_THREADS, upload.commit)
    except BaseException:
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)
        await loop.run_in_executor(UPLOAD_THREADS, upload.abort)
        raise
    recording = result.recording
    if not result.created:
        await asyncio.to_thread(
            gw.audit.append,
            actor=pbx.name,
            role="pbx",
            action="recording.store",
            object=recording.recording_id,
            outcome="duplicate",
            source=source_of(request),
            details={"tenant": pbx.tenant, "call_id": call_id},
        )
    answer = {
        "recording_id": recording.recording_id,
        "call_id": recording.call_id,
        "size": recording.size,
        "sha256": recording.sha256,
    }
    return web.json_response(answer, status=201 if result.created else 200)


# --- long work with progress ---------------------------------------------------------------------


async def run_with_progress(
    request: web.Request, unit: str, work: Callable[[Progress], Any], render: Callable[[Any], dict[str, Any]]
) -> web.StreamResponse:
    """Run ``work`` in a thread; stream NDJSON progress when the client asks for it."""
    if NDJSON not in request.headers.get("Accept", ""):
        return web.json_response(render(await asyncio.to_thread(work, lambda done, total: None)))
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    def progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(updates.put_nowait, (done, total))

    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    task = asyncio.ensure_future(asyncio.to_thread(work, progress))

    async def send(update: tuple[int, int]) -> None:
        while not updates.empty():  # only the latest state matters
            update = updates.get_nowait()
        line = {"progress": {"done": update[0], "total": update[1], "unit": unit}}
        await response.write(json.dumps(line).encode() + b"\n")

    try:
        while not task.done():
            getter = asyncio.ensure_future(updates.get())
            finished, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in finished:
                await send(getter.result())
            else:
                getter.cancel()
        if not updates.empty():
            await send(updates.get_nowait())
    except BaseException:
        # The client went away: the work still completes (and audits) in its thread.
        task.add_done_callback(lambda finished: finished.cancelled() or finished.exception())
        raise
    try:
        line = {"result": render(task.result())}
    except Exception as exc:
        if error_code(exc) == "internal":
            log.exception("%s %s failed", request.method, request.path)
        line = json.loads(json_error(exc).text or "{}")
    await response.write(json.dumps(line).encode() + b"\n")
    await response.write_eof()
    return response


# --- admin routes --------------------------------------------------------------------------------


def _parse_since(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise BadRequestError(f"since must be an ISO 8601 date or time: {raw!r}") from exc
    if moment.tzinfo is None:
        if len(raw) == 10:  # a date: midnight UTC
            return moment.replace(tzinfo=UTC)
        raise BadRequestError("since needs a time zone offset (e.g. 2026-01-01T00:00:00+00:00) or a date")
    return moment


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIST_LIMIT
    try:
        limit = int(raw)
    except ValueError as exc:
        raise BadRequestError("limit must be a whole number") from exc
    if not 1 <= limit <= 100_000:
        raise BadRequestError("limit must be between 1 and 100000")
    return limit


@admin_route("GET", "/v1/admin/recordings", "recordings.list")
async def list_recordings(request: web.Request, operator: Operator) -> web.Response:
    """Recordings' metadata (never content), oldest first; the listing is audited."""
    gw = request.app[GATEWAY]
    tenant = request.query.get("tenant") or None
    since = _parse_since(request.query.get("since"))
    include_shredded = request.query.get("include_shredded", "").lower() in {"1", "true", "yes"}
    limit = _parse_limit(request.query.get("limit"))

    def listing() -> list[Recording]:
        found = gw.vault.list_recordings(tenant=tenant, since=since, include_shredded=include_shredded, limit=limit)
        gw.audit.append(
            actor=operator.name,
            role=operator.role,
            action="recordings.list",
            source=source_of(request),
            details={"tenant": tenant, "since": since.isoformat() if since else None, "count": len(found)},
        )
        return found

    found = await asyncio.to_thread(listing)
    return web.json_response({"recordings": [recording_json(r) for r in found], "limit": limit})


def keys_json(versions: list[KeyVersionInfo]) -> dict[str, Any]:
    """Master-key versions and key-row counts as the API shows them (never key material)."""
    current = next((v.version for v in versions if v.state == "current"), None)
    return {
        "current_version": current,
        "versions": [{"version": v.version, "state": v.state, "rows": v.rows} for v in versions],
    }


@admin_route("GET", "/v1/admin/keys", "keys.list")
async def list_keys(request: web.Request, operator: Operator) -> web.Response:
    """Master-key versions and how many key rows each wraps."""
    gw = request.app[GATEWAY]
    return web.json_response(keys_json(await asyncio.to_thread(gw.vault.key_versions)))


def rotate_json(report: RotateReport) -> dict[str, Any]:
    """The outcome of a rotation."""
    return {
        "version": report.version,
        "previous_version": report.previous_version,
        "total": report.total,
        "rewrapped": report.rewrapped,
        "failed": list(report.failed),
    }


@admin_route("POST", "/v1/admin/keys/rotate", "keys.rotate")
async def rotate_keys(request: web.Request, operator: Operator) -> web.StreamResponse:
    """Add a master-key version and rewrap every key row under it (recordings are not touched)."""
    gw = request.app[GATEWAY]

    def rotate(progress: Progress) -> RotateReport:
        report = gw.vault.rotate(progress)
        gw.audit.append(
            actor=operator.name,
            role=operator.role,
            action="keys.rotate",
            object=f"master-key-v{report.version}",
            outcome="ok" if not report.failed else "partial",
            source=source_of(request),
            details={"rewrapped": report.rewrapped, "failed": len(report.failed)},
        )
        return report

    return await run_with_progress(request, "rows", rotate, lambda report: rotate_json(report))


@admin_route("POST", "/v1/admin/keys/{version}/retire", "keys.retire")
async def retire_key(request: web.Request, operator: Operator) -> web.Response:
    """Destroy a master-key version that no key row uses any more."""
    gw = request.app[GATEWAY]
    try:
        version = int(request.match_info["version"])
    except ValueError as exc:
        raise BadRequestError("version must be a whole number") from exc

    def retire() -> None:
        try:
            gw.vault.retire(version)
        except KeyNotFoundError as exc:
            raise NotFoundError(f"no master key version {version} (unknown or already retired)") from exc
        gw.audit.append(
            actor=operator.name,
            role=operator.role,
            action="keys.retire",
            object=f"master-key-v{version}",
            source=source_of(request),
        )

    await asyncio.to_thread(retire)
    return web.json_response({"version": version, "retired": True})


def integrity_json(report: IntegrityReport) -> dict[str, Any]:
    """The outcome of a vault verification."""
    return {
        "ok": report.ok,
        "checked": report.checked,
        "bytes_checked": report.bytes_checked,
        "damaged": [{"recording_id": d.recording_id, "problem": d.problem} for d in report.damaged],
    }


@admin_route("POST", "/v1/admin/vault/verify", "vault.verify")
async def verify_vault(request: web.Request, operator: Operator) -> web.StreamResponse:
    """Authenticate every live recording's header and chunks; 200 with ok=false when any is damaged."""
    gw = request.app[GATEWAY]

    def verify(progress: Progress) -> IntegrityReport:
        report = gw.vault.verify(progress)
        gw.audit.append(
            actor=operator.name,
            role=operator.role,
            action="vault.verify",
            outcome="ok" if report.ok else "damaged",
            source=source_of(request),
            details={"checked": report.checked, "damaged": [d.recording_id for d in report.damaged][:100]},
        )
        return report

    return await run_with_progress(request, "bytes", verify, lambda report: integrity_json(report))


def setup(app: web.Application) -> None:
    """Add the PBX upload route."""
    app.router.add_put("/v1/recordings/{call_id}", put_recording, expect_handler=expect_upload)
