"""`pycodegen self-train` at smoke scale: a tiny model that half-knows a few problems goes through one
round of sample → judge → keep → fine-tune → dev, for real (sandbox, trainer, generation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from pycodegen.config import PrepareConfig, SelfTrainConfig, TrainConfig
from pycodegen.data.prepare import prepare
from pycodegen.errors import ConfigError
from pycodegen.jsonl import read_jsonl, write_jsonl
from pycodegen.selftrain import SelfTrain, normalized
from pycodegen.train.loop import train

ADDERS = {f"add_{k}": k for k in (2, 3, 5, 7, 11, 13)}


def adder(name: str, k: int) -> tuple[str, str]:
    prompt = f'def {name}(x):\n    """Return x plus {k}.\n\n    >>> {name}(1)\n    {k + 1}\n    """\n'
    return prompt, f"    return x + {k}\n"


def problems_file(path: Path, names: list[str]) -> Path:
    rows = []
    for name in names:
        prompt, body = adder(name, ADDERS[name])
        test = f"\n\ndef check(candidate):\n    assert candidate(1) == {ADDERS[name] + 1}\n"
        test += f"    assert candidate(10) == {ADDERS[name] + 10}\n"
        rows.append(
            {
                "task_id": f"toy/{name}",
                "prompt": prompt,
                "entry_point": name,
                "test": test,
                "canonical_solution": body,
            }
        )
    write_jsonl(path, rows)
    return path


@pytest.fixture(scope="module")
def adders_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The adders' source as a dataset with its own small BPE."""
    src = tmp_path_factory.mktemp("adders")
    (src / "adders.py").write_text("\n\n".join("".join(adder(n, k)) for n, k in ADDERS.items()))
    data = tmp_path_factory.mktemp("data") / "d"
    prepare(
        PrepareConfig(
            source=str(src),
            out=data,
            valid_fraction=0,
            test_fraction=0,
            train_tokenizer=True,
            vocab_size=300,
            workers=1,
            dedup=False,
            builtin_eval_sets=False,
        ),
        Console(quiet=True),
    )
    return data


def tiny_gpt2(data: Path, out: Path, steps: int) -> Path:
    cfg = TrainConfig(
        family="hf-causal",
        model="new:gpt2",
        model_args={"n_layer": 2, "n_embd": 64, "n_head": 2},
        data=data,
        out=out,
        lr=3e-3,
        max_steps=steps,
        batch_size=6,
        eval_samples=0,
        save_every=1000,
        eval_every=1000,
        schedule="constant",
    )
    train(cfg, Console(quiet=True))
    return out / "final"


