"""Access-request routes (request, list, approve, deny, fetch) and the DPO's break-glass download.

The rules live in ``gateway.access``; this module maps them to HTTP and streams content::

    POST /v1/admin/recordings/{recording_id}/access-requests  {reason}       -> 201 request
    GET  /v1/admin/access-requests[?pending=1][&limit=N]                     -> {requests: [...]}
    POST /v1/admin/access-requests/{request_id}/approve  {note?}              -> 200 request (no password)
    POST /v1/admin/access-requests/{request_id}/deny     {reason}             -> 200 request
    POST /v1/admin/access-requests/{request_id}/fetch    {password}           -> 200 the recording, streamed
    POST /v1/admin/recordings/{recording_id}/break-glass {reason}             -> 200 the recording, streamed

Download data flow: the recording is opened (header and key verified) before the grant is claimed,
then read in ``PIECE_SIZE`` pieces in a worker thread (each piece verified by the envelope before it is
released; the next piece is decrypted while the previous one is sent) and written to the response.
Headers: ``Content-Length``, ``X-Telgate-Recording-Id``, ``X-Telgate-Sha256`` (of the plaintext, so
the client can check what it wrote), ``Cache-Control: no-store``. An error after the headers were sent
cannot become a JSON error: the connection is closed early, and the client sees a short body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from gateway.access import AccessRequest, AccessRequests, validate_id
from gateway.errors import BadRequestError
from gateway.operators import Operator
from gateway.routing import GATEWAY, admin_route, read_json, source_of
from vault.service import RecordingReader

log = logging.getLogger("telgate.http")

PIECE_SIZE = 1024 * 1024  # plaintext bytes decrypted and sent at a time
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 100_000


def _access(request: web.Request) -> AccessRequests:
    return request.app[GATEWAY].access


def _string(body: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"{key} is required and must be a string")
    return value


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON body, or an empty object when none was sent."""
    if not request.can_read_body:
        return {}
    return await read_json(request)


@admin_route("POST", "/v1/admin/recordings/{recording_id}/access-requests", "access.request")
async def create_request(request: web.Request, operator: Operator) -> web.Response:
    """Ask for access to one recording, with a reason."""
    recording_id = validate_id(request.match_info["recording_id"], "recording id")
    body = await _body(request)
    reason = _string(body, "reason")
    assert reason is not None
    access = _access(request)
    created = await asyncio.to_thread(access.request, operator, recording_id, reason, source_of(request))
    request.app[NOTIFIER].pending(created)
    gw = request.app[GATEWAY]
    return web.json_response(created.to_json(gw.clock.now()), status=201)


@admin_route("GET", "/v1/admin/access-requests", "access.list")
async def list_requests(request: web.Request, operator: Operator) -> web.Response:
    """A DPO's view of every request, or the caller's own; a new grant's password appears here once."""
    pending_only = request.query.get("pending", "").lower() in {"1", "true", "yes"}
    try:
        limit = int(request.query.get("limit", DEFAULT_LIST_LIMIT))
    except ValueError as exc:
        raise BadRequestError("limit must be a whole number") from exc
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise BadRequestError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
    gw = request.app[GATEWAY]
    listed = await asyncio.to_thread(
        gw.access.list, operator, pending_only=pending_only, source=source_of(request), limit=limit
    )
    now = gw.clock.now()
    items = []
    for entry in listed:
        item = entry.request.to_json(now)
        item["password"] = entry.password
        items.append(item)
    response = web.json_response({"requests": items})
    response.headers["Cache-Control"] = "no-store"
    return response


@admin_route("POST", "/v1/admin/access-requests/{request_id}/approve", "access.decide")
async def approve_request(request: web.Request, operator: Operator) -> web.Response:
    """Approve someone else's pending request (four eyes); the requester collects the password."""
    request_id = validate_id(request.match_info["request_id"], "request id")
    note = _string(await _body(request), "note", required=False)
    gw = request.app[GATEWAY]
    approved = await asyncio.to_thread(gw.access.approve, operator, request_id, note, source_of(request))
    return web.json_response(approved.to_json(gw.clock.now()))


