"""The Gymnasium side of mbrl-gpu's environment bridge (``--env gym:ID``).

The ``mbrl-gpu`` binary starts this file as ``python3 -c <this source>`` and speaks to it over
the process's standard input and output with the protocol below. It needs only the standard
library, NumPy and Gymnasium. It holds N copies of one environment made with
``gymnasium.make``; there is no auto-reset: a copy that terminated or was truncated keeps
stepping until the next reset, as ``mbrl_gpu::env::NativeEnv`` does.

Protocol, version 1
-------------------
Every message in either direction is a frame: a little-endian ``u32`` payload length, then
the payload, whose first byte is its tag. Numbers are little-endian; ``str`` is a ``u16``
byte length and UTF-8 bytes. A frame longer than 1 GiB is refused.

Worker -> client, unasked, first: ``HELLO`` (tag 0x48): ``b"MBGW"``, ``u32`` version,
``str`` Python version, ``str`` Gymnasium version, ``str`` NumPy version. If Gymnasium or NumPy
cannot be imported, an ``ERROR`` frame comes instead and the worker exits.

Requests (client -> worker) and their replies; any request may instead get ``ERROR``:

=============  ==========================================  =========================================
request        payload after the tag                       reply
=============  ==========================================  =========================================
MAKE 0x01      ``u32`` copies, ``str`` module (may be       SPACES 0x81: ``u32`` obs_dim, ``u32``
               empty), ``str`` environment ID               act_dim, ``f64[obs]`` obs low,
                                                            ``f64[obs]`` obs high, ``f64[act]`` act
                                                            low, ``f64[act]`` act high, ``u32``
                                                            max_episode_steps (0: none registered)
RESET 0x02     ``u64[copies]`` seeds                        OBS 0x82: ``f64[copies*obs]``
STEP 0x03      ``f32[copies*act]`` actions                  STEPPED 0x83: ``f64[copies*obs]``
                                                            observations, ``f64[copies]`` rewards,
                                                            ``u8[copies]`` terminated, ``u8[copies]``
                                                            truncated
STATE 0x04     (nothing)                                    STATE 0x84: ``u32`` dim,
                                                            ``f64[copies*dim]``:
                                                            ``env.unwrapped.state`` (classic
                                                            control; for tests)
CLOSE 0x05     (nothing)                                    BYE 0x85, then the worker exits
=============  ==========================================  =========================================

``ERROR`` (tag 0xEE): ``u8`` kind, ``str`` message. Kinds: 1 Gymnasium or NumPy missing,
2 the module failed to import, 3 unknown environment ID or ``make`` failed, 4 a space that is
not a ``Box``, 5 ``reset``/``step`` raised, 6 malformed request, 7 the environment has no
``state``. After kinds 1 and 6 the worker exits; after the others it waits for the next request.

Observations and actions are flattened (a ``Box`` of any shape). Actions are cast to the action
space's dtype before ``step``, as a NumPy array of the space's shape, exactly what a Python
agent would pass. Anything the environment prints goes to standard error: the worker moves its
protocol stream off file descriptor 1 before importing anything else.
"""

import os
import struct
import sys

VERSION = 1
MAX_FRAME = 1 << 30

T_HELLO, T_ERROR = 0x48, 0xEE
T_MAKE, T_RESET, T_STEP, T_STATE, T_CLOSE = 0x01, 0x02, 0x03, 0x04, 0x05
E_MISSING, E_MODULE, E_MAKE, E_SPACE, E_ENV, E_PROTOCOL, E_NO_STATE = 1, 2, 3, 4, 5, 6, 7


class ProtocolError(Exception):
    pass


