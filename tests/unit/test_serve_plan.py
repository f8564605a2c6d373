"""How `conveyor serve` shares a host out among processes (`workers.serve.plan_host`)."""

from __future__ import annotations

import pytest

from workers.serve import HostPlan, plan_host


def test_a_gpu_host_gets_one_inference_process_per_gpu_and_quarters_for_the_cpu_stages() -> None:
    plan = plan_host(16, gpus=(0, 1))
    assert (plan.preprocess, plan.inference, plan.postprocess) == (4, 2, 4)
    assert plan.environment("inference", 0)["CUDA_VISIBLE_DEVICES"] == "0"
    assert plan.environment("inference", 1)["CUDA_VISIBLE_DEVICES"] == "1"
    assert plan.environment("inference", 2)["CUDA_VISIBLE_DEVICES"] == "0"  # round robin
    assert plan.environment("inference", 1)["CONVEYOR_RUNTIME__DEVICE_ID"] == "0"
    assert "CONVEYOR_RUNTIME__INTRA_OP_THREADS" not in plan.environment("inference", 0)


def test_cpu_inference_shares_what_the_cpu_stages_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS", "CONVEYOR_RUNTIME__INTRA_OP_THREADS"):
        monkeypatch.delenv(name, raising=False)
    plan = plan_host(16)
    assert (plan.preprocess, plan.inference, plan.postprocess) == (4, 2, 4)
    # 16 - 4 - 4 = 8 cores for 2 processes of 2 concurrent runs: 2 threads a run.
    assert plan.environment("inference", 0)["CONVEYOR_RUNTIME__INTRA_OP_THREADS"] == "2"
    assert "CUDA_VISIBLE_DEVICES" not in plan.environment("inference", 0)
    assert plan.environment("preprocess", 0) == {
        "OMP_NUM_THREADS": "1",
        "RAYON_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_a_small_host_still_runs_every_stage() -> None:
    plan = plan_host(2)
    assert (plan.preprocess, plan.inference, plan.postprocess) == (1, 1, 1)
    assert plan.environment("preprocess", 0)["TOKENIZERS_PARALLELISM"] == "false"


def test_counts_given_win_and_threads_the_user_set_stay_theirs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    plan = plan_host(8, preprocess=1, inference=1, postprocess=1)
    assert (plan.preprocess, plan.inference, plan.postprocess) == (1, 1, 1)
    env = plan.environment("preprocess", 0)
    assert "OMP_NUM_THREADS" not in env
    assert env["RAYON_NUM_THREADS"] == "2"  # 8 cores / 3 processes
    assert env["TOKENIZERS_PARALLELISM"] == "true"


def test_counts_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="every count must be >= 1"):
        HostPlan(cores=4, preprocess=0, inference=1, postprocess=1)


def test_fused_workers_share_the_cores_and_gpus_among_themselves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS", "CONVEYOR_RUNTIME__INTRA_OP_THREADS"):
        monkeypatch.delenv(name, raising=False)
    plan = plan_host(8, fused=2)
    assert plan.kinds == ("fused",)
    assert plan.count("fused") == 2
    # 8 cores for 2 processes of 2 concurrent runs: 2 threads a run; the model's threads
    # have the cores, so each tokenizes on its own thread.
    assert plan.environment("fused", 1) == {
        "OMP_NUM_THREADS": "1",
        "RAYON_NUM_THREADS": "4",
        "TOKENIZERS_PARALLELISM": "false",
        "CONVEYOR_RUNTIME__INTRA_OP_THREADS": "2",
    }
    on_gpus = plan_host(16, gpus=(0, 1), fused=3)
    assert [on_gpus.environment("fused", i)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == [
        "0",
        "1",
        "0",
    ]
    assert "CONVEYOR_RUNTIME__INTRA_OP_THREADS" not in on_gpus.environment("fused", 0)
    # With the model on a GPU, the tokenizer's pool has the cores of its share.
    assert on_gpus.environment("fused", 0)["TOKENIZERS_PARALLELISM"] == "true"
    with pytest.raises(ValueError, match="every count must be >= 1"):
        HostPlan(cores=4, preprocess=0, inference=0, postprocess=0, fused=-1)


def test_lane_pools_of_one_host_get_instance_ids_of_their_own() -> None:
    from workers.serve import instance_prefix
    from workers.settings import load_settings

    assert instance_prefix(load_settings(), "gpu-host-1") == "gpu-host-1-"
    realtime = load_settings(worker={"lanes": ["realtime"]})
    lower = load_settings(worker={"lanes": ["standard", "bulk"]})
    assert instance_prefix(realtime, "gpu-host-1") == "gpu-host-1-realtime-"
    assert instance_prefix(lower, "gpu-host-1") == "gpu-host-1-standard+bulk-"
