"""A client for ``mbrl-gpu serve``, protocol version 1 (see ``docs/serve_protocol.md``).

Standard library only. One :class:`Client` holds one connection, and the server keeps one
planner state (the warm-started plan) per connection, so use one client per robot or per
concurrent episode. A client is not thread-safe: it sends a request and waits for its reply
before the next one.

    with Client("127.0.0.1:5555") as c:
        info = c.hello()
        c.reset()
        reply = c.act(obs)
        env.step(reply.action)
"""

import json
import socket
import struct
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

PROTOCOL_VERSION = 1
# L, the frame's length field, counts kind + id + body: 5 <= L <= 1 MiB.
MAX_FRAME = 1 << 20
HEADER = struct.Struct("<IBI")  # length, kind, request id

# Request kinds.
HELLO, RESET, ACT, ADD, SHUTDOWN = 0x01, 0x02, 0x03, 0x04, 0x05
# Reply kinds.
HELLO_OK, ACTION, OK, ERROR = 0x81, 0x82, 0x83, 0xFF

# ERROR codes after which the server closes the connection. The server may send them before
# it could read a request id (busy is sent on accept), so their id is not checked.
CLOSING_CODES = (5, 7)

_U32 = struct.Struct("<I")
_ACTION_HEAD = struct.Struct("<IIIf")  # flags, iterations, model version, planning ms
_ERROR_HEAD = struct.Struct("<H")

# ACTION flag bits.
FLAG_DEADLINE_HIT = 1 << 0
FLAG_FALLBACK = 1 << 1
FLAG_OUT_OF_RANGE = 1 << 2
FLAG_LATE = 1 << 3


class ServerError(Exception):
    """The server answered a request with an ERROR frame.

    ``code`` is the protocol's error code (1 malformed body, 2 non-finite value, 3 out of
    order, 4 unsupported version, 5 bad frame length, 6 unknown kind, 7 busy, 8 not
    supported, 9 internal planner error) and ``message`` the server's explanation.
    """

    def __init__(self, code: int, message: str):
        super().__init__(f"server error {code}: {message}")
        self.code = code
        self.message = message


class ProtocolError(ConnectionError):
    """The server's bytes do not follow the protocol (wrong id, kind or size).

    The stream can no longer be trusted, so the client closes the connection; this is a
    ConnectionError so that one ``except ConnectionError`` covers every lost connection.
    """


class Reply(NamedTuple):
    """The server's answer to :meth:`Client.act`."""

    action: List[float]
    flags: int
    deadline_hit: bool  # bit 0: the deadline cut planning short
    fallback: bool  # bit 1: no finite candidate; the previous plan, shifted, was used
    out_of_range: bool  # bit 2: the observation lies outside the model's training range
    iterations: int
    model_version: int
    plan_ms: float
    late: bool = False  # bit 3: the answer was ready only after the deadline


Transition = Tuple[Sequence[float], Sequence[float], float, Sequence[float], bool]


