"""The one reader of text inputs (`ivg_jax.jsonl`): UTF-8 with or without a BOM is read; anything else, bad JSON
or a non-object is refused naming the file and line."""

import pytest

from ivg_jax.errors import InputError
from ivg_jax.jsonl import read_text, records


def test_records_skip_blank_lines_and_number_the_rest(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"prompt": "caf\u00e9"}\n\n  \n{"prompt": "b", "id": 2}\n')
    assert list(records(path)) == [(1, {"prompt": "café"}), (4, {"prompt": "b", "id": 2})]


def test_a_leading_byte_order_mark_is_not_part_of_the_text(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n{"prompt": "b"}\n')
    assert [r for _, r in records(path)] == [{"prompt": "a"}, {"prompt": "b"}]
    text = tmp_path / "bom.txt"
    text.write_bytes(b"\xef\xbb\xbfThe film\nA movie\n")
    assert read_text(text).splitlines() == ["The film", "A movie"]


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', r"x.jsonl:2: not UTF-8 text \(invalid continuation byte at byte "
                                                  r"15 of the line\)"),
    (b'{"prompt": "a"}\n\n{"prompt": \n', r"x.jsonl:3: not valid JSON"),
    (b'["a"]\n', r"x.jsonl:1: expected a JSON object, got list"),
])
def test_bad_lines_are_named(tmp_path, content, message):
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        list(records(path))


def test_read_text_names_the_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"one\ntwo\nth\xffree\n")
    with pytest.raises(InputError, match=r"prompt file .*p.txt:3: not UTF-8 text \(invalid start byte at byte 2 of "
                                         r"the line\)"):
        read_text(path, "prompt file")
