"""`pycodegen self-train`: executor-verified self-training (expert iteration, as STaR / CodeRL's filtered
sampling): rounds of

1. **sample** `n` solutions per pool problem with the current model (MBPP train, mined problems, ...;
   round 0 with `--sample-model` when given, in the start model's prompt mode);
2. **judge** each in the sandbox against the problem's tests;
3. **keep** the passing ones: normalised-code dedup, at most `keep_per_problem` per problem, never a
   problem of an evaluation set (HumanEval, MBPP test: refused by task id and by decontamination);
4. **fine-tune** the START model on the original data plus everything kept so far (each round restarts
   from the start model, as STaR does, so errors do not compound through a chain of fine-tunes);
5. **dev**: greedy pass@1 on a dev split (MBPP validation by default).

It stops when dev pass@1 does not improve on the best so far, after `rounds`, or when `--budget` runs out.
Every step writes its output under OUT/round-K/ (samples.jsonl, verdicts.jsonl, kept.jsonl, data/,
train/, dev/) and is skipped on a rerun when its output is complete, so a killed run resumes: samples and
verdicts resume row by row, the fine-tune from its last checkpoint. OUT/rounds.json is the summary and
OUT/best names the best model measured on dev (the start model, the sample model or a round's checkpoint).
"""

from __future__ import annotations

import ast
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from pycodegen.benchmarks import MBPP_SPLITS, Problem, load_humaneval_file, load_mbpp
from pycodegen.config import SelfTrainConfig, TrainConfig, parse_budget, parse_config, read_config_file
from pycodegen.console import plural
from pycodegen.data.dataset_dir import read_split, split_path, write_manifest
from pycodegen.data.decontaminate import Decontaminator, function_signatures, load_humaneval, load_mbpp_test
from pycodegen.errors import ConfigError
from pycodegen.evaluate.programs import job_for
from pycodegen.evaluate.score import execute, executor_for, verdict_log_for
from pycodegen.jsonl import read_jsonl, write_json, write_jsonl
from pycodegen.templates import fenced, hust_prompt

DONE = "done.json"

# The `train` settings each round's fine-tune takes from self-train itself: a --train-config file may not
# set them (the flag to use instead, or None where self-train decides).
ROUND_OWNED = {
    "family": None,
    "model": "--model",
    "data": "--data",
    "out": "--out",
    "resume": None,
    "mode": "--mode",
    "lr": "--lr",
    "max_steps": "--train-steps",
    "batch_size": "--train-batch-size",
    "budget": "--train-budget",
    "seed": "--seed",
    "eval_samples": None,
}


def normalized(code: str) -> str:
    """Code with comments, docstrings and layout normalised away, for dedup of kept samples.

    >>> normalized("def f(x):\\n    '''doc'''\\n    return x  # same\\n") == normalized("def f(x): return x")
    True
    """
    tree = None
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return " ".join(code.split())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return ast.unparse(tree)


def is_eval_task(task_id: str) -> bool:
    """HumanEval and MBPP-test problems never enter a training pool.

    >>> is_eval_task("HumanEval/3"), is_eval_task("mbpp/11"), is_eval_task("mbpp/601")
    (True, True, False)
    """
    if task_id.startswith("HumanEval/"):
        return True
    if task_id.startswith("mbpp/"):
        tail = task_id.split("/", 1)[1]
        return tail.isdigit() and int(tail) in MBPP_SPLITS["test"]
    return False