@admin_route("POST", "/v1/admin/access-requests/{request_id}/deny", "access.decide")
async def deny_request(request: web.Request, operator: Operator) -> web.Response:
    """Deny someone else's pending request, with a reason."""
    request_id = validate_id(request.match_info["request_id"], "request id")
    reason = _string(await _body(request), "reason")
    assert reason is not None
    gw = request.app[GATEWAY]
    denied = await asyncio.to_thread(gw.access.deny, operator, request_id, reason, source_of(request))
    return web.json_response(denied.to_json(gw.clock.now()))


@admin_route("POST", "/v1/admin/access-requests/{request_id}/fetch", "access.fetch")
async def fetch_granted(request: web.Request, operator: Operator) -> web.StreamResponse:
    """Stream the granted recording to its requester, once."""
    request_id = validate_id(request.match_info["request_id"], "request id")
    password = _string(await _body(request), "password")
    assert password is not None
    gw = request.app[GATEWAY]
    source = source_of(request)
    grant = await asyncio.to_thread(gw.access.authorise_fetch, operator, request_id, password, source)
    reader = await asyncio.to_thread(gw.vault.open_reader, grant.recording_id)

    def claim() -> AccessRequest:
        try:
            return gw.access.claim(operator, grant, source)
        except BaseException:
            reader.close()
            raise

    claimed = await asyncio.to_thread(claim)
    return await stream_recording(
        request,
        reader,
        lambda sent, size: gw.access.fetch_finished(operator, claimed, sent, size, source),
    )


@admin_route("POST", "/v1/admin/recordings/{recording_id}/break-glass", "recordings.break_glass")
async def break_glass(request: web.Request, operator: Operator) -> web.StreamResponse:
    """The DPO reads a recording directly, with a mandatory reason; audited as break-glass."""
    recording_id = validate_id(request.match_info["recording_id"], "recording id")
    reason = _string(await _body(request), "reason")
    assert reason is not None
    gw = request.app[GATEWAY]
    source = source_of(request)

    clean_reason = " ".join(reason.split())

    def open_audited() -> RecordingReader:
        recording = gw.access.break_glass(operator, recording_id, reason, source)
        try:
            return gw.vault.open_reader(recording.recording_id)
        except Exception:
            gw.access.break_glass_finished(
                operator, recording_id, clean_reason, 0, recording.size, source, outcome="failed"
            )
            raise

    reader = await asyncio.to_thread(open_audited)
    return await stream_recording(
        request,
        reader,
        lambda sent, size: gw.access.break_glass_finished(operator, recording_id, clean_reason, sent, size, source),
    )


class Transfers:
    """Downloads in flight on this node; ``idle()`` waits until each has written its final audit entry.

    The client may hold every byte before the server has recorded the outcome, so shutdown (and a test
    that reads the audit trail) waits here rather than guessing.
    """

    def __init__(self) -> None:
        self._running = 0
        self._changed = asyncio.Condition()

    async def started(self) -> None:
        """Count one transfer in."""
        async with self._changed:
            self._running += 1

    async def ended(self) -> None:
        """Count one transfer out (after its outcome was audited)."""
        async with self._changed:
            self._running -= 1
            self._changed.notify_all()

    async def idle(self) -> None:
        """Return once no transfer is in flight."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._running == 0)


TRANSFERS: web.AppKey[Transfers] = web.AppKey("access_transfers", Transfers)


async def stream_recording(
    request: web.Request, reader: RecordingReader, finished: Callable[[int, int], None]
) -> web.StreamResponse:
    """Send the reader's plaintext as the response body; ``finished(sent, size)`` is always called."""
    transfers = request.app[TRANSFERS]
    await transfers.started()
    try:
        return await _stream(request, reader, finished)
    finally:
        await transfers.ended()


