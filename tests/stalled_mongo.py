"""A TCP server that speaks just enough of MongoDB's wire protocol to be selected, then
stalls: it answers the handshake (``hello`` / ``isMaster``, over ``OP_QUERY`` or
``OP_MSG``), ``ping`` and ``endSessions``, and never answers anything else - a server that
hangs mid-operation, which ``serverSelectionTimeoutMS`` alone does not bound.
"""

from __future__ import annotations

import socket
import struct
import threading
from datetime import datetime, timezone

import bson

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
ANSWERED = {"hello", "ismaster", "ping", "endsessions", "buildinfo"}


def _hello() -> dict:
    return {"ismaster": True, "isWritablePrimary": True, "helloOk": True, "maxBsonObjectSize": 16 * 1024 * 1024,
            "maxMessageSizeBytes": 48_000_000, "maxWriteBatchSize": 100_000, "localTime": datetime.now(timezone.utc),
            "logicalSessionTimeoutMinutes": 30, "connectionId": 1, "minWireVersion": 0, "maxWireVersion": 21,
            "readOnly": False, "ok": 1.0}


class StalledMongo:
    """``with StalledMongo() as server:`` listens on ``server.port`` until the block ends."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.stalled: list[str] = []  # the commands it never answered
        self._stop = threading.Event()
        self._connections: list[socket.socket] = []

    def __enter__(self) -> "StalledMongo":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        for conn in self._connections:
            conn.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                header = _read(conn, 16)
                length, request_id, _, opcode = struct.unpack("<iiii", header)
                body = _read(conn, length - 16)
                command, reply = self._parse(opcode, body)
                name = next(iter(command), "").lower()
                if name not in ANSWERED:
                    self.stalled.append(name)
                    continue  # never answered: the client waits for as long as it lets itself
                answer = _hello() if name in ("hello", "ismaster") else {"ok": 1.0}
                conn.sendall(reply(request_id, bson.encode(answer)))
        except (OSError, ConnectionError):
            return

    @staticmethod
    def _parse(opcode: int, body: bytes):
        if opcode == OP_QUERY:  # flags, collection cstring, skip, limit, query document
            start = body.index(b"\0", 4) + 1 + 8
            return bson.decode(body[start:start + struct.unpack("<i", body[start:start + 4])[0]]), _op_reply
        if opcode == OP_MSG:  # flags, then section kind 0: the command document
            assert body[4] == 0, "only a kind-0 section first is understood"
            size = struct.unpack("<i", body[5:9])[0]
            return bson.decode(body[5:5 + size]), _op_msg
        raise ConnectionError(f"opcode {opcode} not understood")


def _op_reply(request_id: int, doc: bytes) -> bytes:
    payload = struct.pack("<iqii", 0, 0, 0, 1) + doc
    return struct.pack("<iiii", 16 + len(payload), 0, request_id, OP_REPLY) + payload


def _op_msg(request_id: int, doc: bytes) -> bytes:
    payload = struct.pack("<I", 0) + b"\0" + doc
    return struct.pack("<iiii", 16 + len(payload), 0, request_id, OP_MSG) + payload


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data
