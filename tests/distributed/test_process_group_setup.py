"""pml_recallk.experiments.distributed outside a job and the refusals made before any process group exists."""

import pytest

from pml_recallk.experiments import distributed
from pml_recallk.experiments.config import ConfigError


def test_without_torchrun_there_is_one_process_and_no_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with distributed.process_group("cpu") as world:
        assert (world.rank, world.world_size, world.is_main) == (0, 1, True)
        assert not distributed.torch.distributed.is_initialized()
        assert distributed.from_main(lambda: 7) == 7 and distributed.split_batch(10) == 10


@pytest.mark.parametrize(
    ("environment", "words"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' must be an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 and WORLD_SIZE=2 do not make a job"),
    ],
)
def test_a_malformed_job_environment_is_a_config_error(monkeypatch, environment, words):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=words), distributed.process_group("cpu"):
        pass


def test_a_device_naming_one_gpu_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="every rank takes its own device: use auto, cuda"):
        with distributed.process_group("cuda:1"):
            pass


def test_a_collective_failure_becomes_one_line_saying_to_resume():
    gloo = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:17838: Connection reset by "
        "peer. This is typically caused by a remote worker hanging"
    )
    assert distributed._is_collective_failure(gloo)
    assert distributed._first_sentence(gloo) == "Read error [127.0.0.1]:17838: Connection reset by peer"
    assert not distributed._is_collective_failure(RuntimeError("CUDA out of memory"))


@pytest.fixture
def recorded_group(monkeypatch):
    """A job of two on rank 1 whose torch.distributed calls are recorded instead of made."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    calls = []
    for name in ("init_process_group", "barrier", "destroy_process_group"):
        monkeypatch.setattr(distributed.dist, name, lambda *args, name=name, **kwargs: calls.append(name))
    return calls


def test_a_finished_rank_waits_for_the_others_before_the_group_closes(recorded_group):
    # Rank 0 evaluates and writes after the others have finished training; closing gloo under it aborted a rank.
    with distributed.process_group("cpu") as world:
        assert world.rank == 1
    assert recorded_group == ["init_process_group", "barrier", "destroy_process_group"]


def test_a_failing_rank_closes_the_group_without_waiting(recorded_group):
    with pytest.raises(ConfigError, match="refused"), distributed.process_group("cpu"):
        raise ConfigError("refused")
    assert recorded_group == ["init_process_group", "destroy_process_group"]
