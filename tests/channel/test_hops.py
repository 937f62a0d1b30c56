"""Hop keys: per-hop record layers derived from a channel's exporter secret."""

from __future__ import annotations

import os

import pytest

from p2pinfer.channel import ChannelClosed, ChannelError, DecryptError

from .conftest import FakePeer, handshakes, run_handshake


def channels():
    i, r = handshakes(FakePeer(), FakePeer())
    run_handshake(i, r)
    return i.channel(), r.channel()


def test_both_ends_derive_the_same_hop_keys():
    ci, cr = channels()
    salt = os.urandom(16)
    hi, hr = (
        ci.derive_hop(b"task\x00\x00\x00\x01", salt),
        cr.derive_hop(b"task\x00\x00\x00\x01", salt),
    )
    assert hi.channel_id == hr.channel_id != ci.channel_id
    assert hr.open(hi.seal(b"forward", task_id=b"task", stage=1)).payload == b"forward"
    assert hi.open(hr.seal(b"back")).payload == b"back"


def test_hop_sequence_numbers_start_at_zero_and_are_independent():
    ci, cr = channels()
    ci.seal(b"on the pair channel")
    salt = os.urandom(16)
    hi, hr = ci.derive_hop(b"label", salt), cr.derive_hop(b"label", salt)
    assert hr.open(hi.seal(b"x")).seq == 0


def test_other_label_or_salt_gives_other_keys():
    ci, cr = channels()
    salt = os.urandom(16)
    frame = ci.derive_hop(b"task-a", salt).seal(b"x")
    with pytest.raises(DecryptError):
        cr.derive_hop(b"task-b", salt).open(frame)
    with pytest.raises(DecryptError):
        cr.derive_hop(b"task-a", os.urandom(16)).open(frame)


def test_hop_frames_do_not_open_on_the_pair_channel():
    ci, cr = channels()
    frame = ci.derive_hop(b"label", os.urandom(16)).seal(b"x")
    with pytest.raises(DecryptError):
        cr.open(frame)


def test_closing_the_channel_erases_the_exporter_and_refuses_new_hops():
    ci, cr = channels()
    exporter = ci._exporter
    assert exporter is not None and any(exporter)
    salt = os.urandom(16)
    hi, hr = ci.derive_hop(b"label", salt), cr.derive_hop(b"label", salt)
    ci.close()
    assert exporter == bytes(32)
    with pytest.raises(ChannelClosed):
        ci.derive_hop(b"label", os.urandom(16))
    assert hr.open(hi.seal(b"x")).payload == b"x"  # a hop's keys are its own
    hi.close()
    assert hi._send.key == bytes(32) and hi._recv.key == bytes(32)


@pytest.mark.parametrize(
    "salt,label", [(bytes(15), b"l"), (bytes(65), b"l"), (bytes(16), bytes(257))]
)
def test_bad_hop_parameters_are_refused(salt, label):
    ci, _ = channels()
    with pytest.raises(ChannelError):
        ci.derive_hop(label, salt)
