"""Walk a source tree (or one source file) and parse Python files with `ast` into function records and
whole-file texts.

A bad file never stops a run: files that are not UTF-8, do not parse or exceed the size limit are
skipped and counted by reason.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pycodegen.data.records import FileRecord, FunctionRecord
from pycodegen.pyast import try_parse

# File extension → language control-token name (Autocoder trained on Python and Java; the rest ride along).
LANGUAGES: dict[str, str] = {
    ".py": "python",
    ".java": "java",
    ".js": "javascript",
    ".ts": "typescript",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".hpp": "cpp",
    ".go": "go",
    ".rs": "rust",
    ".rb": "ruby",
    ".sh": "shell",
}


def stdlib_root() -> Path:
    """The standard library of the running interpreter: the default corpus."""
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass
class FileResult:
    """What parsing one file produced: its records, or the reason it was skipped."""

    path: str
    lang: str
    group: str
    sha256: str
    size: int
    skipped: str | None = None
    text: str | None = None
    functions: list[FunctionRecord] = field(default_factory=list)


def is_source_file(path: Path) -> bool:
    """Whether `path` is a file in a known language: a source tree of one file.

    >>> is_source_file(Path(__file__)), is_source_file(Path(__file__).parent)
    (True, False)
    """
    return path.is_file() and path.suffix in LANGUAGES


def tree_base(root: Path) -> Path:
    """The directory paths are relative to: the root itself, or a single file's directory."""
    return root.parent if root.is_file() else root


def iter_source_files(root: Path, exclude: list[str]) -> Iterator[Path]:
    """Files with a known language extension under `root` (or `root` itself, if it is one such file),
    in sorted (deterministic) order."""
    if root.is_file():
        if root.suffix in LANGUAGES:
            yield root
        return
    excluded = set(exclude)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in excluded)
        for name in sorted(filenames):
            if Path(name).suffix in LANGUAGES:
                yield Path(dirpath) / name


def _strip_indent(line: str, indent: str) -> str:
    return (
        line[len(indent) :] if line.startswith(indent) else line.lstrip(" \t") if not line.strip() else line
    )


def extract_functions(tree: ast.Module, lines: list[str], path: str, group: str) -> list[FunctionRecord]:
    """Function records for the top-level functions and methods (at any class depth) of a module.

    Functions nested inside functions are left inside their parent: out of context they depend on closures.
    """
    records: list[FunctionRecord] = []

    def visit(body: list[ast.stmt], classes: list[str]) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, [*classes, node.name])
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                record = _function_record(node, lines, path, group, classes)
                if record is not None:
                    records.append(record)

    visit(tree.body, [])
    return records


def _function_record(
    node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str], path: str, group: str, classes: list[str]
) -> FunctionRecord | None:
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    end = node.end_lineno or node.lineno
    first_line = lines[first - 1]
    indent = first_line[: len(first_line) - len(first_line.lstrip(" \t"))]
    block = [_strip_indent(line, indent) for line in lines[first - 1 : end]]
    source = "".join(block)
    if not source.endswith("\n"):
        source += "\n"

    docstring = ast.get_docstring(node, clean=True)
    stmts = node.body[1:] if docstring is not None else node.body
    prompt, body = "", ""
    if stmts and node.body[0].lineno > node.lineno:
        # The prompt is everything up to the docstring's last line (or the header), the body the rest.
        stmt = stmts[0]
        body_first = min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", []))])
        split_at = (node.body[0].end_lineno or node.lineno) if docstring is not None else body_first - 1
        if split_at >= body_first:  # `"""doc"""; x = 1` on one line: no clean split
            return None
        prompt = "".join(block[: split_at - first + 1])
        # Comments between the docstring and the first statement belong to the body; blank lines do not.
        rest = block[split_at - first + 1 :]
        while rest and not rest[0].strip():
            rest = rest[1:]
        body = "".join(rest)
        if not body.endswith("\n"):
            body += "\n"

    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    args = node.args
    arg_names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    if args.vararg:
        arg_names.append("*" + args.vararg.arg)
    if args.kwarg:
        arg_names.append("**" + args.kwarg.arg)
    return FunctionRecord(
        qualname=".".join([*classes, node.name]),
        name=node.name,
        signature=f"{prefix} {node.name}({ast.unparse(args)}){returns}:",
        arg_names=arg_names,
        docstring=docstring,
        prompt=prompt,
        body=body,
        source=source,
        decorators=[ast.unparse(d) for d in node.decorator_list],
        path=path,
        lineno=first,
        end_lineno=end,
        class_name=".".join(classes) or None,
        group=group,
    )


