"""Tests of the Python client against a fake ``mbrl-gpu serve`` running in a thread.

    python3 -m unittest discover -s python/tests -v

The fake server decodes frames with its own code (not the client's), so a framing mistake in
the client shows up as a mismatch here rather than cancelling out.
"""

import json
import math
import os
import socket
import socketserver
import struct
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mbrl_gpu import Client, ProtocolError, Reply, ServerError  # noqa: E402

OBS_DIM, ACT_DIM = 3, 1


def frame(kind, rid, body=b""):
    return struct.pack("<IBI", 5 + len(body), kind, rid) + body


def error(rid, code, message):
    return frame(0xFF, rid, struct.pack("<H", code) + message.encode())


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class Handler(socketserver.BaseRequestHandler):
    """Speaks protocol version 1 for one connection. The server's ``script`` (a dict from
    request kind to a function(handler, rid, body) -> bytes or None) overrides a kind's
    answer; None means the function closed the connection."""

    def handle(self):
        srv = self.server
        sock = self.request
        if srv.busy:
            # As a real server should: answer, stop writing, drain, then close, so that the
            # client's HELLO does not turn the close into a reset that discards the ERROR.
            sock.sendall(error(0, 7, "busy: 1 connections are open"))
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(1.0)
            while sock.recv(4096):
                pass
            return
        said_hello = False
        while True:
            head = recv_exactly(sock, 4)
            if head is None:
                return
            (length,) = struct.unpack("<I", head)
            rest = recv_exactly(sock, length)
            kind, rid = struct.unpack_from("<BI", rest)
            body = rest[5:]
            srv.frames.append((length, kind, rid, body))
            if kind in srv.script:
                out = srv.script[kind](self, rid, body)
                if out is None:
                    return
                sock.sendall(out)
                continue
            if kind == 0x01:
                if said_hello:
                    out = error(rid, 3, "second HELLO")
                elif struct.unpack("<I", body)[0] != 1:
                    out = error(rid, 4, "unsupported protocol version")
                else:
                    said_hello = True
                    out = frame(0x81, rid, json.dumps(srv.hello).encode())
            elif not said_hello:
                out = error(rid, 3, "HELLO must come first")
            elif kind == 0x02:
                out = frame(0x83, rid, struct.pack("<I", 0))
            elif kind == 0x03:
                out = self.act(rid, body)
            elif kind == 0x04:
                (n,) = struct.unpack_from("<I", body)
                rec = 4 * (2 * OBS_DIM + ACT_DIM + 2)
                if len(body) != 4 + n * rec:
                    out = error(rid, 1, "ADD body of the wrong size")
                else:
                    for i in range(n):
                        srv.added.append(struct.unpack_from(f"<{rec // 4}f", body, 4 + i * rec))
                    out = frame(0x83, rid, struct.pack("<I", len(srv.added)))
            elif kind == 0x05:
                sock.sendall(frame(0x83, rid, struct.pack("<I", 0)))
                return
            else:
                out = error(rid, 6, f"unknown kind {kind}")
            sock.sendall(out)

    def act(self, rid, body):
        if len(body) != 4 * (1 + OBS_DIM):
            return error(rid, 1, "ACT body of the wrong size")
        deadline, *obs = struct.unpack(f"<f{OBS_DIM}f", body)
        if not all(math.isfinite(v) for v in [deadline, *obs]):
            return error(rid, 2, "non-finite observation")
        # flags, iterations, model version, planning ms, then the action: -obs[0], clipped.
        action = max(-2.0, min(2.0, -obs[0]))
        return frame(0x82, rid, struct.pack("<IIIf1f", self.server.flags, 5, 7, 1.5, action))


class FakeServerMixin:
    def configure(self):
        srv = self
        srv.frames = []
        srv.added = []
        srv.script = {}
        srv.flags = 0
        srv.busy = False
        srv.hello = {"protocol": 1, "server": "mbrl-gpu 0.1.0", "env": "pendulum",
                     "dynamics": "true", "obs_dim": OBS_DIM, "act_dim": ACT_DIM,
                     "act_low": [-2.0], "act_high": [2.0], "deadline_ms": 10.0,
                     "learning": True, "model_version": 0,
                     "planner": {"optimizer": "cem", "horizon": 30}}