class EnvFailure(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def _streams():
    """The protocol's input and output, on private descriptors: what the environment prints
    to stdout must not reach the client as a frame, and what it reads from stdin must not eat
    one."""
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = sys.stderr
    return proto_in, proto_out


def _read_exact(f, n):
    chunks = []
    while n > 0:
        b = f.read(n)
        if not b:
            return None
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def _read_frame(f):
    head = _read_exact(f, 4)
    if head is None:
        return None
    (n,) = struct.unpack("<I", head)
    if n == 0 or n > MAX_FRAME:
        raise ProtocolError(f"frame length {n} is outside 1..{MAX_FRAME}")
    body = _read_exact(f, n)
    if body is None:
        raise ProtocolError(f"the stream ended inside a frame of {n} bytes")
    return body


def _send(out, payload):
    out.write(struct.pack("<I", len(payload)) + payload)


def _s(text):
    b = str(text).encode("utf-8", "replace")[:65535]
    return struct.pack("<H", len(b)) + b


def _error(out, kind, message):
    _send(out, bytes([T_ERROR, kind]) + _s(message))


class Reader:
    def __init__(self, body):
        self.b, self.i = body, 1

    def take(self, n):
        if self.i + n > len(self.b):
            raise ProtocolError("a request ended early")
        v = self.b[self.i : self.i + n]
        self.i += n
        return v

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def str(self):
        (n,) = struct.unpack("<H", self.take(2))
        return self.take(n).decode("utf-8")

    def end(self):
        if self.i != len(self.b):
            raise ProtocolError(f"{len(self.b) - self.i} bytes after the end of a request")


class Worker:
    def __init__(self, gym, np, out):
        self.gym, self.np, self.out = gym, np, out
        self.envs = []

    def make(self, r):
        np, gym = self.np, self.gym
        copies, module, env_id = r.u32(), r.str(), r.str()
        r.end()
        if not 1 <= copies <= 4096:
            raise ProtocolError(f"copies must be between 1 and 4096, not {copies}")
        if module:
            try:
                __import__(module)
            except Exception as e:  # noqa: BLE001 - any import failure is the user's to see
                raise EnvFailure(E_MODULE, f"import {module} failed: {type(e).__name__}: {e}")
        self.close_envs()
        try:
            envs = [gym.make(env_id) for _ in range(copies)]
        except Exception as e:  # noqa: BLE001
            raise EnvFailure(E_MAKE, f"gymnasium.make({env_id!r}) failed: {type(e).__name__}: {e}")
        space_o, space_a = envs[0].observation_space, envs[0].action_space
        for what, space in (("observation", space_o), ("action", space_a)):
            if not isinstance(space, gym.spaces.Box):
                for e in envs:
                    e.close()
                raise EnvFailure(
                    E_SPACE,
                    f"{env_id} has a {type(space).__name__} {what} space ({space}); "
                    "only Box spaces are supported",
                )
        self.envs = envs
        self.act_shape, self.act_dtype = space_a.shape, space_a.dtype
        self.obs_dim = int(np.prod(space_o.shape))
        self.act_dim = int(np.prod(space_a.shape))
        limit = envs[0].spec.max_episode_steps if envs[0].spec is not None else None
        f64 = lambda a: np.asarray(a, dtype=np.float64).reshape(-1).tobytes()  # noqa: E731
        return (
            bytes([0x81])
            + struct.pack("<II", self.obs_dim, self.act_dim)
            + f64(space_o.low)
            + f64(space_o.high)
            + f64(space_a.low)
            + f64(space_a.high)
            + struct.pack("<I", int(limit or 0))
        )

    def need_envs(self):
        if not self.envs:
            raise ProtocolError("no environment: MAKE must come first")

    def obs_bytes(self, obs):
        a = self.np.asarray(obs, dtype=self.np.float64).reshape(-1)
        if a.size != self.obs_dim:
            raise EnvFailure(E_ENV, f"an observation has {a.size} values, the space {self.obs_dim}")
        return a.tobytes()

    def reset(self, r):
        self.need_envs()
        n = len(self.envs)
        seeds = struct.unpack(f"<{n}Q", r.take(8 * n))
        r.end()
        out = []
        for env, seed in zip(self.envs, seeds):
            try:
                obs, _ = env.reset(seed=int(seed))
            except Exception as e:  # noqa: BLE001
                raise EnvFailure(E_ENV, f"reset(seed={seed}) raised {type(e).__name__}: {e}")
            out.append(self.obs_bytes(obs))
        return bytes([0x82]) + b"".join(out)

    def step(self, r):
        np = self.np
        self.need_envs()
        n, ad = len(self.envs), self.act_dim
        acts = np.frombuffer(r.take(4 * n * ad), dtype="<f4").reshape(n, ad)
        r.end()
        obs, rew, term, trunc = [], [], bytearray(), bytearray()
        for i, env in enumerate(self.envs):
            a = acts[i].astype(self.act_dtype).reshape(self.act_shape)
            try:
                o, reward, te, tr, _ = env.step(a)
            except Exception as e:  # noqa: BLE001
                raise EnvFailure(E_ENV, f"step raised in copy {i}: {type(e).__name__}: {e}")
            obs.append(self.obs_bytes(o))
            rew.append(float(reward))
            term.append(1 if te else 0)
            trunc.append(1 if tr else 0)
        return bytes([0x83]) + b"".join(obs) + struct.pack(f"<{n}d", *rew) + bytes(term) + bytes(trunc)

    def state(self, r):
        np = self.np
        self.need_envs()
        r.end()
        rows = []
        for env in self.envs:
            s = getattr(env.unwrapped, "state", None)
            if s is None:
                raise EnvFailure(E_NO_STATE, "the environment keeps no `state` attribute")
            rows.append(np.asarray(s, dtype=np.float64).reshape(-1))
        dim = rows[0].size
        return bytes([0x84]) + struct.pack("<I", dim) + b"".join(x.tobytes() for x in rows)

    def close_envs(self):
        for e in self.envs:
            try:
                e.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self.envs = []


def main():
    proto_in, out = _streams()
    try:
        import numpy as np
        import gymnasium as gym
    except Exception as e:  # noqa: BLE001
        _error(out, E_MISSING, f"{sys.executable} cannot import gymnasium and numpy ({type(e).__name__}: {e}); install them with `{sys.executable} -m pip install gymnasium`")
        return 3
    hello = b"MBGW" + struct.pack("<I", VERSION) + _s(sys.version.split()[0]) + _s(gym.__version__) + _s(np.__version__)
    _send(out, bytes([T_HELLO]) + hello)
    w = Worker(gym, np, out)
    handlers = {T_MAKE: w.make, T_RESET: w.reset, T_STEP: w.step, T_STATE: w.state}
    while True:
        try:
            body = _read_frame(proto_in)
        except ProtocolError as e:
            _error(out, E_PROTOCOL, str(e))
            return 4
        if body is None:
            w.close_envs()
            return 0
        tag = body[0]
        if tag == T_CLOSE:
            w.close_envs()
            _send(out, bytes([0x85]))
            return 0
        handler = handlers.get(tag)
        try:
            if handler is None:
                raise ProtocolError(f"unknown request tag {tag:#04x}")
            _send(out, handler(Reader(body)))
        except ProtocolError as e:
            _error(out, E_PROTOCOL, str(e))
            return 4
        except EnvFailure as e:
            _error(out, e.kind, str(e))


if __name__ == "__main__":
    sys.exit(main())
