"""Request bodies, stop sequences, and the API's commands, without a network."""

import json

import pytest

from p2pinfer.api.app import StopScanner, check_listen
from p2pinfer.api.errors import BadRequest
from p2pinfer.api.schema import parse_chat, parse_completion, parse_embeddings
from p2pinfer.cli import main as cli_main
from p2pinfer.config import ApiSection
from p2pinfer.errors import ConfigError

from .test_receipt import _json_blocks


def test_stop_scanner_holds_back_a_possible_stop_and_cuts_before_it():
    s = StopScanner(("END",))
    out = [s.feed(p) for p in ["hello ", "wor", "ld E", "N", "D and more"]]
    assert "".join(out) == "hello world " and s.stopped
    assert all("E" not in piece for piece in out)
    plain = StopScanner(())
    assert [plain.feed(p) for p in ["a", "b"]] == ["a", "b"] and plain.flush() == ""
    tail = StopScanner(("xyz",))
    assert tail.feed("abcx") == "ab" and tail.flush() == "cx" and not tail.stopped


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content"),
    ({"model": "", "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 3},
     "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": "1"}, "top_p"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 5}, "stop"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
     "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}],
      "p2pinfer": {"redundancy": 10}}, "p2pinfer.redundancy"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}],
      "p2pinfer": {"colour": "red"}}, "p2pinfer"),
])
def test_a_wrong_chat_field_is_a_bad_request_naming_it(body, param):
    with pytest.raises(BadRequest) as info:
        parse_chat(body)
    assert info.value.param == param and info.value.status == 400


def test_valid_bodies_parse_with_openai_defaults():
    chat = parse_chat({"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stop": "x", "seed": 3, "p2pinfer": {"mode": "general", "redundancy": 3},
        "stream_options": {"include_usage": True}, "user": "ignored"})
    assert chat.prompt == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
    assert chat.stop == ("x",) and chat.temperature == 1.0 and chat.include_usage
    assert chat.options.redundancy == 3 and chat.max_tokens is None
    assert parse_completion({"model": "m", "prompt": ["hi"]}).max_tokens == 16
    emb = parse_embeddings({"model": "m", "input": "hi"})
    assert emb.inputs == ("hi",) and emb.encoding_format == "float"
    with pytest.raises(BadRequest):
        parse_embeddings({"model": "m", "input": [""]})
    with pytest.raises(BadRequest):
        parse_chat(["not", "an", "object"])


def test_the_api_refuses_a_public_address_without_a_key(tmp_path, capsys):
    with pytest.raises(ConfigError, match="without a key"):
        check_listen(ApiSection(listen="0.0.0.0:8000"))
    assert check_listen(ApiSection(listen="[::1]:0")) == ("::1", 0)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path}"\n')
    assert cli_main(["api", "--config", str(cfg), "--listen", "0.0.0.0:8000"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "without a key" in err


def test_receipt_verify_exit_codes(tmp_path, capsys):
    request, response, receipt = _json_blocks()
    files = {}
    for name, doc in (("req", request), ("resp", {**response, "p2pinfer": {"receipt": receipt}})):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(doc))
    args = ["receipt", "verify", str(files["resp"]), "--request", str(files["req"]),
            "--response", str(files["resp"])]
    assert cli_main(args) == 0
    assert "receipt OK" in capsys.readouterr().out
    files["req"].write_text(json.dumps({**request, "max_tokens": 5}))
    assert cli_main(args) == 1
    assert capsys.readouterr().out.startswith("receipt check failed: request digest")
    files["req"].write_text("[1, 2")
    assert cli_main(args) == 2
    assert cli_main(["receipt", "verify", str(tmp_path / "missing.json")]) == 2
    sse = tmp_path / "stream.txt"  # a saved event stream: the receipt is in its last event
    sse.write_text("data: " + json.dumps({"object": "chat.completion.chunk", "model": "m",
                                          "choices": [], "p2pinfer": {"receipt": receipt}})
                   + "\n\ndata: [DONE]\n\n")
    assert cli_main(["receipt", "verify", str(sse)]) == 0
