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
from pycodegen.benchmarks import MBPP_SPLITS, packaged_source
from pycodegen.config import PrepareConfig
from pycodegen.console import console as default_console
from pycodegen.console import plural, progress
from pycodegen.data import clean
from pycodegen.data.dataset_dir import MANIFEST, split_path, write_manifest
from pycodegen.data.decontaminate import (
    Decontaminator,
    EvalProblem,
    load_eval_file,
    load_humaneval,
    load_mbpp_test,
)
from pycodegen.data.dedup import deduplicate
from pycodegen.data.fim import fim_choice, fim_ids, fim_record, fim_rng, fim_split
from pycodegen.data.formats import read_dataset
from pycodegen.data.items import file_items, function_item, pair_item
from pycodegen.data.problems import NOT_TOP_LEVEL, ModuleContext, problem_for, verify
from pycodegen.data.python_tree import is_source_file, iter_source_files, scan_tree, stdlib_root
from pycodegen.data.rewrite import rewritten_item
from pycodegen.data.split import SPLITS, split_groups
from pycodegen.data.tasks import Item, char_chunks, docstring_row, instruction_row, window_starts
from pycodegen.data.tokenizers import (
    CharVocab,
    control_token,
    train_bpe,
    with_control_tokens,
    with_fim_tokens,
)
from pycodegen.errors import ConfigError, DataError
from pycodegen.jsonl import write_jsonl

__all__ = ["Preparer", "prepare"]

EXAMPLES_IN_MANIFEST = 50
TINY_SPLIT = 10  # a split with fewer records than this gives noisy numbers: warn


