"""``pml-recallk benchmark`` under torchrun would run every arm on every process into the same folders: refused."""

from pml_recallk import cli


def test_benchmark_under_torchrun_is_refused_with_what_to_do(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets for every process
    monkeypatch.setenv("RANK", "1")
    status = cli.main(["benchmark", "--jobs", "2", "--output-dir", str(tmp_path / "bench")])
    error = capsys.readouterr().err
    assert status == 2
    assert "pml-recallk benchmark does not run under torchrun (WORLD_SIZE=2)" in error
    assert "--jobs N runs N arms at once" in error and "torchrun ... pml-recallk train" in error
    assert not (tmp_path / "bench").exists()


def test_benchmark_list_still_works_and_one_process_is_not_refused(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cli.main(["benchmark", "--list"]) == 0
    assert "rsk" in capsys.readouterr().out