class Client:
    """One connection to ``mbrl-gpu serve``.

    ``address`` is ``"HOST:PORT"`` (TCP; ``"[::1]:PORT"`` for IPv6) or ``"unix:/path"``.
    ``timeout`` (seconds, ``None`` to wait forever) bounds the connect and every wait for
    bytes. A timeout or a lost connection in the middle of a request closes the client,
    since the reply may still arrive and would be taken for the next request's.
    """

    def __init__(self, address: str, timeout: Optional[float] = 10.0):
        self.address = address
        self.info: Optional[dict] = None  # HELLO_OK's JSON, once hello() succeeded
        self.obs_dim: Optional[int] = None
        self.act_dim: Optional[int] = None
        self._next_id = 1
        self._sock: Optional[socket.socket] = _connect(address, timeout)

    # -- context manager -----------------------------------------------------------------

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection (idempotent). The server drops this connection's plan."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    @property
    def closed(self) -> bool:
        return self._sock is None

    # -- requests ------------------------------------------------------------------------

    def hello(self) -> dict:
        """Sends HELLO (protocol version 1); returns the server's description as a dict.

        It holds ``obs_dim``, ``act_dim``, ``act_low``, ``act_high``, ``deadline_ms``,
        ``learning``, ``model_version``, ``planner``, …; ``obs_dim`` and ``act_dim`` are also
        kept on the client to check observations before they are sent.
        """
        body = self._request(HELLO, _U32.pack(PROTOCOL_VERSION), HELLO_OK)
        try:
            info = json.loads(body.decode("utf-8"))
            obs_dim, act_dim = int(info["obs_dim"]), int(info["act_dim"])
        except (ValueError, KeyError, TypeError) as e:
            self.close()
            raise ProtocolError(f"HELLO_OK is not the expected JSON object: {e}") from None
        if info.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
            self.close()
            raise ProtocolError(f"server speaks protocol {info.get('protocol')!r}, "
                                f"this client {PROTOCOL_VERSION}")
        self.info, self.obs_dim, self.act_dim = info, obs_dim, act_dim
        # Packing through a precompiled Struct keeps act() cheap.
        self._act_struct = struct.Struct(f"<f{obs_dim}f")
        self._action_values = struct.Struct(f"<{act_dim}f")
        return info

    def reset(self) -> None:
        """Marks the start of an episode: the next plan starts from the middle of the
        action bounds instead of the previous plan shifted by one step."""
        self._expect_ok(self._request(RESET, b"", OK))

    def act(self, obs: Sequence[float], deadline_ms: float = 0.0) -> Reply:
        """Plans from observation ``obs``; returns the action and how it was planned.

        ``deadline_ms`` 0 means the server's ``--deadline-ms``. Raises ValueError, without
        sending anything, when ``len(obs)`` is not the server's ``obs_dim``.
        """
        self._require_hello()
        if len(obs) != self.obs_dim:
            raise ValueError(f"observation has {len(obs)} values, the server expects "
                             f"obs_dim = {self.obs_dim}")
        body = self._request(ACT, self._act_struct.pack(deadline_ms, *obs), ACTION)
        if len(body) != _ACTION_HEAD.size + self._action_values.size:
            self.close()
            raise ProtocolError(f"ACTION body of {len(body)} bytes, expected "
                                f"{_ACTION_HEAD.size + self._action_values.size}")
        flags, iterations, model_version, plan_ms = _ACTION_HEAD.unpack_from(body)
        action = list(self._action_values.unpack_from(body, _ACTION_HEAD.size))
        return Reply(action, flags, bool(flags & FLAG_DEADLINE_HIT),
                     bool(flags & FLAG_FALLBACK), bool(flags & FLAG_OUT_OF_RANGE),
                     iterations, model_version, plan_ms, bool(flags & FLAG_LATE))

    def add(self, transitions: Iterable[Transition]) -> int:
        """Sends transitions ``(obs, act, reward, next_obs, terminated)`` for online learning;
        returns how many transitions the server now holds.

        Only servers whose hello says ``learning: true`` accept them (otherwise ServerError
        code 8). Batches too large for one frame go as several ADD frames. Raises ValueError,
        before anything is sent, for a transition of the wrong sizes.
        """
        self._require_hello()
        o, a = self.obs_dim, self.act_dim
        record = struct.Struct(f"<{o}f{a}ff{o}ff")
        records = []
        for i, (obs, act, reward, next_obs, terminated) in enumerate(transitions):
            if len(obs) != o or len(next_obs) != o or len(act) != a:
                raise ValueError(
                    f"transition {i}: sizes obs {len(obs)}, act {len(act)}, next_obs "
                    f"{len(next_obs)}; the server expects obs_dim {o}, act_dim {a}")
            records.append(record.pack(*obs, *act, reward, *next_obs,
                                       1.0 if terminated else 0.0))
        per_frame = (MAX_FRAME - 5 - _U32.size) // record.size
        held = self._add_frame(records[:per_frame])  # an empty ADD just reads the count
        for start in range(per_frame, len(records), per_frame):
            held = self._add_frame(records[start:start + per_frame])
        return held

    def shutdown(self) -> None:
        """Asks the server to stop gracefully (it saves a learned model first), then closes
        this client."""
        try:
            self._expect_ok(self._request(SHUTDOWN, b"", OK))
        finally:
            self.close()

    # -- framing -------------------------------------------------------------------------

    def _add_frame(self, records: list) -> int:
        body = _U32.pack(len(records)) + b"".join(records)
        return self._expect_ok(self._request(ADD, body, OK))

    def _require_hello(self) -> None:
        if self.obs_dim is None:
            raise RuntimeError("call hello() first: the observation size comes from the server")

    def _expect_ok(self, body: bytes) -> int:
        if len(body) != _U32.size:
            self.close()
            raise ProtocolError(f"OK body of {len(body)} bytes, expected 4")
        return _U32.unpack(body)[0]

    def _request(self, kind: int, body: bytes, expect: int) -> bytes:
        """Sends one request frame and returns the body of its reply of kind ``expect``."""
        if self._sock is None:
            raise ConnectionError("the client is closed")
        if 5 + len(body) > MAX_FRAME:
            raise ValueError(f"request of {5 + len(body)} bytes exceeds the 1 MiB frame limit")
        rid = self._next_id
        self._next_id = (rid + 1) & 0xFFFFFFFF
        try:
            # One sendall per frame: with TCP_NODELAY, header and body as separate writes
            # would go as two packets.
            self._sock.sendall(HEADER.pack(5 + len(body), kind, rid) + body)
            got_kind, got_id, reply = self._read_frame()
        except BaseException:
            # A half-sent request or half-read reply leaves the stream out of step.
            self.close()
            raise
        if got_kind == ERROR:
            if len(reply) < _ERROR_HEAD.size:
                self.close()
                raise ProtocolError(f"ERROR body of {len(reply)} bytes")
            code = _ERROR_HEAD.unpack_from(reply)[0]
            message = reply[_ERROR_HEAD.size:].decode("utf-8", errors="replace")
            if code in CLOSING_CODES:
                self.close()
            elif got_id != rid:
                self.close()
                raise ProtocolError(f"ERROR {code} ({message}) for request id {got_id}, "
                                    f"expected {rid}")
            raise ServerError(code, message)
        if got_id != rid:
            self.close()
            raise ProtocolError(f"reply for request id {got_id}, expected {rid}")
        if got_kind != expect:
            self.close()
            raise ProtocolError(f"reply of kind 0x{got_kind:02x}, expected 0x{expect:02x}")
        return reply

    def _read_frame(self) -> Tuple[int, int, bytes]:
        (length,) = _U32.unpack(self._recv_exactly(4, first=True))
        if not 5 <= length <= MAX_FRAME:
            raise ProtocolError(f"reply frame length {length} outside 5 … {MAX_FRAME}")
        rest = self._recv_exactly(length)
        kind, rid = rest[0], _U32.unpack_from(rest, 1)[0]
        return kind, rid, bytes(rest[5:])

    def _recv_exactly(self, n: int, first: bool = False) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._sock.recv_into(view[got:])
            if k == 0:
                where = ("before replying" if first and got == 0
                         else f"in the middle of a frame ({got} of {n} bytes read)")
                raise ConnectionError(f"the server at {self.address} closed the connection "
                                      f"{where}")
            got += k
        return buf


def _connect(address: str, timeout: Optional[float]) -> socket.socket:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address[len("unix:"):])
        except BaseException:
            sock.close()
            raise
        return sock
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address {address!r} is neither HOST:PORT nor unix:/path")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    # Requests are small and each waits for its reply: Nagle's algorithm would hold a
    # request back for the previous segment's ACK, adding up to a delayed-ACK period (40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
