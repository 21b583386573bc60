"""End-to-end `prepare` on messy trees: skips counted, dedup, decontamination, determinism, split by file."""

from __future__ import annotations

import ast
import io
import json
import tokenize
from pathlib import Path

import pytest

from pycodegen.config import PrepareConfig
from pycodegen.data.prepare import prepare, read_manifest
from pycodegen.errors import ConfigError


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
    assert m["decontamination"]["dropped_count"] >= 500
    row = _rows(out, "train")[0]
    assert row["prompt"].startswith("### Instruction: Create a Python script for this problem: ")
    assert row["prompt"].endswith(" ### Response:") and row["tests"]


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