class SelfTrain:
    """One self-training run; `run()` returns the summary written to OUT/rounds.json."""

    def __init__(self, cfg: SelfTrainConfig, console: Console) -> None:
        self.cfg, self.console = cfg, console
        self.mode: str = cfg.prompt_mode  # resolved from the start model when the run starts
        self.out = Path(cfg.out)
        budget = parse_budget(cfg.budget)
        self.deadline = None if budget is None else time.monotonic() + budget
        self.train_settings = self.read_train_settings()
        self.pool = self.pool_problems()
        self.dev = self.dev_problems()
        self.by_id = {p.task_id: p for p in [*self.pool, *self.dev]}

    def log(self, message: str) -> None:
        self.console.print(f"[bold cyan]self-train[/] {message}")

    def read_train_settings(self) -> dict[str, Any]:
        """The --train-config file's settings, checked now so that a typo fails before hours of sampling."""
        path = self.cfg.train_config
        settings = read_config_file(path)
        owned = [k for k in settings if k in ROUND_OWNED]
        if owned:
            hints = [f"{k} ({ROUND_OWNED[k] or 'set by self-train'})" for k in owned]
            raise ConfigError(
                f"{path}: these settings belong to self-train's own flags, not the train config: "
                + ", ".join(hints)
            )
        where = str(path or "self-train")
        self.round_train_config(settings, data=self.out / "data", out=self.out / "train", where=where)
        return settings

    def round_train_config(self, settings: dict[str, Any], data: Path, out: Path, where: str) -> TrainConfig:
        cfg = self.cfg
        budget = cfg.train_budget
        if self.deadline is not None:
            left = max(1, int(self.deadline - time.monotonic()))
            budget = f"{min(left, int(parse_budget(budget) or left))}s"
        owned = {
            "family": "hf-causal",
            "model": cfg.model,
            "mode": cfg.mode,
            "data": data,
            "out": out,
            "lr": cfg.lr,
            "max_steps": cfg.train_steps,
            "budget": budget,
            "batch_size": cfg.train_batch_size,
            "resume": any(out.glob("checkpoint-*")),  # a round killed mid-training continues
            "eval_samples": 0,
            "seed": cfg.seed,
        }
        return parse_config(TrainConfig, {**settings, **owned}, where=where)

    # -- problems -------------------------------------------------------------------------------------
    def pool_problems(self) -> list[Problem]:
        cfg = self.cfg
        pool = load_mbpp("train") if cfg.mbpp else []
        for path in cfg.problems:
            pool += load_humaneval_file(Path(path))
        refused = [p.task_id for p in pool if is_eval_task(p.task_id)]
        if refused:
            raise ConfigError(
                f"the pool holds evaluation problems ({', '.join(refused[:3])}, ...); remove them"
            )
        checker = Decontaminator(load_humaneval() + load_mbpp_test())
        clean = []
        for p in pool:
            code = p.prompt + (p.canonical_solution or "")
            if checker.check(f"{p.instruction}\n{code}", function_signatures(code)) is None:
                clean.append(p)
        if len(clean) < len(pool):
            self.log(
                f"{plural(len(pool) - len(clean), 'pool problem')} dropped: they reproduce an eval problem"
            )
        pool = clean[: cfg.pool_limit] if cfg.pool_limit else clean
        if not pool:
            raise ConfigError("the pool is empty: give --problems FILE or keep --mbpp")
        return pool

    def dev_problems(self) -> list[Problem]:
        cfg = self.cfg
        dev = load_humaneval_file(Path(cfg.dev)) if cfg.dev else load_mbpp("validation")
        pool_ids = {p.task_id for p in self.pool}
        overlap = [p.task_id for p in dev if p.task_id in pool_ids]
        if overlap:
            raise ConfigError(f"dev problems are also in the pool ({', '.join(overlap[:3])}, ...)")
        return dev[: cfg.dev_limit] if cfg.dev_limit else dev

    # -- steps ----------------------------------------------------------------------------------------
    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def sample(self, model: str, problems: list[Problem], out: Path, greedy: bool) -> None:
        from pycodegen.generate.samples import generate_samples

        cfg = self.cfg
        # Every model is asked in the start model's prompt mode: the kept samples train it in that form.
        greedy_settings = {"n": 1, "temperature": 0.0} if greedy else {}
        sampling = cfg.model_copy(update={"prompt_mode": self.mode, **greedy_settings})
        generate_samples(model, problems, out, sampling, benchmark="self-train", console=self.console)

    def judge(self, samples_path: Path, out: Path) -> dict[tuple[str, int], dict[str, Any]]:
        """Verdicts of every sample (resumable: OUT/verdicts.jsonl keeps what was decided)."""
        samples = read_jsonl(samples_path)
        jobs = [job_for(self.by_id[s["task_id"]], s["completion"], s["sample_index"]) for s in samples]
        log = verdict_log_for(out, jobs, self.cfg)
        try:
            with executor_for(self.cfg) as executor:
                execute(jobs, log, executor, self.console, "judging")
        finally:
            log.close()
        return log.verdicts

    def keep(self, samples_path: Path, verdicts: dict, kept_before: list[dict]) -> list[dict]:
        """The passing samples, deduplicated by normalised code, at most keep_per_problem per problem."""
        seen = {(k["task_id"], normalized(k["completion"])) for k in kept_before}
        per_problem: dict[str, int] = {}
        for k in kept_before:
            per_problem[k["task_id"]] = per_problem.get(k["task_id"], 0) + 1
        kept = []
        for s in read_jsonl(samples_path):
            verdict = verdicts.get((s["task_id"], s["sample_index"]))
            if verdict is None or not verdict["passed"]:
                continue
            key = (s["task_id"], normalized(s["completion"]))
            if key in seen or per_problem.get(s["task_id"], 0) >= self.cfg.keep_per_problem:
                continue
            seen.add(key)
            per_problem[s["task_id"]] = per_problem.get(s["task_id"], 0) + 1
            kept.append(
                {"task_id": s["task_id"], "sample_index": s["sample_index"], "completion": s["completion"]}
            )
        return kept

    def write_data(self, out: Path, kept: list[dict], tokenizer: Any) -> None:
        """An instruction dataset: the original data's rows plus one row per kept sample."""
        from pycodegen.generate.decoding import format_prompt

        rows: list[dict[str, Any]] = []
        valid: list[dict[str, Any]] = []
        if self.cfg.data is not None:
            rows += read_split(Path(self.cfg.data), "train")
            valid = read_split(Path(self.cfg.data), "valid")
        for k in kept:
            p = self.by_id[k["task_id"]]
            if self.mode == "raw":
                prompt, target = p.prompt, k["completion"]
            elif self.mode == "hust":
                prompt, target = hust_prompt(p.instruction), k["completion"]
            else:  # chat: answer in a fenced block, the form the chat model answers in (and stops after)
                prompt = format_prompt(tokenizer, p.instruction, "chat")
                target = fenced(k["completion"])
            rows.append(
                {
                    "id": f"{k['task_id']}#{k['sample_index']}",
                    "instruction": p.instruction,
                    "prompt": prompt,
                    "target": target,
                    "tests": [],
                }
            )
        if not valid:  # the trainer's validation loss needs rows: a slice of the kept ones
            valid = rows[-max(1, len(rows) // 20) :]
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(split_path(out, "train"), rows)
        write_jsonl(split_path(out, "valid"), valid)
        write_jsonl(split_path(out, "test"), [])
        digest = hashlib.sha256(split_path(out, "train").read_bytes()).hexdigest()
        template = {"raw": "plain", "hust": "hust", "chat": "chat"}[self.mode]
        write_manifest(
            out,
            {
                "task": "instruction",
                "options": {"template": template, "self_train": True},
                "counts": {"train": len(rows), "valid": len(valid), "kept_samples": len(kept)},
                "dataset_sha256": digest,
            },
        )

    def fine_tune(self, data: Path, out: Path) -> Path:
        from pycodegen.train.loop import train

        cfg = self.cfg
        if (out / "final").is_dir():  # trained already (the run was killed after it, in dev)
            return out / "final"
        where = str(cfg.train_config or "self-train")
        tcfg = self.round_train_config(self.train_settings, data, out, where=where)
        train(tcfg, self.console)
        return out / "final"

    def dev_pass(self, model: str, out: Path) -> float:
        out.mkdir(parents=True, exist_ok=True)
        self.sample(model, self.dev, out / "samples.jsonl", greedy=True)
        verdicts = self.judge(out / "samples.jsonl", out / "verdicts.jsonl")
        passed = sum(1 for v in verdicts.values() if v["passed"])
        score = passed / max(1, len(self.dev))
        write_json(out / "dev.json", {"pass@1": score, "passed": passed, "problems": len(self.dev)})
        return score

    # -- the run --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from pycodegen.generate.decoding import resolve_prompt_mode
        from pycodegen.zoo import load_tokenizer

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        tokenizer = load_tokenizer(cfg.model)
        mode = self.mode = resolve_prompt_mode(tokenizer, cfg.prompt_mode, cfg.model)
        self.log(
            f"pool {plural(len(self.pool), 'problem')}, dev {plural(len(self.dev), 'problem')}; "
            f"{cfg.n} samples per problem at T={cfg.temperature}, prompt mode {mode}"
        )
        summary: dict[str, Any] = {"start_model": cfg.model, "prompt_mode": mode, "rounds": []}
        best_score = self.dev_pass(cfg.model, self.out / "dev-start")
        best_model = cfg.model
        summary["start_dev_pass@1"] = best_score
        self.log(f"start model: dev pass@1 {best_score:.3f}")
        model = cfg.model
        if cfg.sample_model is not None and cfg.sample_model != cfg.model:
            # Round 0 samples with another model; the rounds must beat it too, or the run would name as
            # best a fine-tune that is worse than the model its samples came from.
            model = cfg.sample_model
            score = self.dev_pass(model, self.out / "dev-sample-model")
            summary["sample_model"], summary["sample_model_dev_pass@1"] = model, score
            self.log(f"sample model {model}: dev pass@1 {score:.3f}")
            if score > best_score:
                best_score, best_model = score, model
        kept_all: list[dict] = []
        for k in range(cfg.rounds):
            if self.out_of_time():
                self.log("budget spent: stopping before round " + str(k))
                break
            rdir = self.out / f"round-{k}"
            rdir.mkdir(exist_ok=True)
            done = rdir / DONE
            if done.is_file():
                record = json.loads(done.read_text())
                if record.get("sampled_with") != model:  # finished before --sample-model changed
                    self.log(
                        f"round {k} finished earlier with samples from {record.get('sampled_with')}, "
                        f"not {model}: kept as it is (another --out starts afresh)"
                    )
            else:
                record = self.round(k, rdir, model, kept_all, tokenizer)
                write_json(done, record)
            kept_all = read_jsonl(rdir / "kept.jsonl")
            summary["rounds"].append(record)
            self.log(
                f"round {k}: {record['passing']}/{record['samples']} samples passed, "
                f"{plural(record['kept_total'], 'kept sample')} in all, dev pass@1 {record['dev_pass@1']:.3f}"
            )
            model = record["model"]
            if record["dev_pass@1"] <= best_score:
                self.log("dev pass@1 did not improve: stopping")
                break
            best_score, best_model = record["dev_pass@1"], record["model"]
        summary["best_model"], summary["best_dev_pass@1"] = best_model, best_score
        write_json(self.out / "rounds.json", summary)
        (self.out / "best").write_text(best_model + "\n")
        self.log(f"best: {best_model} (dev pass@1 {best_score:.3f}) → {self.out}/rounds.json")
        return summary

    def round(self, k: int, rdir: Path, model: str, kept_before: list[dict], tok: Any) -> dict:
        samples = rdir / "samples.jsonl"
        self.sample(model, self.pool, samples, greedy=False)
        verdicts = self.judge(samples, rdir / "verdicts.jsonl")
        new = self.keep(samples, verdicts, kept_before)
        kept = [*kept_before, *new]
        write_jsonl(rdir / "kept.jsonl", kept)
        passing = sum(1 for v in verdicts.values() if v["passed"])
        if not kept:
            raise ConfigError(
                f"round {k}: no sample passed ({len(verdicts)} judged); nothing to train on — "
                "more samples (-n), a higher --temperature or easier pool problems"
            )
        self.write_data(rdir / "data", kept, tok)
        trained = self.fine_tune(rdir / "data", rdir / "train")
        score = self.dev_pass(str(trained), rdir / "dev")
        return {
            "round": k,
            "sampled_with": model,
            "samples": len(verdicts),
            "passing": passing,
            "problems_solved": len({key[0] for key, v in verdicts.items() if v["passed"]}),
            "kept_new": len(new),
            "kept_total": len(kept),
            "model": str(trained),
            "dev_pass@1": score,
        }


def run_self_train(cfg: SelfTrainConfig, console: Console) -> dict[str, Any]:
    return SelfTrain(cfg, console).run()
