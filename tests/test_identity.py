import os
import stat

import pytest

from p2pinfer.errors import ConfigError
from p2pinfer.identity import (
    IdentityError,
    NodeIdentity,
    peer_id_from_public_key,
    public_key_from_peer_id,
    verify_peer_signature,
)


def test_key_is_created_with_mode_0600_and_reloaded_with_the_same_peer_id(tmp_path):
    path = tmp_path / "sub" / "identity.key"
    first, created = NodeIdentity.load_or_create(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second, created_again = NodeIdentity.load_or_create(path)
    assert not created_again
    assert second.peer_id == first.peer_id


def test_peer_id_matches_libp2p():
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    ident = NodeIdentity.from_seed(bytes(range(32)))
    kp = create_new_key_pair(ident.seed())
    assert ID.from_pubkey(kp.public_key).to_base58() == ident.peer_id
    assert ident.peer_id.startswith("12D3KooW")


def test_peer_id_round_trips_to_public_key():
    ident = NodeIdentity.generate()
    assert public_key_from_peer_id(ident.peer_id) == ident.public_key
    assert peer_id_from_public_key(ident.public_key) == ident.peer_id


def test_signature_checks_out_only_for_the_signer_and_message():
    a, b = NodeIdentity.generate(), NodeIdentity.generate()
    sig = a.sign(b"advert")
    verify_peer_signature(a.peer_id, b"advert", sig)
    with pytest.raises(IdentityError):
        verify_peer_signature(b.peer_id, b"advert", sig)
    with pytest.raises(IdentityError):
        verify_peer_signature(a.peer_id, b"advert!", sig)


@pytest.mark.parametrize("bad", ["", "0OIl", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "1" * 60])
def test_peer_ids_that_do_not_inline_an_ed25519_key_are_refused(bad):
    with pytest.raises(IdentityError):
        public_key_from_peer_id(bad)


def test_group_readable_key_is_refused(tmp_path):
    path = tmp_path / "identity.key"
    NodeIdentity.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        NodeIdentity.load(path)


def test_garbage_key_file_is_a_config_error(tmp_path):
    path = tmp_path / "identity.key"
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="not a PEM"):
        NodeIdentity.load(path)


def test_repr_never_shows_the_private_key():
    ident = NodeIdentity.from_seed(b"\x07" * 32)
    assert ident.seed().hex() not in repr(ident)