def parse_file(file: Path, root: Path, max_bytes: int, keep_text: bool, group_by_repo: bool) -> FileResult:
    """Read and parse one file; never raises for bad content (the reason is in `skipped`)."""
    rel = file.relative_to(root).as_posix()
    lang = LANGUAGES[file.suffix]
    group = rel.split("/", 1)[0] if group_by_repo else rel
    try:
        size = file.stat().st_size
        if size > max_bytes:
            return FileResult(rel, lang, group, "", size, skipped="too-large")
        raw = file.read_bytes()
    except OSError:
        return FileResult(rel, lang, group, "", 0, skipped="unreadable")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return FileResult(rel, lang, group, digest, size, skipped="not-utf8")
    result = FileResult(rel, lang, group, digest, size, text=text if keep_text else None)
    if lang == "python":
        tree = try_parse(text, filename=rel)
        if tree is None:
            return FileResult(rel, lang, group, digest, size, skipped="syntax-error")
        result.functions = extract_functions(tree, text.splitlines(keepends=True), rel, group)
    return result


def _parse_chunk(args: tuple[list[Path], Path, int, bool, bool]) -> list[FileResult]:
    files, root, max_bytes, keep_text, by_repo = args
    return [parse_file(f, root, max_bytes, keep_text, by_repo) for f in files]


@dataclass
class TreeScan:
    """Everything read from a source tree."""

    functions: list[FunctionRecord]
    files: list[FileRecord]
    counts: Counter[str]
    skipped: dict[str, list[str]]  # reason → relative paths
    languages: Counter[str]
    bytes_read: int
    content_sha256: str


def scan_tree(
    root: Path,
    *,
    exclude: list[str],
    max_bytes: int,
    keep_text: bool,
    group_by_repo: bool = False,
    workers: int = 0,
    progress: object | None = None,
) -> TreeScan:
    """Parse every source file under `root` (in parallel), in a deterministic order."""
    files = list(iter_source_files(root, exclude))
    root = tree_base(root)
    workers = workers or os.cpu_count() or 1
    chunk = 32
    chunks = [files[i : i + chunk] for i in range(0, len(files), chunk)]
    jobs = [(c, root, max_bytes, keep_text, group_by_repo) for c in chunks]
    functions: list[FunctionRecord] = []
    texts: list[FileRecord] = []
    counts: Counter[str] = Counter()
    languages: Counter[str] = Counter()
    skipped: dict[str, list[str]] = {}
    hasher = hashlib.sha256()
    bytes_read = 0

    def consume(results: list[FileResult]) -> None:
        nonlocal bytes_read
        for r in results:
            counts["files_seen"] += 1
            if r.skipped:
                skipped.setdefault(r.skipped, []).append(r.path)
                continue
            counts["files_read"] += 1
            languages[r.lang] += 1
            bytes_read += r.size
            hasher.update(f"{r.path}\0{r.sha256}\n".encode())
            functions.extend(r.functions)
            if r.text is not None:
                texts.append(FileRecord(r.path, r.lang, r.text, r.group))
            if progress is not None:
                progress(1)  # type: ignore[operator]

    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for results in pool.map(_parse_chunk, jobs):
                consume(results)
    else:
        for job in jobs:
            consume(_parse_chunk(job))
    counts["functions"] = len(functions)
    return TreeScan(functions, texts, counts, skipped, languages, bytes_read, hasher.hexdigest())
