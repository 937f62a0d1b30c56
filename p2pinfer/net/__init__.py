"""Networking: the only package that imports libp2p.

`host` is the libp2p host (TCP, Noise only, yamux, optional private-network key) and its
connection gate for banned peers; `streams` the framed request/response and message streams
with their inbound guard; `adverts` the signed capability records and their validator;
`peertable` what the node knows about other peers; `reachability` which of them did not answer
lately; `gossip` GossipSub topics per network; `discovery` bootstrap re-dial, Kademlia DHT and
mDNS. `p2pinfer.node.Node` composes them.
"""

from .adverts import Advert as Advert
from .adverts import AdvertBadSignature as AdvertBadSignature
from .adverts import AdvertExpired as AdvertExpired
from .adverts import AdvertForeignNetwork as AdvertForeignNetwork
from .adverts import AdvertMalformed as AdvertMalformed
from .adverts import AdvertRejected as AdvertRejected
from .adverts import AdvertReplayed as AdvertReplayed
from .adverts import AdvertTooLarge as AdvertTooLarge
from .adverts import AdvertUnsigned as AdvertUnsigned
from .adverts import AdvertValidator as AdvertValidator
from .adverts import AdvertWrongSigner as AdvertWrongSigner
from .adverts import Hardware as Hardware
from .adverts import decode_advert as decode_advert
from .adverts import sign_advert as sign_advert
from .gossip import topic_name as topic_name
from .host import DialError as DialError
from .host import DialTimeout as DialTimeout
from .host import Host as Host
from .host import load_psk as load_psk
from .host import open_host as open_host
from .peertable import PeerInfo as PeerInfo
from .peertable import PeerTable as PeerTable
from .reachability import Reachability as Reachability
from .streams import Busy as Busy
from .streams import EncodedReply as EncodedReply
from .streams import FramedStream as FramedStream
from .streams import StreamClosedError as StreamClosedError
from .streams import StreamTimeout as StreamTimeout
from .streams import encode_message_parts as encode_message_parts
from .streams import protocol_id as protocol_id
from .streams import reply_message as reply_message
