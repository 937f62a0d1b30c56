"""The wire protocols, one module each: its messages, its handler and its client side.

Each module matches one spec in protocols/ and is composed by `p2pinfer.node.Node`, which gives
it what it needs of the network (`p2pinfer.net.boundary.PeerNetwork`) when it is built:
`ping` (round-trip times), `tensor` (tensor echo and store), `attest` (attestation evidence
and attested channels). The stage and votes protocols are served by `p2pinfer.inference`.
"""
