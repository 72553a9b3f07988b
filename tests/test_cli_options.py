"""The command line's choices and defaults come from the configs they feed, and building it loads no torch."""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys

import pytest

from geomis.cli.commands import build_parser
from geomis.experiments.reproduce import SIZES, reproduce_plan
from geomis.filter.config import FilterConfig
from geomis.judges.kinds import DEFAULT_JUDGE, DEFAULT_LOCAL_MODEL, JUDGE_KINDS, LEGACY_JUDGE, make_judge
from geomis.judges.local import LocalHFJudge
from geomis.sae.config import SAVE_DTYPES
from geomis.sae.training import SAETrainingConfig
from geomis.settings import REPRODUCE_SIZES

HEAVY = ("torch", "numpy", "pandas", "transformers", "sae_lens", "nnsight", "openai", "huggingface_hub")


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def _option(command: str, flag: str) -> argparse.Action:
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in subcommands.choices[command]._actions if flag in a.option_strings)


def test_filter_defaults_are_the_filter_configs() -> None:
    args, config = _parse("filter", "in.jsonl", "--out", "o"), FilterConfig()
    assert (args.method, args.score, args.model, args.judge) == (config.method, config.score, config.model,
                                                                  config.judge)
    assert (float(args.drop), int(args.seed)) == (config.drop, config.seed)
    assert (int(args.batch_size), int(args.max_length)) == (config.batch_size, config.max_length)
    assert (args.sae, args.toxic, args.neutral, args.device, args.judge_data) == (None,) * 5


def test_train_sae_defaults_are_the_training_configs() -> None:
    args, config = _parse("train-sae", "--out", "o"), SAETrainingConfig()
    for option, field in (("model", "model_name"), ("layer", "layer"), ("width", "width"), ("k", "k"),
                          ("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"), ("seed", "seed"),
                          ("generated_answers", "generated_answers"), ("ce_conversations", "ce_conversations"),
                          ("save_dtype", "save_dtype")):
        assert getattr(args, option) == getattr(config, field), option
    assert (args.tokens or None, args.eval_tokens or None) == (config.tokens, config.eval_tokens)
    assert _option("train-sae", "--save-dtype").choices is SAVE_DTYPES


def test_judge_choices_and_defaults_are_the_judge_kinds() -> None:
    args = _parse("judge", "answers.csv", "--out", "s.csv")
    assert (args.judge, args.local_model) == (DEFAULT_JUDGE, DEFAULT_LOCAL_MODEL) == ("trained", DEFAULT_LOCAL_MODEL)
    assert _option("judge", "--judge").choices is JUDGE_KINDS and _option("filter", "--judge").choices is JUDGE_KINDS
    defaults = {name: p.default for name, p in inspect.signature(make_judge).parameters.items()}
    assert (defaults["kind"], defaults["local_model"]) == (DEFAULT_JUDGE, DEFAULT_LOCAL_MODEL)
    assert inspect.signature(LocalHFJudge.from_name).parameters["name"].default == DEFAULT_LOCAL_MODEL


def test_reproduce_defaults_are_the_designs() -> None:
    args = _parse("reproduce")
    assert args.size is None and args.judge == DEFAULT_JUDGE == reproduce_plan().judge
    assert reproduce_plan().size == "default" and [m.seed for m in reproduce_plan().models] == [0, 0, 0]
    assert _option("reproduce", "--size").choices is REPRODUCE_SIZES and set(REPRODUCE_SIZES) == set(SIZES)
    assert _option("reproduce", "--judge").choices is JUDGE_KINDS
    assert FilterConfig().judge == LEGACY_JUDGE  # geomis filter's judge baseline keeps its committed outputs


@pytest.mark.parametrize("argv", [["--help"], ["filter", "--help"], ["train-sae", "--help"], ["judge", "--help"],
                                  ["reproduce", "--help"]])
def test_help_loads_no_torch(argv: list[str]) -> None:
    code = ("import json, sys\nfrom geomis.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: geomis" in done.stdout
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
