"""Every dataset format on small fixtures and on the real files in ../shared/data; malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pycodegen.data.formats import read_dataset
from pycodegen.errors import ConfigError, DataError

FIXTURES = {
    "codealpaca": [
        {"instruction": "Add two numbers.", "input": "a=1, b=2", "output": "def add(a, b):\n    return a + b"}
    ],
    "mbpp": [
        {
            "task_id": 601,
            "text": "Add.",
            "code": "def add(a, b):\r\n    return a + b",
            "test_list": ["assert add(1, 2) == 3"],
            "test_setup_code": "",
            "challenge_test_list": [],
        }
    ],
    "codesearchnet": [
        {
            "repo": "o/r",
            "path": "m.py",
            "func_name": "add",
            "docstring": "Add.",
            "code": "def add(a, b):\n    return a + b",
            "language": "python",
        }
    ],
    "conala": [{"question_id": 7, "intent": "add", "rewritten_intent": "add a and b", "snippet": "a + b"}],
    "xlcost": [{"text": "add two numbers", "code": "print(1 + 2)"}],
    "humaneval": [
        {
            "task_id": "X/0",
            "prompt": 'def add(a, b):\n    """Add."""\n',
            "entry_point": "add",
            "canonical_solution": "    return a + b\n",
            "test": "def check(c):\n    assert c(1, 2) == 3\n",
        }
    ],
}


def _write(path: Path, rows: list[dict], as_array: bool) -> Path:
    path.write_text(json.dumps(rows, indent=2) if as_array else "".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", sorted(FIXTURES))
@pytest.mark.parametrize("as_array", [False, True])
def test_each_format_is_detected_and_read(name: str, as_array: bool, tmp_path: Path) -> None:
    path = _write(tmp_path / f"{name}.json", FIXTURES[name], as_array)
    read = read_dataset(path)
    assert read.format == name and read.rows == 1 and not read.bad_lines
    (record,) = read.records
    assert record.origin == name and record.text and record.code
    assert read_dataset(path, name).records == read.records


def test_format_specific_fields(tmp_path: Path) -> None:
    alpaca = read_dataset(_write(tmp_path / "a.json", FIXTURES["codealpaca"], True)).records[0]
    assert alpaca.text == "Add two numbers.\na=1, b=2"
    mbpp = read_dataset(_write(tmp_path / "m.jsonl", FIXTURES["mbpp"], False)).records[0]
    assert mbpp.id == "mbpp/601" and mbpp.tests == ["assert add(1, 2) == 3"]
    csn = read_dataset(_write(tmp_path / "c.jsonl", FIXTURES["codesearchnet"], False)).records[0]
    assert csn.group == "o/r"  # split by repository
    conala = read_dataset(_write(tmp_path / "k.json", FIXTURES["conala"], True)).records[0]
    assert conala.text == "add a and b"  # the rewritten intent wins
    he = read_dataset(_write(tmp_path / "h.jsonl", FIXTURES["humaneval"], False)).records[0]
    assert he.code.endswith("return a + b\n") and he.extra["entry_point"] == "add"


def test_real_mbpp_and_codealpaca(shared_data: Path) -> None:
    mbpp = read_dataset(shared_data / "mbpp.jsonl")
    assert (mbpp.format, mbpp.rows, len(mbpp.records)) == ("mbpp", 974, 974)
    assert {r.extra["task_id"] for r in mbpp.records} == set(range(1, 975))
    alpaca = read_dataset(shared_data / "code_alpaca_2k.json")
    assert (alpaca.format, alpaca.rows, len(alpaca.records)) == ("codealpaca", 2017, 2017)


def test_packaged_mbpp_is_the_shared_copy(shared_data: Path) -> None:
    from pycodegen.benchmarks import mbpp_path

    assert mbpp_path().read_bytes() == (shared_data / "mbpp.jsonl").read_bytes()


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps(FIXTURES["mbpp"][0])
    path.write_text(f"{good}\n{good}\n{{not json\n{good}\n")
    with pytest.raises(DataError, match=rf"{path}:3: invalid JSON"):
        read_dataset(path)
    read = read_dataset(path, skip_bad=True)
    assert len(read.records) == 3 and len(read.bad_lines) == 1 and ":3:" in read.bad_lines[0]


def test_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    row = dict(FIXTURES["mbpp"][0])
    broken = {k: v for k, v in row.items() if k != "code"}
    path.write_text(json.dumps(row) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(DataError, match=r"m.jsonl:2: missing field\(s\) code for format mbpp"):
        read_dataset(path)


def test_malformed_array_element_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('[\n  {"instruction": "x", "output": "y"},\n  {"instruction": 3, "output": "y"}\n]\n')
    with pytest.raises(DataError, match=r"a.json:3: malformed codealpaca record"):
        read_dataset(path)
    path.write_text('[\n  {"instruction": "x", "output": "y"},\n  {"instruction": "x" "output"}\n]\n')
    with pytest.raises(DataError, match=r"a.json:3: invalid JSON"):
        read_dataset(path)


def test_undetectable_and_unknown_formats(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(DataError, match=r"cannot detect the dataset format.*pass --format"):
        read_dataset(path)
    with pytest.raises(ConfigError, match=r"unknown dataset format 'alpaca'; valid: .*codealpaca"):
        read_dataset(path, "alpaca")


def test_non_utf8_dataset(tmp_path: Path) -> None:
    path = tmp_path / "l1.jsonl"
    path.write_bytes(b'{"text": "a", "code": "b"}\n{"text": "caf\xe9", "code": "b"}\n')
    with pytest.raises(DataError, match=r"l1.jsonl:2: not valid UTF-8"):
        read_dataset(path)
