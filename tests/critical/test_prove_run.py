"""Input handling and the report of `p2pinfer prove-run` (no network)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from p2pinfer.cli.prove_run import read_features, report_lines
from p2pinfer.errors import P2PInferError
from p2pinfer.inference.critical import CriticalResult, StageProof


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"input": None, "random_tokens": 3, "seed": 0, **kw})


def test_random_input_is_seeded():
    assert np.array_equal(read_features(args(), 8), read_features(args(), 8))
    assert read_features(args(), 8).shape == (3, 8)


def test_json_and_npy_inputs_are_read(tmp_path):
    x = np.arange(16.0).reshape(2, 8)
    (tmp_path / "x.json").write_text(json.dumps(x.tolist()))
    np.save(tmp_path / "x.npy", x)
    assert np.array_equal(read_features(args(input=str(tmp_path / "x.json")), 8), x)
    assert np.array_equal(read_features(args(input=str(tmp_path / "x.npy")), 8), x)


def test_pickled_npy_input_is_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(P2PInferError):
        read_features(args(input=str(tmp_path / "obj.npy")), 8)


def test_input_of_the_wrong_width_is_refused(tmp_path):
    (tmp_path / "x.json").write_text("[[1, 2, 3]]")
    with pytest.raises(P2PInferError, match="tokens, 8"):
        read_features(args(input=str(tmp_path / "x.json")), 8)


def test_the_report_has_a_row_per_stage():
    proofs = [StageProof(k, f"12D3KooWpeer{k}", (k, k + 1), 2048, 10.0, 5.0, "", 0.0)
              for k in range(2)]
    result = CriticalResult(np.zeros((1, 2)), np.zeros((1, 2), dtype=np.int64), proofs, "ab",
                            [], 0, 0.1)
    lines = report_lines(result)
    assert len(lines) == 3 and "[1,2)" in lines[2] and "2.0" in lines[2]


def test_a_prompt_for_a_model_not_imported_from_a_checkpoint_is_a_usage_error(mlp_dir, capsys):
    from p2pinfer.cli import main

    assert main(["prove-run", "--model", str(mlp_dir), "--prompt", "What is 2+2?",
                 "--bootstrap", "/ip4/127.0.0.1/tcp/9/p2p/QmNotThere"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was not imported from a checkpoint" in err
