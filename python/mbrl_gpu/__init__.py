"""Python side of mbrl-gpu: a client for the planning server ``mbrl-gpu serve``.

``gym_worker`` (the Gymnasium bridge's worker, which the binary runs itself) also lives in this
package; importing ``mbrl_gpu`` does not import it.
"""

from .client import Client, ProtocolError, Reply, ServerError

__all__ = ["Client", "ProtocolError", "Reply", "ServerError"]
__version__ = "0.1.0"
