"""The local control endpoint: JSON lines over a Unix socket (protocols/control.md).

The socket lives at `config.control_path` with mode 0600 (only the node's user may talk to it).
A client writes one JSON object per line, `{"cmd": "peers"}` or `{"cmd": "status"}`, and reads
one JSON object per line back: `{"ok": true, ...}` or `{"ok": false, "error": code,
"message": text}`. Lines are capped at `MAX_LINE` bytes; a longer line gets an error and the
connection is closed. `query_control(path, cmd)` is the client the command line uses.

The server needs only a `ControlTarget` (the node's peer table and its status summary), so
this module knows nothing of the node that composes it.
"""

from __future__ import annotations

import json
import logging
import os
import socket as _socket
from pathlib import Path
from typing import Any, Protocol

import trio

from p2pinfer.errors import P2PInferError
from p2pinfer.net.peertable import PeerInfo

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
#: replies can hold the whole peer table
MAX_REPLY_LINE = 16 * 1024 * 1024
COMMANDS = ("peers", "status")
CLIENT_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 60.0


class ControlTarget(Protocol):
    """What the control socket reports on."""

    def peers(self) -> list[PeerInfo]:
        """Peers with a valid, unexpired advert."""
        ...

    def status(self) -> dict[str, Any]:
        """A JSON-able summary of the node (identity, addresses, counters...)."""
        ...


class ControlError(P2PInferError):
    """The control socket is unreachable, or it answered with an error."""

    def __init__(self, message: str, code: str = "control") -> None:
        super().__init__(message)
        self.code = code


class _LineTooLong(ControlError):
    pass


class _LineReader:
    def __init__(self, stream: trio.abc.Stream, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.buf = bytearray()

    async def readline(self) -> bytes | None:
        """One line without its newline; None at a clean end of stream."""
        while True:
            i = self.buf.find(b"\n")
            if i > self.limit or (i < 0 and len(self.buf) > self.limit):
                raise _LineTooLong(f"line longer than {self.limit} bytes", "too-large")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return line
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                if self.buf:
                    raise ControlError("connection closed inside a line", "bad-request")
                return None
            self.buf += chunk


def answer(target: ControlTarget, line: bytes) -> dict[str, Any]:
    """The reply to one request line (errors included, as reply objects)."""
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return {"ok": False, "error": "bad-request", "message": "request is not JSON"}
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        return {"ok": False, "error": "bad-request", "message": 'expected {"cmd": "..."}'}
    cmd = req["cmd"]
    if cmd == "peers":
        return {"ok": True, "peers": [_peer_row(p) for p in target.peers()]}
    if cmd == "status":
        return {"ok": True, **target.status()}
    return {
        "ok": False,
        "error": "unknown-command",
        "message": f"unknown command {cmd[:64]!r}; known: {', '.join(COMMANDS)}",
    }


def _peer_row(p: PeerInfo) -> dict[str, Any]:
    """A peer table row with its verified TEE level or the failed check (`tee_level` /
    `tee_error`, from the node's attestation service)."""
    row = p.to_dict()
    for key in ("tee_level", "tee_error"):
        if key in p.extra:
            row[key] = p.extra[key]
    return row


async def _serve_client(target: ControlTarget, stream: trio.SocketStream) -> None:
    reader = _LineReader(stream, MAX_LINE)
    async with stream:
        try:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT_S) as idle:
                    line = await reader.readline()
                if idle.cancelled_caught or line is None:
                    return
                reply = answer(target, line)
                await stream.send_all(json.dumps(reply).encode() + b"\n")
        except _LineTooLong as e:
            msg = {"ok": False, "error": e.code, "message": str(e)}
            try:
                await stream.send_all(json.dumps(msg).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        except (ControlError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.debug("control client dropped: %s", e)


async def serve_control(
    target: ControlTarget, path: Path, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on `path` (mode 0600) until cancelled; the socket file is removed on exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(os.fsencode(path)) >= 104:
        raise ControlError(f"{path}: control socket path is too long for a Unix socket")
    if path.is_socket():
        path.unlink()  # left over from a node that did not shut down
    elif path.exists():
        raise ControlError(f"{path}: exists and is not a socket; refusing to replace it")
    sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(path))
        # nobody can connect before listen(), so there is no window with a wider mode
        os.chmod(path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
    except BaseException:
        sock.close()
        raise
    try:
        async with listener, trio.open_nursery() as nursery:
            task_status.started(path)
            while True:
                stream = await listener.accept()
                nursery.start_soon(_serve_client, target, stream)
    finally:
        try:
            path.unlink()
        except OSError:
            pass


async def query_control(path: str | os.PathLike[str], cmd: str, **args: Any) -> dict[str, Any]:
    """Send one command to a running node's control socket and return its reply.

    Raises `ControlError` if the node is not running or answers with an error.
    """
    req = json.dumps({"cmd": cmd, **args}).encode() + b"\n"
    if len(req) > MAX_LINE:
        raise ControlError("request is too long", "too-large")
    try:
        with trio.fail_after(CLIENT_TIMEOUT_S):
            stream = await trio.open_unix_socket(os.fspath(path))
            async with stream:
                await stream.send_all(req)
                line = await _LineReader(stream, MAX_REPLY_LINE).readline()
    except trio.TooSlowError:
        raise ControlError(f"{path}: the node did not answer in {CLIENT_TIMEOUT_S} s") from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(
            f"{path}: no node is running (no control socket)", "not-running"
        ) from None
    except OSError as e:
        raise ControlError(f"{path}: cannot reach the node ({e.strerror or e})") from None
    except trio.BrokenResourceError:  # the node died while answering
        raise ControlError(f"{path}: the connection broke before the node answered") from None
    if line is None:
        raise ControlError(f"{path}: the node closed the connection without answering")
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(f"{path}: the node answered with something that is not JSON") from None
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: the node's answer is not a JSON object")
    if not reply.get("ok"):
        raise ControlError(
            str(reply.get("message", "error"))[:300], str(reply.get("error", "error"))
        )
    return reply