class Preparer:
    """Runs the stages of `prepare` for one config; `run()` returns the manifest."""

    def __init__(self, cfg: PrepareConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.console = console or default_console
        self.counts: Counter[str] = Counter()
        self.manifest: dict[str, Any] = {}
        self.mined: dict[str, dict[str, Any]] = {}  # --task problems: task_id → problem

    def log(self, message: str) -> None:
        self.console.print(f"[bold cyan]prepare[/] {message}")

    def warn(self, message: str) -> None:
        self.console.print(f"[bold yellow]warning:[/] {message}")

    # -- sources --------------------------------------------------------------------------------------
    def load_items(self) -> list[Item]:
        cfg = self.cfg
        source = packaged_source(cfg.source)  # `builtin:mbpp`: the copy shipped inside pycodegen
        root = Path(source).expanduser() if source else stdlib_root()
        if not root.exists():
            raise DataError(f"source {root} does not exist")
        # A directory, or one source file (`--source script.py`), is a source tree; any other file is a
        # dataset (JSON / JSONL) whose format is detected from its fields.
        if root.is_dir() or (is_source_file(root) and cfg.format in ("auto", "python-tree")):
            if cfg.format not in ("auto", "python-tree"):
                raise ConfigError(f"--format {cfg.format} reads a dataset file, but {root} is a directory")
            return self._tree_items(root)
        if cfg.task == "problems":
            raise ConfigError(f"--task problems mines a source tree (a directory or a .py file), not {root}")
        if cfg.format == "python-tree":
            raise ConfigError(
                f"--format python-tree needs a directory or a source file, but {root} is neither"
            )
        items = self._pair_items(root, primary=True)
        for extra in cfg.add_source:
            items += self._pair_items(Path(str(packaged_source(extra))).expanduser(), primary=False)
        return items

    def _tree_items(self, root: Path) -> list[Item]:
        cfg = self.cfg
        keep_text = cfg.task in ("lm-windows", "problems")
        total = sum(1 for _ in iter_source_files(root, cfg.exclude))
        with progress("parsing", self.console, transient=True) as bars:
            bar = bars.add_task("files", total=total, status="")
            scan = scan_tree(
                root,
                exclude=cfg.exclude,
                max_bytes=cfg.max_file_bytes,
                keep_text=keep_text,
                group_by_repo=cfg.split_by == "repo",
                workers=cfg.workers,
                progress=lambda n: bars.advance(bar, n),
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
        reasons = ", ".join(f"{r}: {len(p)}" for r, p in sorted(scan.skipped.items()))
        skipped = sum(len(p) for p in scan.skipped.values())
        self.log(
            f"read {plural(scan.counts['files_read'], 'file')} ({scan.bytes_read / 1e6:.1f} MB), "
            f"{plural(len(scan.functions), 'function')}"
            + (f"; skipped {skipped} ({reasons})" if scan.skipped else "")
        )
        if cfg.task == "lm-windows":
            return file_items(scan.files, scan.functions)
        if cfg.task == "problems":
            return self._problem_items(scan.files, scan.functions)
        return self._keep([function_item(fn, cfg.task) for fn in scan.functions])

    def _problem_items(self, files: list[Any], functions: list[Any]) -> list[Item]:
        """Functions with doctest examples → candidate problems (verified in the sandbox later)."""
        contexts = {f.path: ModuleContext.of(f.text) for f in files if f.lang == "python"}
        made: list[Item | str] = []
        for fn in functions:
            ctx = contexts.get(fn.path)
            problem = problem_for(fn, ctx) if ctx is not None else NOT_TOP_LEVEL
            if isinstance(problem, str):
                made.append(problem)
                continue
            self.mined[problem["task_id"]] = problem
            made.append(Item(problem["task_id"], fn.group, fn.source, "", "python", fn, {fn.signature_key}))
        return self._keep(made)

    def verify_problems(self, items: list[Item]) -> list[Item]:
        """Keep the problems whose original passes its own test and whose test is not trivial."""
        from pycodegen.sandbox.executor import Executor

        problems = [self.mined[it.id] for it in items]
        self.log(f"verifying {plural(len(problems), 'problem')} in the sandbox (original passes, stub fails)")
        with progress("verifying", self.console, transient=True) as bars:
            bar = bars.add_task("problems", total=2 * len(problems), status="")
            with Executor(workers=self.cfg.workers, timeout=self.cfg.verify_timeout) as executor:
                kept, counts = verify(problems, executor, lambda n: bars.advance(bar, n))
                self.manifest["sandbox"] = executor.describe()
        self.counts.update(counts)
        ids = {p["task_id"] for p in kept}
        self.log(
            f"verified: kept {plural(len(kept), 'problem')}; "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(counts.items()))
        )
        return [it for it in items if it.id in ids]

    def _keep(self, made: list[Item | str]) -> list[Item]:
        """The items made; a string in their place is the reason a record gave none, counted."""
        items = []
        for it in made:
            if isinstance(it, str):
                self.counts[it] += 1
            else:
                items.append(it)
        return items

    def _pair_items(self, path: Path, primary: bool = True) -> list[Item]:
        """A dataset file's records as items; `--source` is the manifest's `source`, each `--add-source`
        an entry of its `added_sources` (rows and malformed lines counted over all of them)."""
        cfg = self.cfg
        if not path.is_file():
            raise DataError(f"--add-source {path}: not a dataset file (a JSON or JSONL file)")
        read = read_dataset(path, cfg.format if primary else "auto", cfg.skip_bad)
        records = read.records
        kept_splits = ""
        if read.format == "mbpp" and cfg.mbpp_splits:
            ids = {i for split in cfg.mbpp_splits for i in MBPP_SPLITS[split]}
            records = [r for r in records if (r.extra or {}).get("task_id") in ids]
            self.counts["outside_mbpp_splits"] += len(read.records) - len(records)
            kept_splits = f"; kept {len(records)} of MBPP {'+'.join(cfg.mbpp_splits)}"
        described = {
            "kind": "dataset",
            "path": str(path.resolve()),
            "format": read.format,
            "rows": read.rows,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        if primary:
            self.manifest["source"] = described
        else:
            self.manifest.setdefault("added_sources", []).append(described)
        bad = self.manifest.setdefault("bad_lines", {"count": 0, "lines": []})
        bad["count"] += len(read.bad_lines)
        bad["lines"] = (bad["lines"] + read.bad_lines)[:EXAMPLES_IN_MANIFEST]
        self.counts["rows"] += read.rows
        self.counts["bad_lines"] += len(read.bad_lines)
        self.log(
            f"read {plural(read.rows, 'row')} of {read.format} from {path}"
            + (f"; skipped {len(read.bad_lines)} malformed" if read.bad_lines else "")
            + kept_splits
        )
        return self._keep([pair_item(pair, cfg.task) for pair in records])

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
                    rewritten = rewritten_item(item, code, cfg.task)
                    if rewritten is None:
                        self.counts["dropped_clean_failed"] += 1
                        continue
                    item = rewritten
            if cfg.require_parse and not clean.parses(item.code):
                self.counts["dropped_does_not_parse"] += 1
                continue
            if cfg.require_function_return and not clean.defines_function_that_returns(item.code):
                self.counts["dropped_no_function_return"] += 1
                continue
            kept.append(item)
        return kept

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
        self.log(
            f"dedup: {len(result.exact):,} exact and {plural(len(result.near), 'near duplicate')} dropped"
        )
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
        min_overlap = self.cfg.min_overlap
        checker = Decontaminator(problems, n=self.cfg.ngram, min_overlap=min_overlap)
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
            "min_overlap": min_overlap,
            "common_ngrams_ignored": checker.common,
            "dropped_count": len(dropped),
            "dropped": dropped,
        }
        self.log(
            f"decontamination: {plural(len(dropped), 'record')} dropped for reproducing one of "
            f"{plural(sum(s['problems'] for s in sets), 'eval problem')}"
        )
        return kept

    # -- views ----------------------------------------------------------------------------------------
    def tokenizer(self, train_items: list[Item]) -> Any | None:
        tok = self._tokenizer(train_items)
        record = fim_record(self.cfg.fim_rate, self.cfg.fim_spm_rate)
        if record is not None:  # FIM sentinels: added where the tokenizer lacks them
            self.manifest["fim"] = {**record, "level": "character, per window", "added": with_fim_tokens(tok)}
        return tok

    def _tokenizer(self, train_items: list[Item]) -> Any | None:
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
                f"training a byte-level BPE (vocab {cfg.vocab_size}) on "
                f"{plural(len(train_items), 'train record')}"
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
        if cfg.task == "problems":
            return [self.mined[it.id] for it in split_items]
        if cfg.task == "instruction":
            return [instruction_row(it, cfg.template, tokenizer, cfg.eval_format) for it in split_items]
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
                row = {
                    "id": f"{it.id}#{k}",
                    "path": it.id,
                    "lang": it.lang,
                    "start": start,
                    "input_ids": seq[start : start + cfg.window],
                }
                if cfg.fim_rate > 0:
                    self.fim_window(row, tokenizer)
                rows.append(row)
            self.counts["tokens"] += len(seq)
        return rows

    def fim_window(self, row: dict[str, Any], tokenizer: Any) -> None:
        """Rewrite one window in place for fill-in-the-middle (PSM or SPM, at the fim rate): its text,
        without the control token and EOS, is cut at two character positions and re-tokenised part by
        part (pycodegen.data.fim). A FIM row is exactly StarCoder's format, the prompt an editor's request
        becomes (generate/fim.py): no control token in front, EOS after the middle; so it may be a few
        tokens longer than --window."""
        rng = fim_rng(self.cfg.seed, row["id"])
        mode = fim_choice(rng, self.cfg.fim_rate, self.cfg.fim_spm_rate)
        body = row["input_ids"][1:] if row["start"] == 0 else row["input_ids"]  # the control token
        if body and body[-1] == tokenizer.eos_token_id:
            body = body[:-1]
        text = tokenizer.decode(body, clean_up_tokenization_spaces=False)
        if mode is None or not text:
            self.counts["fim_plain_windows"] += 1
            return
        row["input_ids"] = fim_ids(tokenizer, mode, *fim_split(text, rng))
        row["fim"] = mode
        self.counts[f"fim_{mode}_windows"] += 1

    # -- the whole run --------------------------------------------------------------------------------
    def check_not_empty(self, items: list[Item]) -> None:
        """An empty result is an error, not a dataset of 0/0/0 rows; the message says where records went."""
        if items:
            return
        c = self.counts
        source = self.manifest.get("source", {})
        where = source.get("path", self.cfg.source)
        if not c["items"]:
            if source.get("kind") != "python-tree":
                found = f"{plural(c['rows'], 'row')} and no usable record"
            elif c["files_read"]:
                found = f"{plural(c['files_read'], 'source file')} and no usable function"
            else:
                found = "no readable source file (.py, .java, ...)"
            raise DataError(f"{where}: nothing to prepare for --task {self.cfg.task}: {found}")
        stages = {
            "cleaning": c["items"] - c["after_clean"],
            "dedup": c["after_clean"] - c["after_dedup"],
            "decontamination": c["after_dedup"] - c["after_decontamination"],
        }
        if "after_verification" in c:
            stages["sandbox verification"] = c["after_decontamination"] - c["after_verification"]
        why = ", ".join(f"{stage} {n}" for stage, n in stages.items() if n)
        raise DataError(
            f"{where}: all {plural(c['items'], 'record')} were dropped ({why}); nothing is left to split"
        )

    def warn_tiny_splits(self, by_split: dict[str, list[Item]]) -> None:
        fractions = {"valid": self.cfg.valid_fraction, "test": self.cfg.test_fraction}
        for split, items in by_split.items():
            if len(items) < TINY_SPLIT and fractions.get(split, 1) > 0:
                self.warn(
                    f"the {split} split has only {plural(len(items), 'record')} (fewer than {TINY_SPLIT}); "
                    "its numbers will be noisy: use a larger source or a larger fraction"
                )

    def write_views(self, tmp: Path, by_split: dict[str, list[Item]]) -> dict[str, dict[str, int]]:
        """Tokenizer or vocabulary (trained on the train split only) and the three split files."""
        tokenizer = self.tokenizer(by_split["train"])
        vocab = None
        if self.cfg.task == "char-stream":
            vocab = CharVocab.build(
                f"{it.text}\n{it.code}" if it.text else it.code for it in by_split["train"]
            )
            vocab.save(tmp / "vocab.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "tokenizer")
        split_counts: dict[str, dict[str, int]] = {}
        for split, split_items in by_split.items():
            rows = write_jsonl(split_path(tmp, split), self.rows(split_items, tokenizer, vocab))
            split_counts[split] = {
                "groups": len({it.group for it in split_items}),
                "records": len(split_items),
                "rows": rows,
            }
        return split_counts

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        out = Path(cfg.out)
        if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise ConfigError(f"{out} exists and is not a pycodegen dataset directory; choose an empty --out")
        if cfg.valid_fraction + cfg.test_fraction >= 1:
            raise ConfigError("valid_fraction + test_fraction must be below 1")
        if cfg.fim_rate > 0 and cfg.task != "lm-windows":
            raise ConfigError(f"--fim-rate rewrites lm-windows rows; --task {cfg.task} has none (use 0)")
        started = time.perf_counter()
        items = self.load_items()
        self.counts["items"] = len(items)
        self.check_not_empty(items)
        items = self.clean(items)
        self.counts["after_clean"] = len(items)
        items = self.dedup(items)
        self.counts["after_dedup"] = len(items)
        items = self.decontaminate(items)
        self.counts["after_decontamination"] = len(items)
        self.check_not_empty(items)
        if cfg.task == "problems":
            items = self.verify_problems(items)
            self.counts["after_verification"] = len(items)
            self.check_not_empty(items)

        assignment = split_groups((it.group for it in items), cfg.valid_fraction, cfg.test_fraction, cfg.seed)
        by_split: dict[str, list[Item]] = {s: [] for s in SPLITS}
        for it in items:
            by_split[assignment[it.group]].append(it)
        self.warn_tiny_splits(by_split)

        # Everything is written under OUT.partial and renamed at the end: a failed run leaves OUT as it was.
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        split_counts = self.write_views(tmp, by_split)
        files = {
            path.relative_to(tmp).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(p for p in tmp.rglob("*") if p.is_file())
        }
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
        write_manifest(tmp, manifest)
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
        self.log(
            f"wrote {out}: "
            + ", ".join(f"{s} {plural(c['rows'], 'row')}" for s, c in split_counts.items())
            + f" in {time.perf_counter() - started:.1f} s"
        )
        return manifest


def prepare(cfg: PrepareConfig, console: Console | None = None) -> dict[str, Any]:
    """Run `prepare` for a config and return its manifest."""
    return Preparer(cfg, console).run()