@pytest.fixture(scope="module")
def tiny_model(adders_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 trained briefly on the adders: it writes them roughly right, not always."""
    return tiny_gpt2(adders_data, tmp_path_factory.mktemp("model") / "m", steps=120)


def smoke_round(tmp_path: Path, model: Path, **settings: object) -> SelfTrainConfig:
    """One smoke-scale round: 6 samples to each of four adders, dev on two others, raw prompts."""
    return SelfTrainConfig(
        model=str(model),
        out=tmp_path / "st",
        problems=[problems_file(tmp_path / "pool.jsonl", ["add_2", "add_3", "add_5", "add_7"])],
        mbpp=False,
        dev=problems_file(tmp_path / "dev.jsonl", ["add_11", "add_13"]),
        rounds=1,
        n=6,
        temperature=1.0,
        max_new_tokens=12,
        train_batch_size=4,
        workers=2,
        timeout=5,
        prompt_mode="raw",
        **settings,
    )


def test_one_round_keeps_exactly_the_passing_samples(tiny_model: Path, tmp_path: Path) -> None:
    train_settings = tmp_path / "round-train.yaml"
    train_settings.write_text("lora_r: 4\nlora_alpha: 8\nmax_length: 40\ngroup_by_length: true\n")
    cfg = smoke_round(tmp_path, tiny_model, train_steps=4, keep_per_problem=100, train_config=train_settings)
    summary = SelfTrain(cfg, Console(quiet=True)).run()
    rdir = tmp_path / "st" / "round-0"
    verdicts = {(v["task_id"], v["sample_index"]): v["passed"] for v in read_jsonl(rdir / "verdicts.jsonl")}
    samples = read_jsonl(rdir / "samples.jsonl")
    assert len(verdicts) == len(samples) == 4 * 6
    passing = {
        (s["task_id"], normalized(s["completion"]))
        for s in samples
        if verdicts[(s["task_id"], s["sample_index"])]
    }
    kept = read_jsonl(rdir / "kept.jsonl")
    assert 0 < len(passing) < len(samples), "the tiny model should be right sometimes, not always"
    # Exactly the passing samples, once per distinct normalised program.
    assert {(k["task_id"], normalized(k["completion"])) for k in kept} == passing
    assert len(kept) == len(passing)
    record = summary["rounds"][0]
    assert record["kept_total"] == len(kept) and record["samples"] == 24
    train_rows = read_jsonl(rdir / "data" / "train.jsonl")
    assert [r["target"] for r in train_rows] == [k["completion"] for k in kept]
    assert (Path(record["model"]) / "pycodegen.json").is_file() or Path(record["model"]).is_dir()
    assert 0 <= record["dev_pass@1"] <= 1
    # The round's fine-tune took the --train-config settings, and self-train's own where both could apply.
    trained = json.loads((rdir / "train" / "final" / "pycodegen.json").read_text())["train_config"]
    assert (trained["lora_r"], trained["lora_alpha"], trained["max_length"]) == (4, 8, 40)
    assert trained["group_by_length"] and trained["max_steps"] == 4 and trained["batch_size"] == 4
    assert json.loads((tmp_path / "st" / "rounds.json").read_text())["best_model"]

    # A rerun does no work: every step's output is complete.
    again = SelfTrain(cfg, Console(quiet=True)).run()
    assert again["rounds"] == summary["rounds"]


def test_round_zero_can_sample_with_another_model(
    tiny_model: Path, adders_data: Path, tmp_path: Path
) -> None:
    """--sample-model: a model that cannot write the adders yet (two steps of training) is the one each
    round fine-tunes, and the tiny model that can writes round 0's samples; the round must beat both."""
    start = tiny_gpt2(adders_data, tmp_path / "start", steps=2)
    cfg = smoke_round(tmp_path, start, sample_model=str(tiny_model), train_steps=2, mode="full")
    summary = SelfTrain(cfg, Console(quiet=True)).run()
    record = summary["rounds"][0]
    assert record["sampled_with"] == str(tiny_model) and record["kept_total"] > 0
    assert summary["sample_model"] == str(tiny_model)
    assert (tmp_path / "st" / "dev-sample-model" / "dev.json").is_file()
    trained = json.loads((tmp_path / "st" / "round-0" / "train" / "final" / "pycodegen.json").read_text())
    assert trained["train_config"]["model"] == str(start), "the round fine-tunes --model, not the sampler"
    # The best model is the one with the highest dev pass@1 of the three measured.
    scores = {
        str(start): summary["start_dev_pass@1"],
        str(tiny_model): summary["sample_model_dev_pass@1"],
        record["model"]: record["dev_pass@1"],
    }
    assert summary["best_dev_pass@1"] == max(scores.values())
    assert scores[summary["best_model"]] == summary["best_dev_pass@1"]

    # Resumed without --sample-model: the finished round keeps its record and the log says whose samples.
    console = Console(record=True, width=1000)
    again = SelfTrain(cfg.model_copy(update={"sample_model": None}), console).run()
    assert again["rounds"] == summary["rounds"] and "sample_model" not in again
    assert f"round 0 finished earlier with samples from {tiny_model}, not {start}" in console.export_text()


def test_evaluation_problems_never_enter_the_pool(tmp_path: Path, humaneval_rows: list[dict]) -> None:
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, humaneval_rows[:1])
    with pytest.raises(ConfigError, match="evaluation problems"):
        SelfTrain(SelfTrainConfig(problems=[pool], mbpp=False, out=tmp_path / "o"), Console(quiet=True))


def test_a_bad_train_config_fails_before_any_sampling(tmp_path: Path) -> None:
    pool = problems_file(tmp_path / "pool.jsonl", ["add_2"])
    settings = tmp_path / "t.yaml"

    def start(text: str) -> None:
        settings.write_text(text)
        cfg = SelfTrainConfig(problems=[pool], mbpp=False, out=tmp_path / "o", train_config=settings)
        SelfTrain(cfg, Console(quiet=True))

    with pytest.raises(
        ConfigError, match=r"t\.yaml: these settings belong to self-train's own flags.*lr \(--lr\)"
    ):
        start("lr: 0.001\nlora_r: 4\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: unknown key 'lora_rank'; valid keys: .*lora_r"):
        start("lora_rank: 4\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: max_length: "):
        start("max_length: 2\n")
    assert not (tmp_path / "o").exists(), "nothing is written before the settings are checked"
