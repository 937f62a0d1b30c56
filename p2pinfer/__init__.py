"""p2pinfer: peer-to-peer sharded inference with verifiable integrity and private channels.

Layout, bottom to top (each layer imports only those below it):
`wire/` message, frame and tensor codecs; `config`, `identity`; `net/` libp2p host, discovery,
gossip, streams and `net.boundary.PeerNetwork`, the interface the layers above use; `models/`
checkpoints and layer spans; `trust/` attestation and `channel/` attested AES-GCM sessions;
`consensus/` and `zk/` integrity; `services/` one module per wire protocol; `inference/`
requester and stage sides; `node` the composition root; `cli` the command line.

The public API is what this module re-exports; everything else may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import NodeConfig as NodeConfig
from .config import RequestSettings as RequestSettings
from .config import load_config as load_config
from .errors import P2PInferError as P2PInferError
from .identity import NodeIdentity as NodeIdentity

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .node import Node as Node


def __getattr__(name: str) -> Any:
    # Node pulls in libp2p and torch; load it on first use so `import p2pinfer` stays light.
    if name == "Node":
        from .node import Node

        return Node
    raise AttributeError(name)


__all__ = [
    "Node",
    "NodeConfig",
    "NodeIdentity",
    "P2PInferError",
    "RequestSettings",
    "__version__",
    "load_config",
]
