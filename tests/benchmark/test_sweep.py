"""Sweep files and arms (pml_recallk.benchmark.sweep), and the benchmark's command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pml_recallk import benchmark
from pml_recallk.benchmark import Arm, Sweep
from pml_recallk.experiments import LOSSES
from pml_recallk.experiments.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FILES = sorted((ROOT / "benchmarks" / "configs").glob("sweep_*.toml"))


def quiet(message: str) -> None:
    pass


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_committed_sweep_files_are_valid(path):
    sweep, output_dir = benchmark.load_sweep(path)
    assert output_dir == f"benchmarks/results/{path.stem}"
    assert len(sweep.seeds) >= 3 and sweep.arms
    assert {arm.loss for arm in sweep.arms} <= set(LOSSES)


def test_han_sweep_has_the_arms_issue_10_asks_for():
    sweep, _ = benchmark.load_sweep(ROOT / "benchmarks" / "configs" / "sweep_han_glyphs_scratch.toml")
    batches = {arm.name: sweep.arm_config(arm, 0)["data"]["batch_size"] for arm in sweep.arms}
    assert {batches[f"rsk_b{b}"] for b in (256, 1024, 4096)} == {256, 1024, 4096}
    assert sweep.arm("rsk_b4096_equal_steps").equal_steps == "rsk_b256"
    assert sweep.arm_config(sweep.arm("rsk_b4096"), 0)["train"]["chunk_size"] == 256
    # The losses issue 10 lists (not LOSSES itself: a docs example registers a loss of its own).
    assert {arm.loss for arm in sweep.arms} == {
        "rsk",
        "multi_similarity",
        "contrastive",
        "proxy_anchor",
        "fastap",
        "triplet",
    }
    assert sweep.floors == ["untrained"] and sweep.seeds == [0, 1, 2]


def test_arm_tables_are_overrides_of_the_base_config(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(
        "[sweep]\nseeds = [0, 1, 2]\n[train]\nepochs = 3\n"
        '[arms.rsk_simix]\nloss = "rsk"\n[arms.rsk_simix.mixup]\nenabled = true\nmode = "database_only"\n'
        '[arms.ms]\nloss = "multi_similarity"\nequal_steps = "rsk_simix"\n[arms.ms.data]\nbatch_size = 32\n'
    )
    sweep, _ = benchmark.load_sweep(path)
    assert sweep.names == ["rsk_simix", "ms"]
    simix = sweep.arm_config(sweep.arm("rsk_simix"), seed=2)
    assert simix["mixup"]["enabled"] and simix["mixup"]["mode"] == "database_only"
    assert (simix["train"]["seed"], simix["train"]["epochs"], simix["loss"]["name"]) == (2, 3, "rsk")
    ms = sweep.arm_config(sweep.arm("ms"), seed=0)
    assert (ms["loss"]["name"], ms["data"]["batch_size"], ms["mixup"]["enabled"]) == ("multi_similarity", 32, False)


def test_sweep_file_tables_override_the_recipe_and_its_model_variant(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('[sweep]\nlosses = ["rsk"]\n\n[model]\nname = "vit_b16"\n\n[train]\nepochs = 3\n')
    sweep, _ = benchmark.load_sweep(path, dataset="cub", overrides=["data.root=/data/CUB_200_2011"])
    # The CUB recipe's ViT-B/16 variant (AdamW at 1e-5), with the file's epochs on top.
    assert (sweep.config["model"]["name"], sweep.config["train"]["optimizer"]) == ("vit_b16", "adamw")
    assert sweep.config["train"]["lr"] == pytest.approx(1e-5)
    assert sweep.config["train"]["epochs"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [('[sweep]\nlosses = ["rsk"]\nbudget = 10\n', "sweep.budget"),
     ('[train]\nepoch = 3\n', "did you mean train.epochs"),
     ('[sweep]\nseeds = [0, "1"]\n', "seeds must be"),
     ('[arms.a]\nloss = "smooth_ap"\n', "unknown loss 'smooth_ap'"),
     ('[arms.a]\nloss = "rsk"\nbatch = 4\n', "unknown key arms.a.batch"),
     ('[arms.a.train]\nepoch = 3\n', "did you mean train.epochs"),
     ('[arms.a.data]\nbatch_size = 30\n', "multiple of data.samples_per_class"),
     ('[arms.a]\nequal_steps = "b"\n', "equal_steps must name another arm"),
     ('[arms.untrained]\nloss = "rsk"\n', "arm name must be"),
     ('[sweep]\nfloors = ["pretrained"]\n', "needs model.init_checkpoint"),
     ('[sweep]\nfloors = ["random"]\n', "unknown floor 'random'")],
)  # fmt: skip
def test_sweep_file_mistakes_name_the_key(text, message, tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        benchmark.load_sweep(path)


def test_sweep_toml_written_with_the_report_reads_back(config, tmp_path):
    arms = [Arm("rsk_b32", "rsk", {"data": {"batch_size": 32}}), Arm("fa", "fastap", equal_steps="rsk_b32")]
    sweep = Sweep(config=config, arms=arms, seeds=[4, 5], budget_images=128)
    (tmp_path / "sweep.toml").write_text(benchmark.sweep.sweep_toml(sweep))
    again, _ = benchmark.load_sweep(tmp_path / "sweep.toml")
    assert (again.names, again.seeds, again.budget_images, again.floors) == (
        ["rsk_b32", "fa"],
        [4, 5],
        128,
        ["untrained"],
    )
    assert again.arm("rsk_b32").overrides == {"data": {"batch_size": 32}} and again.arm("fa").equal_steps == "rsk_b32"
    assert again.config == sweep.config


# ----------------------------------------------------------------------------------------- command line


def test_list_prints_every_loss_with_its_settings(capsys):
    assert benchmark.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name, entry in LOSSES.items():
        assert name in out and entry.settings in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--losses", "rsk,nope"], "unknown loss 'nope'"), (["--sweep", "missing.toml"], "does not exist"),
     (["--set", "data.batch_size=30"], "multiple of"), (["--set", "train.epoch=3"], "did you mean train.epochs"),
     (["--arms", "zzz"], "unknown arm 'zzz'"), (["--threads", "0"], "--threads must be at least 1")],
)  # fmt: skip
def test_user_mistakes_are_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert benchmark.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_pml_recallk_benchmark_is_this_runner(capsys):
    from pml_recallk import cli

    assert cli.main(["benchmark", "--list"]) == 0
    assert "proxy_anchor" in capsys.readouterr().out


def test_report_only_rewrites_the_table_from_finished_runs(config, datasets, tmp_path):
    sweep = Sweep(config=config, arms=[Arm("triplet", "triplet")], seeds=[0])
    benchmark.run_sweep(sweep, tmp_path / "out", datasets=datasets, log=quiet, command="cmd")
    (tmp_path / "out" / "results.md").unlink()
    sweep_file = tmp_path / "out" / "sweep.toml"
    assert benchmark.main(["--sweep", str(sweep_file), "--output-dir", str(tmp_path / "out"), "--report-only"]) == 0
    assert "| triplet | triplet | 16 |" in (tmp_path / "out" / "results.md").read_text()


def test_the_first_runners_configuration_names_still_work_as_arms(config):
    with pytest.warns(DeprecationWarning, match="now an arm"):
        sweep = Sweep(config=config, losses=["rsk", "rsk_large", "rsk_simix"], batch_size=16, chunk_size=8, seeds=[0])
    large, simix = sweep.arm_config(sweep.arm("rsk_large"), 0), sweep.arm_config(sweep.arm("rsk_simix"), 0)
    assert (large["loss"]["name"], large["data"]["batch_size"], large["train"]["chunk_size"]) == ("rsk", 0, 8)
    assert (simix["loss"]["name"], simix["data"]["batch_size"], simix["mixup"]["enabled"]) == ("rsk", 16, True)
    assert sweep.arm_config(sweep.arm("rsk"), 0)["mixup"]["enabled"] is False


def test_run_one_still_works_with_a_deprecation_warning(config, datasets, tmp_path):
    sweep = Sweep(config=config, arms=[Arm("fastap", "fastap")], seeds=[0])
    with pytest.warns(DeprecationWarning, match="run_one is deprecated"):
        result = benchmark.run_one(sweep, "fastap", 0, datasets, tmp_path, log=quiet)
    assert result["spec"]["arm"] == "fastap" and (tmp_path / "result.json").is_file()


def test_a_subset_of_arms_keeps_the_arm_its_equal_steps_arm_refers_to():
    from pml_recallk.benchmark import runner

    path = ROOT / "benchmarks" / "configs" / "sweep_han_glyphs_scratch.toml"
    args = runner.build_parser().parse_args(["--sweep", str(path), "--arms", "rsk_b4096_equal_steps"])
    sweep, _ = runner._sweep_of(args)
    assert sweep.names == ["rsk_b4096_equal_steps"]  # only this arm runs ...
    reference = sweep.arm("rsk_b256")  # ... but the arm it takes its steps from is known
    assert sweep.arm_config(reference, 0)["data"]["batch_size"] == 256
    with pytest.raises(KeyError, match="no arm 'ms_b256'"):
        sweep.arm("ms_b256")


def test_an_arm_sets_loss_hyper_parameters_through_its_loss_table(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(
        '[sweep]\nseeds = [0]\n[arms.warm.loss]\nname = "rsk"\nrank_temperature = 0.05\n'
        '[arms.ms]\nloss = "multi_similarity"\n'
    )
    sweep, _ = benchmark.load_sweep(path)
    warm = sweep.arm_config(sweep.arm("warm"), seed=0)
    assert (sweep.arm("warm").loss, warm["loss"]["name"], warm["loss"]["rank_temperature"]) == ("rsk", "rsk", 0.05)
    ms = sweep.arm_config(sweep.arm("ms"), seed=0)
    # Another loss's table is its own preset: RS@k's keys are not carried over to it.
    assert ms["loss"] == {"name": "multi_similarity", "alpha": 2.0, "beta": 50.0, "base": 0.5}
    assert ms["miner"] == {"name": "MultiSimilarityMiner", "epsilon": 0.1}


def test_base_config_lays_a_config_file_under_the_sweeps_tables(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = '[data]\ndataset = "glyphs"\nbatch_size = 32\n[train]\nepochs = 7\nlr = 0.5\n'
    (tmp_path / "recipe.toml").write_text(recipe)
    path = tmp_path / "sweep.toml"
    path.write_text('[sweep]\nbase_config = "recipe.toml"\n[train]\nepochs = 2\n[arms.a]\nloss = "rsk"\n')
    sweep, _ = benchmark.load_sweep(path)
    # The file's keys reach the base config; the sweep's own tables win over the file's.
    assert (sweep.config["data"]["batch_size"], sweep.config["train"]["lr"]) == (32, 0.5)
    assert sweep.config["train"]["epochs"] == 2
    plain, _ = benchmark.load_sweep(tmp_path / "recipe.toml")  # no [sweep]: the default arms on that file's config
    assert plain.config["train"]["epochs"] == 7


@pytest.mark.parametrize(
    "value, message", [('"missing.toml"', "missing.toml' does not exist"), ("3", "sweep.base_config must be")]
)
def test_a_bad_base_config_is_a_clear_error(value, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "sweep.toml"
    path.write_text(f'[sweep]\nbase_config = {value}\n[arms.a]\nloss = "rsk"\n')
    with pytest.raises(ConfigError, match=message):
        benchmark.load_sweep(path)
