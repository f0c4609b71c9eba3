"""io.format_json: one reader refuses missing, malformed, foreign and newer versioned JSON files, naming the file."""
import json

import pytest

from hyperlora_jax.io.format_json import read_format_json


class MyError(ValueError):
    pass


def _write(tmp_path, body):
    p = tmp_path / "config.json"
    p.write_text(body if isinstance(body, str) else json.dumps(body))
    return str(p)


def test_reads_its_own_format(tmp_path):
    p = _write(tmp_path, {"format": "x.y", "format_version": 1, "a": 2})
    assert read_format_json(p, "x.y", 1)["a"] == 2


@pytest.mark.parametrize("body, msg", [
    ("{not json", "is not valid JSON"),
    ([1, 2], "format None, expected 'x.y'"),
    ({"format": "other", "format_version": 1}, "format 'other', expected 'x.y'"),
    ({"format": "x.y", "format_version": 2}, "format_version 2 is not supported"),
])
def test_refusals_name_the_file(tmp_path, body, msg):
    p = _write(tmp_path, body)
    with pytest.raises(MyError, match=msg) as e:
        read_format_json(p, "x.y", 1, MyError)
    assert p in str(e.value)


def test_missing_file_message(tmp_path):
    with pytest.raises(MyError, match="^nothing here$"):
        read_format_json(str(tmp_path / "none.json"), "x.y", 1, MyError, missing="nothing here")
