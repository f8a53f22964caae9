"""Input bytes: format byte, text and chat prompts, and clear errors for bad input."""

from __future__ import annotations

import pytest
from verinfer.inputs import (
    InputFormatError,
    check_input,
    decode_input,
    encode_chat_input,
    encode_text_input,
    tokenize_input,
)


def test_text_input__round_trips_and_tokenizes_with_bos(tiny):
    data = encode_text_input("Hello, world")
    assert data == b"\x00Hello, world"
    assert decode_input(data) == "Hello, world"
    ids = tokenize_input(tiny.tokenizer, data)
    assert ids == tiny.tokenizer("Hello, world")["input_ids"]
    assert ids[0] == 1


def test_chat_input__rendered_with_the_models_template(tiny):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    data = encode_chat_input(messages)
    assert data[0] == 1
    assert decode_input(data) == messages
    ids = tokenize_input(tiny.tokenizer, data)
    text = tiny.tokenizer.decode(ids)
    assert text == (
        "<|bos|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_text_that_looks_like_json__stays_text():
    data = encode_text_input('[{"role": "user", "content": "x"}]')
    assert decode_input(data) == '[{"role": "user", "content": "x"}]'


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "input is empty"),
        (b"\x07hello", "unknown input format byte 0x07"),
        (b"\x00\xff\xfe", "not valid UTF-8"),
        (b"\x01{not json", "not valid JSON"),
        (b"\x01[]", "non-empty JSON list"),
        (b'\x01[{"role": "user"}]', "exactly 'role' and 'content'"),
        (b'\x01[{"role": "user", "content": 3}]', "must be strings"),
    ],
)
def test_decode_input__bad_bytes__clear_error(data, message):
    with pytest.raises(InputFormatError, match=message):
        decode_input(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00", "prompt is empty"),
        (b'\x01[{"role":"robot","content":"hi"}]', "chat message 0 has an unknown role 'robot' "
         "(use system, user, assistant)"),
        (b'\x01[{"role":"system","content":"x"},{"role":"user","content":""}]',
         "chat message 1 has no content"),
        (b'\x01[{"role":"user"}]', "chat message 0 must have exactly 'role' and 'content'"),
        (b"\x00caf\xc3", "input is not valid UTF-8: 'utf-8' codec can't decode byte 0xc3 in "
         "position 3: unexpected end of data"),
        (b"\x00" + b"a" * 8_000, "input is 8,001 bytes; a job's input holds at most 8,000 bytes"),
    ],
)  # fmt: skip
def test_check_input__what_a_client_refuses_before_paying(data, message):
    with pytest.raises(InputFormatError) as err:
        check_input(data)
    assert str(err.value) == message


def test_check_input__largest_accepted_input():
    check_input(b"\x00" + b"a" * 7_999)
    check_input(encode_chat_input([{"role": "assistant", "content": "ok"}]))
