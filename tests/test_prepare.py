"""End-to-end `prepare` on messy trees: skips counted, dedup, decontamination, determinism, split by file."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pycodegen.config import PrepareConfig
from pycodegen.data.dataset_dir import read_manifest
from pycodegen.data.prepare import prepare
from pycodegen.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def _rows(out: Path, split: str) -> list[dict]:
    return [json.loads(x) for x in (out / f"{split}.jsonl").read_text().splitlines()]


def _all_rows(out: Path) -> list[dict]:
    return [r for s in ("train", "valid", "test") for r in _rows(out, s)]


def test_messy_tree_docstring_to_body(messy_tree: Path, tmp_path: Path, humaneval_rows: list[dict]) -> None:
    out = tmp_path / "out"
    m = prepare(
        PrepareConfig(
            source=str(messy_tree),
            out=out,
            max_file_bytes=100_000,
            workers=1,
            valid_fraction=0.2,
            test_fraction=0.2,
        )
    )
    # Every bad file is skipped and counted by reason, none crashes the run.
    assert m["skipped_files"]["counts"] == {"not-utf8": 1, "syntax-error": 1, "too-large": 1}
    assert m["skipped_files"]["paths"]["too-large"] == ["pkg/huge.py"]
    # site-packages is excluded; the Java file is read but yields no functions.
    assert m["source"]["files_by_language"] == {"java": 1, "python": 15}
    # The copied module's documented functions are exact duplicates.
    assert m["dedup"]["exact_dropped"] == 2  # area and Shape.scaled (the documented ones)
    # The pasted HumanEval problem is decontaminated and listed.
    dropped = m["decontamination"]["dropped"]
    assert [d["matched"] for d in dropped] == [humaneval_rows[0]["task_id"]]
    assert dropped[0]["id"].startswith("pkg/leaked.py::")
    rows = _all_rows(out)
    names = sorted(r["qualname"] for r in rows)
    assert names == sorted(["area", "Shape.scaled", *(f"func_{i}" for i in range(12))])
    area = next(r for r in rows if r["qualname"] == "area")
    assert area["prompt"] == 'def area(radius):\n    """Area of a circle of the given radius."""\n'
    assert area["target"] == "    # pi r squared\n    return math.pi * radius ** 2\n"
    assert area["signature"] == "def area(radius):"
    scaled = next(r for r in rows if r["qualname"] == "Shape.scaled")
    assert scaled["prompt"].startswith("def scaled(self, factor):")  # methods are dedented
    assert m["counts"]["after_decontamination"] == len(rows)
    assert read_manifest(out)["files"].keys() == {"train.jsonl", "valid.jsonl", "test.jsonl"}


def test_same_inputs_give_byte_identical_outputs(messy_tree: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(PrepareConfig(source=str(messy_tree), out=a, workers=1, max_file_bytes=100_000))
    prepare(PrepareConfig(source=str(messy_tree), out=b, workers=2, max_file_bytes=100_000))
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    ma, mb = json.loads((a / "manifest.json").read_text()), json.loads((b / "manifest.json").read_text())
    assert ma["dataset_sha256"] == mb["dataset_sha256"]
    for m in (ma, mb):  # the manifests differ only in the options that differ
        m["options"].pop("out"), m["options"].pop("workers")
    assert ma == mb


def test_a_different_seed_changes_the_split(messy_tree: Path, tmp_path: Path) -> None:
    cfg = dict(source=str(messy_tree), workers=1, valid_fraction=0.25, test_fraction=0.25)
    a = prepare(PrepareConfig(out=tmp_path / "a", seed=0, **cfg))
    b = prepare(PrepareConfig(out=tmp_path / "b", seed=1, **cfg))
    assert a["files"]["test.jsonl"] != b["files"]["test.jsonl"]


def test_lm_windows_never_straddle_splits(messy_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "win"
    m = prepare(
        PrepareConfig(
            source=str(messy_tree),
            out=out,
            task="lm-windows",
            window=16,
            stride=8,
            train_tokenizer=True,
            vocab_size=400,
            workers=1,
            valid_fraction=0.25,
            test_fraction=0.25,
        )
    )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    python_id, java_id = tok.convert_tokens_to_ids(["<python>", "<java>"])
    files_by_split: dict[str, set[str]] = {}
    for split in ("train", "valid", "test"):
        rows = _rows(out, split)
        files_by_split[split] = {r["path"] for r in rows}
        for r in rows:
            assert 1 <= len(r["input_ids"]) <= 16
            if r["start"] == 0:  # the first window of a file starts with its language token
                assert r["input_ids"][0] == (java_id if r["lang"] == "java" else python_id)
    assert files_by_split["train"] and files_by_split["valid"] and files_by_split["test"]
    assert not (files_by_split["train"] & files_by_split["valid"])
    assert not (files_by_split["train"] & files_by_split["test"])
    assert not (files_by_split["valid"] & files_by_split["test"])
    # Each file's last window ends with EOS, and the windows of one file cover its whole token sequence.
    train = _rows(out, "train")
    one = sorted((r for r in train if r["path"] == "mod3.py"), key=lambda r: r["start"])
    assert one[-1]["input_ids"][-1] == tok.eos_token_id
    assert m["counts"]["tokens"] > 0
    assert "pkg/leaked.py" in {d["id"] for d in m["decontamination"]["dropped"]}


def test_char_stream_and_vocab(messy_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "chars"
    prepare(PrepareConfig(source=str(messy_tree), out=out, task="char-stream", seq_len=50, workers=1))
    rows = _all_rows(out)
    assert rows and all(len(r["text"]) <= 50 for r in rows)
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["specials"] == ["<pad>", "<unk>", "<eos>"]
    assert "d" in vocab["chars"] and vocab["chars"] == sorted(vocab["chars"])


def test_instruction_view_from_mbpp_uses_hust_template(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "mbpp"
    m = prepare(
        PrepareConfig(source=str(shared_data / "mbpp.jsonl"), out=out, task="instruction", require_parse=True)
    )
    assert m["source"]["format"] == "mbpp" and m["source"]["rows"] == 974
    ids = {r["id"] for r in _all_rows(out)}
    # The MBPP test split (task_ids 11-510) is an evaluation set: none of it may remain.
    assert not any(11 <= int(i.split("/")[1]) <= 510 for i in ids)
    dropped = [int(d["id"].split("/")[1]) for d in m["decontamination"]["dropped"]]
    assert sum(11 <= i <= 510 for i in dropped) == 500
    # ... but generic phrasing shared with it is not contamination: of the 472 other rows left after
    # dedup, the old any-shared-10-gram rule dropped 131 (28 %); the copies it keeps dropping are near
    # duplicates of a test problem (same solution, one word changed), under 10 %.
    assert sum(not 11 <= i <= 510 for i in dropped) < 47
    row = _rows(out, "train")[0]
    assert row["prompt"].startswith("### Instruction: Create a Python script for this problem: ")
    assert row["prompt"].endswith(" ### Response:") and row["tests"]


def test_eval_format_asks_as_evaluate_asks(tmp_path: Path) -> None:
    """--eval-format: a HumanEval-format problem is asked in evaluate's words and answered without its
    docstring; an MBPP row carries its tests; chat answers are fenced (evaluate stops after the block)."""
    from pycodegen.benchmarks import load_humaneval_file, load_mbpp

    problems = tmp_path / "problems.jsonl"
    prompt = 'def double(x: int) -> int:\n    """Twice x.\n\n    >>> double(2)\n    4\n    """\n'
    row = {
        "task_id": "mine/double",
        "prompt": prompt,
        "entry_point": "double",
        "canonical_solution": "    return 2 * x\n",
        "test": "def check(candidate):\n    assert candidate(2) == 4\n",
    }
    problems.write_text(json.dumps(row) + "\n")

    def rows_of(name: str, **options: Any) -> list[dict[str, Any]]:
        """The instruction rows of `problems` (+ options), all in train."""
        out = tmp_path / name
        split = dict(valid_fraction=0.0, test_fraction=0.0)
        prepare(PrepareConfig(source=str(problems), out=out, task="instruction", **split, **options))
        return _all_rows(out)

    rows = {
        r["id"]: r
        for r in rows_of(
            "sft", add_source=["builtin:mbpp"], mbpp_splits=["train"], template="plain", eval_format=True
        )
    }
    mine = rows["mine/double"]
    assert mine["prompt"] == load_humaneval_file(problems)[0].instruction
    assert mine["target"] == "def double(x: int) -> int:\n    return 2 * x\n"
    mbpp = load_mbpp("train")[0]
    assert rows[mbpp.task_id]["prompt"] == mbpp.instruction and "assert " in mbpp.instruction
    # Without the option the rows are as before: the bare text and the code as written.
    assert rows_of("plain", template="plain")[0]["target"] == prompt + "    return 2 * x\n"
    chat = rows_of("chat", template="chat", tokenizer="smollm2-135m-instruct", eval_format=True)
    answer = chat[0]
    assert answer["target"] == "```python\ndef double(x: int) -> int:\n    return 2 * x\n```"
    assert answer["messages"][0]["content"] == mine["prompt"]


def test_docstring_view_from_codealpaca_with_hust_cleaning(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "alpaca"
    m = prepare(
        PrepareConfig(
            source=str(shared_data / "code_alpaca_2k.json"),
            out=out,
            task="docstring-to-body",
            require_function_return=True,
            strip_comments=True,
            normalize_indent=True,
        )
    )
    assert m["source"]["format"] == "codealpaca" and m["source"]["rows"] == 2017
    rows = _all_rows(out)
    assert 300 < len(rows) < 557  # the README counts 557 Python function outputs; filters drop some
    for r in rows:
        source = r["prompt"] + r["target"]
        fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef))
        assert ast.get_docstring(fn), source  # its own docstring, or the instruction put in its place
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        assert not [t for t in tokens if t.type == tokenize.COMMENT], source


def test_cleaning_rewrites_functions(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "tabs.py").write_text('def f(x):\n\t"""Doc."""\n\tif x:  # why\n\t\treturn "# kept"\n\treturn 0\n')
    out = tmp_path / "out"
    prepare(
        PrepareConfig(
            source=str(src),
            out=out,
            strip_comments=True,
            normalize_indent=True,
            workers=1,
            valid_fraction=0,
            test_fraction=0,
            builtin_eval_sets=False,
        )
    )
    (row,) = _rows(out, "train")
    assert row["prompt"] == 'def f(x):\n    """Doc."""\n'
    assert row["target"] == '    if x:\n        return "# kept"\n    return 0\n'


def test_extra_decontamination_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    body = "    total = 0\n    for item in items:\n        total = total + item * weight\n    return total\n"
    (src / "a.py").write_text(f'def weighted(items, weight):\n    """Weighted sum."""\n{body}')
    (src / "b.py").write_text('def other(x):\n    """Other."""\n    return x\n')
    evalset = tmp_path / "private_eval.jsonl"
    evalset.write_text(
        json.dumps(
            {
                "task_id": "private/0",
                "prompt": "def weighted_sum(items, weight):\n",
                "entry_point": "weighted_sum",
                "test": "",
                "canonical_solution": body,
            }
        )
        + "\n"
    )
    m = prepare(
        PrepareConfig(
            source=str(src),
            out=tmp_path / "o",
            decontaminate=[evalset],
            workers=1,
            valid_fraction=0,
            test_fraction=0,
        )
    )
    assert [(d["id"], d["matched"], d["reason"]) for d in m["decontamination"]["dropped"]] == [
        ("a.py::weighted", "private_eval.jsonl:private/0", "ngram")
    ]
    assert m["decontamination"]["eval_sets"][-1]["name"] == str(evalset)


def test_out_dir_that_is_not_a_dataset_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a pycodegen dataset"):
        prepare(PrepareConfig(source=str(tmp_path), out=out))
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_whole_stdlib(tmp_path: Path) -> None:
    m = prepare(PrepareConfig(out=tmp_path / "std"))
    assert m["counts"]["files_read"] > 1000 and m["splits"]["train"]["rows"] > 5000


def test_lm_windows_with_empty_splits(messy_tree: Path, tmp_path: Path) -> None:
    m = prepare(
        PrepareConfig(
            source=str(messy_tree),
            out=tmp_path / "w",
            task="lm-windows",
            train_tokenizer=True,
            vocab_size=400,
            workers=1,
            valid_fraction=0,
            test_fraction=0,
        )
    )
    assert m["splits"]["valid"]["rows"] == 0 and m["splits"]["train"]["rows"] > 0
    assert (tmp_path / "w" / "valid.jsonl").read_text() == ""


# -- decontamination: a copy is caught, a shared phrase is not -------------------------------------------


def _mbpp_test_row(task_id: int) -> dict:
    from pycodegen.benchmarks import mbpp_rows

    return next(r for r in mbpp_rows("test") if r["task_id"] == task_id)


def test_pasted_test_problems_are_caught(tmp_path: Path, humaneval_rows: list[dict]) -> None:
    """An MBPP test problem pasted with its description; the solutions alone (renamed, re-documented) of
    another MBPP test problem and of a HumanEval problem."""
    src = tmp_path / "src"
    src.mkdir()
    woodall = _mbpp_test_row(20)  # is_woodall: description as the docstring, code as written
    name_end = woodall["code"].index("\n") + 1
    doc = f'\t"""{woodall["text"]}"""\n'
    (src / "woodall.py").write_text(woodall["code"][:name_end] + doc + woodall["code"][name_end:])
    odd = _mbpp_test_row(29)  # get_Odd_Occurrence: only the body, under another name and docstring
    body = odd["code"].split("\n", 1)[1]
    (src / "odd.py").write_text(f'def odd_one_out(arr, arr_size):\n    """The odd one out."""\n{body}')
    (src / "clean.py").write_text('def halve(x):\n    """Half of x."""\n    return x / 2\n')
    he = humaneval_rows[0]  # a HumanEval solution alone (a quarter of the problem's words), re-documented
    header = 'def close(numbers, threshold):\n    """Any two close?"""\n'
    (src / "close.py").write_text(header + he["canonical_solution"])
    cfg = PrepareConfig(source=str(src), out=tmp_path / "o", workers=1, valid_fraction=0, test_fraction=0)
    m = prepare(cfg)
    dropped = {d["id"]: d["matched"] for d in m["decontamination"]["dropped"]}
    assert dropped == {
        "woodall.py::is_woodall": "mbpp/20",
        "odd.py::odd_one_out": "mbpp/29",
        "close.py::close": he["task_id"],
    }
    assert [r["qualname"] for r in _rows(tmp_path / "o", "train")] == ["halve"]


def test_generic_phrasing_alone_is_not_contamination(tmp_path: Path) -> None:
    """MBPP-style rows that share only boilerplate with the MBPP test split are kept.

    Before: the first was dropped on "Write a python function to check whether the given number" (a phrase
    many MBPP test problems share), the second on its name alone (`Check_Solution(a, b, c)` is mbpp/359's
    name, and that of unrelated MBPP problems too)."""
    rows = [
        {
            "task_id": 9001,
            "text": "Write a python function to check whether the given number is a perfect cube or not.",
            "code": "def is_cube(n):\n    root = round(abs(n) ** (1 / 3))\n    return root ** 3 == abs(n)\n",
            "test_list": ["assert is_cube(27)"],
        },
        {
            "task_id": 9002,
            "text": "Write a python function to check whether a quadratic has two real roots.",
            "code": 'def Check_Solution(a, b, c):\n    return "Yes" if b * b - 4 * a * c > 0 else "No"\n',
            "test_list": ['assert Check_Solution(1, 3, 1) == "Yes"'],
        },
        {**_mbpp_test_row(20), "task_id": 9003},  # a verbatim copy of a test problem, under another id
    ]
    source = tmp_path / "mine.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = prepare(
        PrepareConfig(
            source=str(source), out=tmp_path / "o", task="instruction", valid_fraction=0, test_fraction=0
        )
    )
    assert [(d["id"], d["matched"]) for d in m["decontamination"]["dropped"]] == [("mbpp/9003", "mbpp/20")]
    assert [r["id"] for r in _rows(tmp_path / "o", "train")] == ["mbpp/9001", "mbpp/9002"]


# -- empty, tiny and single-file sources ---------------------------------------------------------------------


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: nothing to prepare .*no readable source file"):
        prepare(PrepareConfig(source=str(empty), out=tmp_path / "o", workers=1))
    assert not (tmp_path / "o").exists()
    # The CLI prints that one line and exits 2 (run as a user runs it, with this checkout's code).
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "pycodegen", "prepare", "--source", str(empty), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    (error,) = [line for line in done.stderr.splitlines() if "error" in line]
    assert error.startswith("error:") and "nothing to prepare" in error
    assert "Traceback" not in done.stderr


def test_everything_dropped_says_by_which_stage(tmp_path: Path, humaneval_rows: list[dict]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    he = humaneval_rows[0]
    (src / "leak.py").write_text(he["prompt"] + he["canonical_solution"])
    with pytest.raises(DataError, match=r"all 1 record were dropped \(decontamination 1\)"):
        prepare(PrepareConfig(source=str(src), out=tmp_path / "o", workers=1))


def test_tiny_splits_warn_and_name_the_split(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"m{i}.py").write_text(f'def f{i}(x):\n    """Add {i}."""\n    return x + {i} * {i}\n')
    out = io.StringIO()
    prepare(
        PrepareConfig(source=str(src), out=tmp_path / "o", workers=1, valid_fraction=0, test_fraction=0.1),
        Console(file=out, width=300),
    )
    log = out.getvalue()
    assert "warning: the test split has only 1 record (fewer than 10)" in log
    assert "the train split" not in log and "valid split" not in log  # 11 train records; valid asked for 0


def test_a_single_python_file_is_a_source_tree_of_one_file(tmp_path: Path) -> None:
    from conftest import GOOD_MODULE

    script = tmp_path / "geometry.py"
    script.write_text(GOOD_MODULE)
    out = io.StringIO()
    m = prepare(
        PrepareConfig(source=str(script), out=tmp_path / "o", valid_fraction=0, test_fraction=0),
        Console(file=out, width=300),
    )
    assert m["source"]["kind"] == "python-tree" and m["source"]["files_by_language"] == {"python": 1}
    assert sorted(r["qualname"] for r in _rows(tmp_path / "o", "train")) == ["Shape.scaled", "area"]
    assert _rows(tmp_path / "o", "train")[0]["path"] == "geometry.py"
    assert "read 1 file (" in out.getvalue() and "1 files" not in out.getvalue()


def test_read_split_names_file_and_line(messy_tree: Path, tmp_path: Path) -> None:
    from pycodegen.data.dataset_dir import read_split

    out = tmp_path / "d"
    prepare(PrepareConfig(source=str(messy_tree), out=out, workers=1, valid_fraction=0, test_fraction=0))
    assert read_split(out, "train") == _rows(out, "train") and read_split(out, "valid") == []
    lines = (out / "train.jsonl").read_text().splitlines()
    (out / "train.jsonl").write_text("\n".join([lines[0], '{"id": ', *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:2: invalid JSON"):
        read_split(out, "train")
    with pytest.raises(DataError, match=r"is not a prepared dataset"):
        read_manifest(tmp_path)


def test_added_sources_are_read_beside_the_source_and_mbpp_keeps_its_named_splits(
    shared_data: Path, tmp_path: Path
) -> None:
    """HUST and Nazarbayev train on CodeAlpaca + MBPP train: `add_source` reads a second dataset in its own
    format; `mbpp_splits` keeps only MBPP's train task_ids (601-974); a bad line in the added file is named
    by file and line."""
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(
        json.dumps(
            [
                {
                    "instruction": f"Return {i} plus x.",
                    "input": "",
                    "output": f"def f{i}(x):\n    return x + {i}\n",
                }
                for i in range(30)
            ]
        )
    )
    out = tmp_path / "both"
    m = prepare(
        PrepareConfig(
            source=str(alpaca),
            add_source=["builtin:mbpp"],
            mbpp_splits=["train"],
            out=out,
            task="instruction",
            require_parse=True,
        )
    )
    assert m["source"]["format"] == "codealpaca" and m["added_sources"][0]["format"] == "mbpp"
    ids = [r["id"] for r in _all_rows(out)]
    mbpp = [int(i.split("/")[1]) for i in ids if i.startswith("mbpp/")]
    assert mbpp and all(601 <= i <= 974 for i in mbpp)
    assert any(i.startswith("alpaca/") for i in ids)
    assert m["counts"]["outside_mbpp_splits"] == 600  # test, validation and prompt rows, never read

    broken = tmp_path / "extra.jsonl"
    broken.write_text(json.dumps({"text": "t", "code": "x = 1", "test_list": []}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"extra\.jsonl:2"):
        prepare(PrepareConfig(source=str(alpaca), add_source=[str(broken)], out=tmp_path / "bad"))