class TcpServer(FakeServerMixin, socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.server = TcpServer(("127.0.0.1", 0), Handler)
        self.server.configure()
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        host, port = self.server.server_address
        self.address = f"{host}:{port}"
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            c.close()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def client(self, hello=True):
        c = Client(self.address, timeout=5.0)
        self.clients.append(c)
        if hello:
            c.hello()
        return c

    def test_hello_frame_and_info(self):
        c = self.client(hello=False)
        info = c.hello()
        self.assertEqual(info["planner"]["optimizer"], "cem")
        self.assertEqual((c.obs_dim, c.act_dim), (OBS_DIM, ACT_DIM))
        # length 9 = kind + id + u32 version; the first request id is 1.
        self.assertEqual(self.server.frames, [(9, 0x01, 1, struct.pack("<I", 1))])

    def test_tcp_nodelay(self):
        c = self.client(hello=False)
        self.assertNotEqual(c._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)

    def test_ids_increment_and_act_body(self):
        c = self.client()
        c.reset()
        r = c.act([0.5, -0.25, 3.0], deadline_ms=4.0)
        self.assertEqual([f[2] for f in self.server.frames], [1, 2, 3])
        length, kind, _, body = self.server.frames[2]
        self.assertEqual((length, kind), (5 + 16, 0x03))
        self.assertEqual(struct.unpack("<4f", body), (4.0, 0.5, -0.25, 3.0))
        self.assertEqual(self.server.frames[1][:2], (5, 0x02))
        self.assertIsInstance(r, Reply)
        self.assertEqual(r.action, [-0.5])
        self.assertEqual((r.iterations, r.model_version, r.plan_ms), (5, 7, 1.5))

    def test_flags(self):
        c = self.client()
        for flags in range(16):
            self.server.flags = flags
            r = c.act([0.0, 0.0, 0.0])
            self.assertEqual(r.flags, flags)
            self.assertEqual((r.deadline_hit, r.fallback, r.out_of_range, r.late),
                             (bool(flags & 1), bool(flags & 2), bool(flags & 4),
                              bool(flags & 8)))

    def test_wrong_observation_length_sends_nothing(self):
        c = self.client()
        with self.assertRaises(ValueError):
            c.act([1.0, 2.0])
        with self.assertRaises(ValueError):
            c.add([([0.0] * 3, [0.0], 0.0, [0.0] * 2, False)])
        self.assertEqual(len(self.server.frames), 1)  # only HELLO
        c.act([1.0, 2.0, 3.0])  # the connection is still in step
        self.assertEqual(self.server.frames[-1][2], 2)

    def test_act_before_hello(self):
        c = self.client(hello=False)
        with self.assertRaises(RuntimeError):
            c.act([0.0, 0.0, 0.0])
        with self.assertRaises(ServerError) as cm:
            c.reset()
        self.assertEqual(cm.exception.code, 3)

    def test_server_error_keeps_connection(self):
        c = self.client()
        with self.assertRaises(ServerError) as cm:
            c.act([float("nan"), 0.0, 0.0])
        self.assertEqual(cm.exception.code, 2)
        self.assertEqual(cm.exception.message, "non-finite observation")
        self.assertIn("non-finite", str(cm.exception))
        self.assertFalse(c.closed)
        self.assertEqual(c.act([1.0, 0.0, 0.0]).action, [-1.0])

    def test_busy_error_without_request_id(self):
        self.server.busy = True
        c = self.client(hello=False)
        with self.assertRaises(ServerError) as cm:
            c.hello()
        self.assertEqual(cm.exception.code, 7)
        self.assertTrue(c.closed)
        with self.assertRaises(ConnectionError):
            c.reset()

    def test_add_and_chunking(self):
        c = self.client()
        t = ([0.1, 0.2, 0.3], [1.5], -2.0, [0.4, 0.5, 0.6], True)
        self.assertEqual(c.add([t, t]), 2)
        self.assertEqual(self.server.added[0],
                         struct.unpack("<9f", struct.pack("<9f", 0.1, 0.2, 0.3, 1.5, -2.0,
                                                          0.4, 0.5, 0.6, 1.0)))
        # 36 bytes a transition: 30 000 of them do not fit in one 1 MiB frame.
        n = 30000
        self.assertEqual(c.add([t] * n), n + 2)
        adds = [f for f in self.server.frames if f[1] == 0x04]
        self.assertEqual(len(adds), 3)
        self.assertTrue(all(f[0] <= 1 << 20 for f in adds))

    def test_reply_id_mismatch(self):
        self.server.script[0x02] = lambda h, rid, body: frame(0x83, rid + 1, b"\0\0\0\0")
        c = self.client()
        with self.assertRaises(ProtocolError):
            c.reset()
        self.assertTrue(c.closed)

    def test_unexpected_kind(self):
        self.server.script[0x02] = lambda h, rid, body: frame(0x81, rid, b"{}")
        c = self.client()
        with self.assertRaises(ProtocolError):
            c.reset()

    def test_close_mid_frame(self):
        def half(h, rid, body):
            # A 21-byte ACTION announced, 6 bytes sent, then the connection goes.
            h.request.sendall(frame(0x82, rid, b"\0" * 16)[:10])
            h.request.close()
            return None

        self.server.script[0x03] = half
        c = self.client()
        with self.assertRaises(ConnectionError) as cm:
            c.act([0.0, 0.0, 0.0])
        self.assertIn("middle of a frame", str(cm.exception))
        self.assertTrue(c.closed)

    def test_close_between_frames(self):
        def gone(h, rid, body):
            h.request.close()
            return None

        self.server.script[0x02] = gone
        c = self.client()
        with self.assertRaises(ConnectionError) as cm:
            c.reset()
        self.assertIn("before replying", str(cm.exception))

    def test_shutdown_closes_client(self):
        c = self.client()
        c.shutdown()
        self.assertTrue(c.closed)
        self.assertEqual(self.server.frames[-1][1:3], (0x05, 2))

    def test_context_manager(self):
        with Client(self.address) as c:
            c.hello()
        self.assertTrue(c.closed)

    def test_bad_address(self):
        with self.assertRaises(ValueError):
            Client("localhost")


@unittest.skipUnless(hasattr(socket, "AF_UNIX"), "no Unix sockets")
class UnixSocketTest(unittest.TestCase):
    def test_unix_address(self):
        class UnixServer(FakeServerMixin, socketserver.ThreadingUnixStreamServer):
            daemon_threads = True

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "mpc.sock")
            server = UnixServer(path, Handler)
            server.configure()
            t = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            t.start()
            try:
                with Client("unix:" + path) as c:
                    self.assertEqual(c.hello()["obs_dim"], OBS_DIM)
                    self.assertEqual(c.act([2.0, 0.0, 0.0]).action, [-2.0])
            finally:
                server.shutdown()
                server.server_close()
                t.join()


if __name__ == "__main__":
    unittest.main()
