"""The wire protocols, one module each: its messages, its handler and its client side.

Each module matches one spec in protocols/ and is composed by `p2pinfer.node.Node`, which gives
it what it needs of the network (`p2pinfer.net.boundary.PeerNetwork`) when it is built:
`adverts` (signed capability adverts: fetch protocol, gossip topic, peer table intake;
adverts.md), `ping` (round-trip times), `tensor` (tensor echo and store), `attest`
(attestation evidence and attested channels; attest.md, channel.md) and `control` (the local
JSON-lines control socket; control.md, given only a `ControlTarget`). The stage and votes
protocols are served by `p2pinfer.inference`.
"""