async def _stream(
    request: web.Request, reader: RecordingReader, finished: Callable[[int, int], None]
) -> web.StreamResponse:
    size = reader.size
    recording = reader.recording
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{recording.recording_id}"',
            "Cache-Control": "no-store",
            "X-Telgate-Recording-Id": recording.recording_id,
            "X-Telgate-Sha256": recording.sha256,
            "X-Telgate-Content-Type": recording.content_type,
        }
    )
    response.content_length = size
    response.force_close()  # one download per connection: a short body then ends it for sure
    sent = 0
    pending: asyncio.Future[bytes] | None = None
    try:
        await response.prepare(request)
        if size:
            pending = asyncio.ensure_future(asyncio.to_thread(reader.read_at, 0, min(PIECE_SIZE, size)))
        while pending is not None:
            piece = await pending
            pending = None
            if not piece:
                raise RuntimeError(f"recording {recording.recording_id} ended early at byte {sent}")
            offset = sent + len(piece)
            if offset < size:  # decrypt the next piece while this one is sent
                pending = asyncio.ensure_future(
                    asyncio.to_thread(reader.read_at, offset, min(PIECE_SIZE, size - offset))
                )
            await response.write(piece)
            sent = offset
        await response.write_eof()
    except Exception as exc:
        log.warning(
            "download of %s stopped after %d of %d bytes: %s", recording.recording_id, sent, size, type(exc).__name__
        )
        if request.transport is not None:
            request.transport.close()  # the client sees a short body, never a silent success
    finally:
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)
        # Runs in a worker thread that completes even if this task is cancelled (client gone).
        await asyncio.to_thread(_finish, reader, finished, sent, size)
    return response


def _finish(reader: RecordingReader, finished: Callable[[int, int], None], sent: int, size: int) -> None:
    try:
        reader.close()
    finally:
        finished(sent, size)


# --- DPO notification ----------------------------------------------------------------------------


class WebhookNotifier:
    """Tells DPOs that a request waits, by POSTing to ``access.webhook_url`` (if set), with retries.

    The payload names the request and the recording only: ``{"event": "access.request.pending",
    "request_id", "recording_id"}``, no names, reasons or numbers. Delivery runs in the background and
    never delays or fails the request; a delivery that fails every attempt is logged.
    """

    retry_delay = 1.0  # seconds before the second attempt, doubled after each failure

    def __init__(self, url: str, attempts: int, timeout: float = 10.0) -> None:
        self.url = url
        self.attempts = attempts
        self.timeout = timeout
        self._tasks: set[asyncio.Task[bool]] = set()

    def pending(self, created: AccessRequest) -> None:
        """Schedule the notification of a new pending request (no-op without a URL)."""
        if not self.url:
            return
        payload = {
            "event": "access.request.pending",
            "request_id": created.request_id,
            "recording_id": created.recording_id,
        }
        task = asyncio.create_task(self.deliver(payload), name=f"telgate-webhook-{created.request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(self, payload: dict[str, str]) -> bool:
        """POST ``payload`` until a 2xx answer or the attempts run out; True when delivered."""
        delay = self.retry_delay
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        for attempt in range(1, self.attempts + 1):
            try:
                async with (
                    aiohttp.ClientSession(timeout=timeout) as session,
                    session.post(self.url, json=payload) as response,
                ):
                    if 200 <= response.status < 300:
                        return True
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            log.warning(
                "access webhook for %s: attempt %d of %d failed (%s)",
                payload["request_id"],
                attempt,
                self.attempts,
                problem,
            )
            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        log.error("access webhook for %s was not delivered", payload["request_id"])
        return False

    async def drain(self) -> None:
        """Cancel deliveries still running (shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


NOTIFIER: web.AppKey[WebhookNotifier] = web.AppKey("access_notifier", WebhookNotifier)


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    yield
    try:
        await asyncio.wait_for(app[TRANSFERS].idle(), timeout=30)
    except TimeoutError:
        log.warning("shutting down with downloads still in flight")
    await app[NOTIFIER].drain()


def setup(app: web.Application) -> None:
    """The DPO notifier and the transfer count (access routes are admin routes: they register themselves)."""
    settings = app[GATEWAY].settings.access
    app[NOTIFIER] = WebhookNotifier(settings.webhook_url.reveal(), settings.webhook_attempts)
    app[TRANSFERS] = Transfers()
    app.cleanup_ctx.append(_lifetime)
