"""Flags built from the config dataclasses, and bad configuration values: exit 2, one line
naming the flag or the IMPRESSIONIST_* setting, before anything loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.cli.flags import config_values
from core.cli.main import build_parser, main
from core.generation.pipeline import C2FConfig
from core.learning.nightly import NightlyConfig
from core.learning.sft_trainer import SFTTrainConfig
from core.learning.train import TrainConfig


@pytest.mark.parametrize("verb,configs", [
    (["nightly"], [NightlyConfig, TrainConfig]),
    (["train-sft"], [SFTTrainConfig]),
    (["generate"], [C2FConfig]),
])
def test_flag_defaults_are_the_config_defaults(verb, configs):
    """A verb run without options builds exactly the configs' own defaults."""
    args = build_parser().parse_args(verb)
    for config in configs:
        values = config_values(args, config)
        assert values, config
        assert config(**values) == config(), config


def test_flags_carry_the_fields_help():
    args = build_parser().parse_args(["nightly", "--min-heldout", "3", "--lr", "1e-3",
                                      "--readers", "dr_a, dr_b", "--force"])
    nightly = NightlyConfig(**config_values(args, NightlyConfig))
    train = TrainConfig(**config_values(args, TrainConfig))
    assert (nightly.min_heldout_reports, nightly.readers, nightly.force) == (3, ["dr_a", "dr_b"],
                                                                            True)
    assert train.learning_rate == 1e-3
    for f in dataclasses.fields(NightlyConfig) + dataclasses.fields(SFTTrainConfig):
        assert f.metadata.get("help"), f.name


def test_sft_lora_alpha_defaults_to_twice_the_rank():
    args = build_parser().parse_args(["train-sft", "--lora-r", "16"])
    assert SFTTrainConfig(**config_values(args, SFTTrainConfig)).lora_alpha == 32


@pytest.mark.parametrize("argv,flag", [
    (["nightly", "--min-heldout", "-1"], "--min-heldout"),
    (["nightly", "--threads", "0"], "--threads"),
    (["train-sft", "--lora-alpha", "0"], "--lora-alpha"),
    (["train-sft", "--max-steps", "0"], "--max-steps"),
    (["generate", "--llm", "sometimes"], "--llm"),
])
def test_a_bad_config_value_on_the_command_line_exits_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert flag in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("var,value", [
    ("IMPRESSIONIST_BACKEND", "tensorflow"),
    ("IMPRESSIONIST_NIGHTLY_NICE", "30"),
    ("IMPRESSIONIST_NIGHTLY_THREADS", "many"),
    ("IMPRESSIONIST_BCRYPT_ROUNDS", "2"),
    ("IMPRESSIONIST_IDLE_MINUTES", "-5"),
])
def test_a_bad_setting_exits_2_with_one_line_naming_it(var, value, monkeypatch, capsys):
    monkeypatch.setenv(var, value)
    assert main(["users", "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {var}={value!r}"), err


@pytest.mark.parametrize("nice", ["10", "3"])
def test_an_import_process_runs_at_the_import_priority_and_a_caller_keeps_its_own(tmp_path, nice):
    """`python -m core import` lowers its own priority (IMPRESSIONIST_IMPORT_NICE) so the app's
    threads get the cores first; main() called from another program leaves that program's
    priority alone."""
    import os
    import subprocess
    import sys

    csv_file = tmp_path / "r.csv"
    csv_file.write_text("uid,findings,impression\n1,Lungs are clear.,Normal chest.\n")
    probe = ("import os, sys; from core.cli.main import main; "
             "rc = main(['import', sys.argv[1], '--format', 'csv'], process=sys.argv[2] == '1'); "
             "print('nice', os.nice(0), 'rc', rc)")
    env = dict(os.environ, IMPRESSIONIST_IMPORT_NICE=nice,
               IMPRESSIONIST_DB=str(tmp_path / f"db{nice}.duckdb"))
    root = Path(__file__).resolve().parents[2]
    own = subprocess.run([sys.executable, "-c", probe, str(csv_file), "1"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert f"nice {max(int(nice), os.nice(0))} rc 0" in own.stdout, own.stderr
    called = subprocess.run([sys.executable, "-c", probe, str(csv_file), "0"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert f"nice {os.nice(0)} rc 0" in called.stdout, called.stderr
