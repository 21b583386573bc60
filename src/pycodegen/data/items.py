"""Records → items: what each task view takes from a parsed function, a whole file, or a dataset pair.

An item is the unit that is cleaned, deduplicated, decontaminated and split as a whole. A record a view
cannot use becomes None, with the reason counted in the manifest.
"""

from __future__ import annotations

from pycodegen.data.decontaminate import function_signatures
from pycodegen.data.records import FileRecord, FunctionRecord, PairRecord
from pycodegen.data.rewrite import pair_to_function
from pycodegen.data.tasks import Item

NO_DOCSTRING = "dropped_no_docstring_or_body"
NO_FUNCTION = "dropped_no_function"


def function_item(fn: FunctionRecord, task: str) -> Item | str:
    """The item a source-tree function gives `task` (not lm-windows, which takes whole files), or the
    counter name of why it gives none."""
    fid = f"{fn.path}::{fn.qualname}"
    sigs = {fn.signature_key}
    if task in ("docstring-to-body", "instruction") and (fn.docstring is None or not fn.body):
        return NO_DOCSTRING
    if task == "instruction":  # the docstring is the instruction, the function without it the answer
        code = "".join(f"@{d}\n" for d in fn.decorators) + fn.signature + "\n" + fn.body
        return Item(fid, fn.group, code, fn.docstring or "", "python", fn, sigs)
    return Item(fid, fn.group, fn.source, "", "python", fn, sigs)


def file_items(files: list[FileRecord], functions: list[FunctionRecord]) -> list[Item]:
    """lm-windows items: whole files, with the signatures of the functions each defines."""
    sigs_by_file: dict[str, set[tuple[str, tuple[str, ...]]]] = {}
    for fn in functions:
        sigs_by_file.setdefault(fn.path, set()).add(fn.signature_key)
    return [Item(f.path, f.group, f.text, "", f.lang, f, sigs_by_file.get(f.path, set())) for f in files]


def pair_item(pair: PairRecord, task: str) -> Item | str:
    """The item a dataset pair gives `task`, or the counter name of why it gives none."""
    sigs = function_signatures(pair.code)
    if task == "docstring-to-body":
        fn = pair_to_function(pair)
        if fn is None:
            return NO_FUNCTION
        return Item(pair.id, pair.group, fn.source, pair.text, "python", fn, sigs, pair.tests)
    if task == "lm-windows":
        record = FileRecord(pair.id, "python", pair.code, pair.group)
        return Item(pair.id, pair.group, pair.code, "", "python", record, sigs)
    return Item(pair.id, pair.group, pair.code, pair.text, "python", pair, sigs, pair.tests)
