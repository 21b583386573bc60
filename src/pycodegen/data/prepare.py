"""`pycodegen prepare`: source tree or dataset → cleaned, deduplicated, decontaminated, split task view.

Output: OUT/{train,valid,test}.jsonl, OUT/manifest.json (sources, options, counts, skipped files by
reason, dedup and decontamination results, content hashes) and, where the view needs one, OUT/tokenizer/
or OUT/vocab.json. The same inputs and options give byte-identical outputs: nothing time- or
machine-dependent is written, and everything is visited in sorted order.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from pycodegen import __version__
from pycodegen.config import PrepareConfig
from pycodegen.data import clean
from pycodegen.data.decontaminate import (
    Decontaminator,
    EvalProblem,
    function_signatures,
    load_eval_file,
    load_humaneval,
    load_mbpp_test,
)
from pycodegen.data.dedup import deduplicate
from pycodegen.data.formats import read_dataset
from pycodegen.data.python_tree import extract_functions, scan_tree, stdlib_root
from pycodegen.data.records import FileRecord, FunctionRecord, PairRecord
from pycodegen.data.split import SPLITS, split_groups
from pycodegen.data.tasks import Item, char_chunks, docstring_row, instruction_row, window_starts
from pycodegen.data.tokenizers import CharVocab, control_token, train_bpe, with_control_tokens
from pycodegen.errors import ConfigError, DataError

MANIFEST = "manifest.json"
EXAMPLES_IN_MANIFEST = 50


def _signature_keys(fn: FunctionRecord) -> set[tuple[str, tuple[str, ...]]]:
    return {(fn.name, tuple(fn.arg_names))}


def _reparse_function(source: str, like: FunctionRecord) -> FunctionRecord | None:
    """Re-extract a function from rewritten source, keeping its origin (path, line, class)."""
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    found = extract_functions(tree, source.splitlines(keepends=True), like.path, like.group)
    if not found:
        return None
    fn = found[0]
    fn.qualname, fn.class_name, fn.lineno, fn.end_lineno = (
        like.qualname,
        like.class_name,
        like.lineno,
        like.end_lineno,
    )
    return fn


def pair_to_function(pair: PairRecord) -> FunctionRecord | None:
    """The first function in a pair's code, its docstring taken from the pair's text if it has none.

    >>> code = "def add(a, b):\\n    return a + b\\n"
    >>> fn = pair_to_function(PairRecord("p/1", "Add two numbers.", code, "g", "x"))
    >>> print(fn.prompt + fn.body, end="")
    def add(a, b):
        \"\"\"Add two numbers.\"\"\"
        return a + b
    """
    import ast

    try:
        tree = ast.parse(pair.code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    found = [
        f for f in extract_functions(tree, pair.code.splitlines(keepends=True), pair.id, pair.group) if f.body
    ]
    if not found:
        return None
    fn = found[0]
    if fn.docstring is None:
        indent = fn.body[: len(fn.body) - len(fn.body.lstrip(" \t"))]
        fn.prompt += f"{indent}{docstring_literal(pair.text.strip(), indent)}\n"
        fn.docstring = pair.text.strip()
    return fn


def docstring_literal(text: str, indent: str = "") -> str:
    """A triple-quoted literal whose value is `text` (quotes and backslashes escaped).

    >>> import ast
    >>> samples = ['Say "hi"', "a \\\\ b", "x" + '"' * 3 + "y", "plain"]
    >>> [ast.literal_eval(docstring_literal(t)) == t for t in samples]
    [True, True, True, True]
    """
    quote3 = '"' * 3
    body = text.replace("\\", "\\\\").replace(quote3, '\\"' * 3)
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    return quote3 + body.replace("\n", "\n" + indent) + quote3


class Preparer:
    """Runs the stages of `prepare` for one config; `run()` returns the manifest."""

    def __init__(self, cfg: PrepareConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.counts: Counter[str] = Counter()
        self.manifest: dict[str, Any] = {}

    def log(self, message: str) -> None:
        self.console.print(f"[bold cyan]prepare[/] {message}")

    # -- sources --------------------------------------------------------------------------------------
    def load_items(self) -> list[Item]:
        cfg = self.cfg
        root = Path(cfg.source).expanduser() if cfg.source else stdlib_root()
        if not root.exists():
            raise DataError(f"source {root} does not exist")
        if root.is_dir():
            if cfg.format not in ("auto", "python-tree"):
                raise ConfigError(f"--format {cfg.format} reads a dataset file, but {root} is a directory")
            return self._tree_items(root)
        if cfg.format == "python-tree":
            raise ConfigError(f"--format python-tree needs a directory, but {root} is a file")
        return self._pair_items(root)

    def _tree_items(self, root: Path) -> list[Item]:
        cfg = self.cfg
        keep_text = cfg.task == "lm-windows"
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from pycodegen.data.python_tree import iter_source_files

        total = sum(1 for _ in iter_source_files(root, cfg.exclude))
        with Progress(
            TextColumn("[cyan]parsing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            bar = progress.add_task("files", total=total)
            scan = scan_tree(
                root,
                exclude=cfg.exclude,
                max_bytes=cfg.max_file_bytes,
                keep_text=keep_text,
                group_by_repo=cfg.split_by == "repo",
                workers=cfg.workers,
                progress=lambda n: progress.advance(bar, n),
            )
        self.counts.update(scan.counts)
        self.manifest["source"] = {
            "kind": "python-tree",
            "path": str(root.resolve()),
            "files_by_language": dict(sorted(scan.languages.items())),
            "bytes": scan.bytes_read,
            "content_sha256": scan.content_sha256,
        }
        self.manifest["skipped_files"] = {
            "counts": {r: len(p) for r, p in sorted(scan.skipped.items())},
            "paths": {r: p for r, p in sorted(scan.skipped.items())},
        }
        self.log(
            f"read {scan.counts['files_read']} files ({scan.bytes_read / 1e6:.1f} MB), "
            f"{len(scan.functions)} functions; skipped {sum(len(p) for p in scan.skipped.values())} "
            + (
                f"({', '.join(f'{r}: {len(p)}' for r, p in sorted(scan.skipped.items()))})"
                if scan.skipped
                else ""
            )
        )
        items: list[Item] = []
        if cfg.task == "lm-windows":
            sigs_by_file: dict[str, set] = {}
            for fn in scan.functions:
                sigs_by_file.setdefault(fn.path, set()).update(_signature_keys(fn))
            for f in scan.files:
                items.append(Item(f.path, f.group, f.text, "", f.lang, f, sigs_by_file.get(f.path, set())))
            return items
        for fn in scan.functions:
            fid = f"{fn.path}::{fn.qualname}"
            if cfg.task == "docstring-to-body":
                if fn.docstring is None or not fn.body:
                    self.counts["dropped_no_docstring_or_body"] += 1
                    continue
                items.append(Item(fid, fn.group, fn.source, "", "python", fn, _signature_keys(fn)))
            elif cfg.task == "instruction":
                if fn.docstring is None or not fn.body:
                    self.counts["dropped_no_docstring_or_body"] += 1
                    continue
                code = "".join(f"@{d}\n" for d in fn.decorators) + fn.signature + "\n" + fn.body
                items.append(Item(fid, fn.group, code, fn.docstring, "python", fn, _signature_keys(fn)))
            else:  # char-stream
                items.append(Item(fid, fn.group, fn.source, "", "python", fn, _signature_keys(fn)))
        return items

    def _pair_items(self, path: Path) -> list[Item]:
        cfg = self.cfg
        read = read_dataset(path, cfg.format, cfg.skip_bad)
        raw = path.read_bytes()
        self.manifest["source"] = {
            "kind": "dataset",
            "path": str(path.resolve()),
            "format": read.format,
            "rows": read.rows,
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
        self.manifest["bad_lines"] = {
            "count": len(read.bad_lines),
            "lines": read.bad_lines[:EXAMPLES_IN_MANIFEST],
        }
        self.counts["rows"] = read.rows
        self.counts["bad_lines"] = len(read.bad_lines)
        self.log(
            f"read {read.rows} rows of {read.format} from {path}"
            + (f"; skipped {len(read.bad_lines)} malformed" if read.bad_lines else "")
        )
        items: list[Item] = []
        for pair in read.records:
            sigs = function_signatures(pair.code)
            if cfg.task == "docstring-to-body":
                fn = pair_to_function(pair)
                if fn is None:
                    self.counts["dropped_no_function"] += 1
                    continue
                items.append(Item(pair.id, pair.group, fn.source, pair.text, "python", fn, sigs, pair.tests))
            elif cfg.task == "lm-windows":
                record = FileRecord(pair.id, "python", pair.code, pair.group)
                items.append(Item(pair.id, pair.group, pair.code, "", "python", record, sigs))
            else:
                items.append(
                    Item(pair.id, pair.group, pair.code, pair.text, "python", pair, sigs, pair.tests)
                )
        return items

    # -- cleaning -------------------------------------------------------------------------------------
    def clean(self, items: list[Item]) -> list[Item]:
        cfg = self.cfg
        rewrite = cfg.normalize_indent or cfg.strip_comments
        kept = []
        for item in items:
            if rewrite and item.lang == "python":
                code = item.code
                if cfg.strip_comments:
                    code = clean.strip_comments(code)
                if cfg.normalize_indent:
                    code = clean.normalize_indent(code)
                if code != item.code:
                    item = self._rewritten(item, code)
                    if item is None:
                        self.counts["dropped_clean_failed"] += 1
                        continue
            if cfg.require_parse and not clean.parses(item.code):
                self.counts["dropped_does_not_parse"] += 1
                continue
            if cfg.require_function_return and not clean.defines_function_that_returns(item.code):
                self.counts["dropped_no_function_return"] += 1
                continue
            kept.append(item)
        return kept

    def _rewritten(self, item: Item, code: str) -> Item | None:
        record = item.record
        if isinstance(record, FunctionRecord) and self.cfg.task == "docstring-to-body":
            fn = _reparse_function(code, record)
            if fn is None or not fn.body:
                return None
            if item.text and fn.docstring is None:  # a pair's description inserted as docstring
                fn = pair_to_function(PairRecord(item.id, item.text, code, item.group, "")) or fn
            record = fn
        elif isinstance(record, FileRecord):
            record = FileRecord(record.path, record.lang, code, record.group)
        return Item(item.id, item.group, code, item.text, item.lang, record, item.signatures, item.tests)

    # -- dedup and decontamination --------------------------------------------------------------------
    def dedup(self, items: list[Item]) -> list[Item]:
        cfg = self.cfg
        if not cfg.dedup:
            self.manifest["dedup"] = {"enabled": False}
            return items
        result = deduplicate(
            [it.dedup_key for it in items],
            near=True,
            threshold=cfg.near_dup_threshold,
            num_perm=cfg.num_perm,
            shingle=cfg.shingle,
        )
        self.manifest["dedup"] = {
            "enabled": True,
            "exact_dropped": len(result.exact),
            "near_dropped": len(result.near),
            "near_threshold": cfg.near_dup_threshold,
            "exact_examples": [[items[d].id, items[k].id] for d, k in sorted(result.exact.items())][
                :EXAMPLES_IN_MANIFEST
            ],
            "near_examples": [[items[d].id, items[k].id] for d, k in sorted(result.near.items())][
                :EXAMPLES_IN_MANIFEST
            ],
        }
        self.log(f"dedup: {len(result.exact)} exact and {len(result.near)} near duplicates dropped")
        return [items[i] for i in result.keep]

    def eval_problems(self) -> tuple[list[EvalProblem], list[dict[str, Any]]]:
        cfg = self.cfg
        problems: list[EvalProblem] = []
        sets = []
        if cfg.builtin_eval_sets:
            he, mb = load_humaneval(), load_mbpp_test()
            problems += he + mb
            sets += [{"name": "humaneval", "problems": len(he)}, {"name": "mbpp-test", "problems": len(mb)}]
        for path in cfg.decontaminate:
            extra = load_eval_file(Path(path))
            problems += extra
            sets.append(
                {
                    "name": str(path),
                    "problems": len(extra),
                    "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
                }
            )
        return problems, sets

    def decontaminate(self, items: list[Item]) -> list[Item]:
        problems, sets = self.eval_problems()
        checker = Decontaminator(problems, n=self.cfg.ngram)
        kept, dropped = [], []
        for item in items:
            hit = checker.check(f"{item.text}\n{item.code}", item.signatures) if problems else None
            if hit is None:
                kept.append(item)
            else:
                dropped.append({"id": item.id, **hit})
        self.manifest["decontamination"] = {
            "eval_sets": sets,
            "ngram": self.cfg.ngram,
            "dropped_count": len(dropped),
            "dropped": dropped,
        }
        self.log(
            f"decontamination: {len(dropped)} records overlap "
            f"{sum(s['problems'] for s in sets)} eval problems"
        )
        return kept

    # -- views ----------------------------------------------------------------------------------------
    def tokenizer(self, train_items: list[Item]) -> Any | None:
        cfg = self.cfg
        needs = (
            cfg.task == "lm-windows"
            or cfg.train_tokenizer
            or (cfg.task == "instruction" and cfg.template == "chat")
        )
        if not needs:
            return None
        if cfg.train_tokenizer or (cfg.task == "lm-windows" and cfg.tokenizer is None):
            self.log(
                f"training a byte-level BPE (vocab {cfg.vocab_size}) on {len(train_items)} train records"
            )
            return train_bpe(
                (f"{it.text}\n{it.code}" if it.text else it.code for it in train_items), cfg.vocab_size
            )
        from pycodegen.zoo import DEFAULT_MODEL, load_tokenizer

        tok = load_tokenizer(cfg.tokenizer or DEFAULT_MODEL)
        return with_control_tokens(tok) if cfg.task == "lm-windows" else tok

    def rows(
        self, split_items: list[Item], tokenizer: Any | None, vocab: CharVocab | None
    ) -> list[dict[str, Any]]:
        cfg = self.cfg
        if cfg.task == "docstring-to-body":
            return [docstring_row(it) for it in split_items]
        if cfg.task == "instruction":
            return [instruction_row(it, cfg.template, tokenizer) for it in split_items]
        if cfg.task == "char-stream":
            rows = []
            for it in split_items:
                text = f"{it.text}\n{it.code}" if it.text else it.code
                rows += [
                    {"id": f"{it.id}#{k}", "text": c} for k, c in enumerate(char_chunks(text, cfg.seq_len))
                ]
            return rows
        rows = []
        if not split_items:  # an empty split (e.g. --valid-fraction 0): nothing to tokenize
            return rows
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError("lm-windows needs a tokenizer with an EOS token")
        encoded = tokenizer([it.code for it in split_items], add_special_tokens=False)["input_ids"]
        for it, ids in zip(split_items, encoded, strict=True):
            seq = [tokenizer.convert_tokens_to_ids(control_token(it.lang)), *ids, eos]
            for k, start in enumerate(window_starts(len(seq), cfg.window, cfg.stride)):
                rows.append(
                    {
                        "id": f"{it.id}#{k}",
                        "path": it.id,
                        "lang": it.lang,
                        "start": start,
                        "input_ids": seq[start : start + cfg.window],
                    }
                )
            self.counts["tokens"] += len(seq)
        return rows

    # -- the whole run --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        out = Path(cfg.out)
        if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise ConfigError(f"{out} exists and is not a pycodegen dataset directory; choose an empty --out")
        if cfg.valid_fraction + cfg.test_fraction >= 1:
            raise ConfigError("valid_fraction + test_fraction must be below 1")
        started = time.perf_counter()
        items = self.load_items()
        self.counts["items"] = len(items)
        items = self.clean(items)
        self.counts["after_clean"] = len(items)
        items = self.dedup(items)
        self.counts["after_dedup"] = len(items)
        items = self.decontaminate(items)
        self.counts["after_decontamination"] = len(items)

        assignment = split_groups((it.group for it in items), cfg.valid_fraction, cfg.test_fraction, cfg.seed)
        by_split: dict[str, list[Item]] = {s: [] for s in SPLITS}
        for it in items:
            by_split[assignment[it.group]].append(it)

        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tokenizer = self.tokenizer(by_split["train"])
        vocab = None
        if cfg.task == "char-stream":
            vocab = CharVocab.build(
                f"{it.text}\n{it.code}" if it.text else it.code for it in by_split["train"]
            )
            vocab.save(tmp / "vocab.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "tokenizer")

        files: dict[str, str] = {}
        split_counts: dict[str, dict[str, int]] = {}
        for split, split_items in by_split.items():
            rows = self.rows(split_items, tokenizer, vocab)
            path = tmp / f"{split}.jsonl"
            with path.open("w", encoding="utf-8", newline="\n") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            split_counts[split] = {
                "groups": len({it.group for it in split_items}),
                "records": len(split_items),
                "rows": len(rows),
            }
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            files[path.relative_to(tmp).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()

        manifest = {
            "pycodegen_version": __version__,
            "task": cfg.task,
            "options": json.loads(cfg.model_dump_json()),
            **self.manifest,
            "counts": dict(sorted(self.counts.items())),
            "splits": split_counts,
            "files": files,
            "dataset_sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
        }
        (tmp / MANIFEST).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
        elapsed = time.perf_counter() - started
        self.log(
            f"wrote {out}: "
            + ", ".join(f"{s} {c['rows']}" for s, c in split_counts.items())
            + f" rows in {elapsed:.1f} s"
        )
        return manifest


def prepare(cfg: PrepareConfig, console: Console | None = None) -> dict[str, Any]:
    """Run `prepare` for a config and return its manifest."""
    return Preparer(cfg, console).run()


def read_manifest(dataset_dir: Path) -> dict[str, Any]:
    """The manifest of a prepared dataset directory."""
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{dataset_dir} is not a prepared dataset (no {MANIFEST}); run `pycodegen prepare` first"
        )
    return json.loads(path.read_text(encoding="utf-8"))
