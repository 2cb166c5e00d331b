"""Pipeline parallel (#19 parts 2, 4 to 6, 8): the gpt cut into stages on Gloo ranks, alone and with FSDP.

Agreement with one process is judged by outcome: the schedule splits each batch into
microbatches, averages their gradients (mean of means: the same mean, summed in another order),
and FSDP's data-parallel groups reduce-scatter theirs. Measured on 46 steps: validation loss
within 2e-4 of its value. The corpus is cut so every batch is full (a pipeline drops a short
last batch: its stages exchange activations of one shape), so one process runs the same steps.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import engine_env, events_of, run_engine, run_engines
from contracts.events import EXIT_BAD_INPUT
from test_gpt import GPT_RUN
from test_resume import final_state
from test_tensor_parallel import refused, resume_matches, shards, stop_mid_run, val_losses

pytestmark = pytest.mark.timeout(600)

# 1,472 training windows of 32 bytes: 46 full batches of 32 (and 2 x 46 of 16); four blocks, so
# an interleaved pipeline of 2 ranks x 2 stages has one each.
PP_RUN = (GPT_RUN.replace("epochs = 2", "epochs = 1").replace("max_bytes = 60000", "max_bytes = 58888")
          .replace("layers = 2", "layers = 4"))
PP2 = ("--nproc", "2", "--set", "distributed.pipeline_stages=2")
PP2_D2 = ("--nproc", "4", "--set", "distributed.pipeline_stages=2", "--set", "distributed.strategy='fsdp'",
          "--set", "distributed.pipeline_schedule='gpipe'", "--set", "distributed.pipeline_split=['blocks.1']",
          "--set", "distributed.microbatches=4", "--set", "train.batch_size=16")
INTERLEAVED = ("--nproc", "2", "--set", "distributed.pipeline_stages=2",
               "--set", "distributed.pipeline_schedule='interleaved1f1b'")  # stages_per_rank: 2 by default


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pp")
    (base / "gpt.toml").write_text(PP_RUN)
    common = ["run", str(base / "gpt.toml"), "--runs-dir", str(base / "runs")]
    done = run_engines({"pp2_d2": {"args": [*common, "--run-id", "pp2_d2", *PP2_D2]},
                        "pp2": {"args": [*common, "--run-id", "pp2", *PP2]},
                        "il": {"args": [*common, "--run-id", "il", *INTERLEAVED]},
                        "one": {"args": [*common, "--run-id", "one"]}}, timeout=500)
    for name, proc in done.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    return {name: base / "runs" / name for name in done}


def test_a_two_stage_pipeline_trains_to_the_single_process_weights(runs):
    one = final_state(runs["one"])["model"]
    ranks = shards(runs["pp2"])
    assert [r["pipeline_stages"] for r in ranks] == [2, 2]
    first, last = (set(r["model"]) for r in ranks)
    assert "embed.weight" in first and "head.weight" in last and not first & last  # each stage its own part
    assert first | last == set(one)
    assert ranks[0]["step"] == final_state(runs["one"])["step"] == 46
    for r in ranks:
        for name, tensor in r["model"].items():
            assert torch.allclose(tensor, one[name], rtol=0, atol=1e-4), f"{name}: {float((tensor - one[name]).abs().max())}"
    assert val_losses(runs["pp2"]) == pytest.approx(val_losses(runs["one"]), rel=1e-3)
    steps = [e for e in events_of(runs["pp2"]) if e["type"] == "step"]
    ref = {e["step"]: e["loss"] for e in events_of(runs["one"]) if e["type"] == "step"}
    assert all(e["loss"] == pytest.approx(ref[e["step"]], rel=1e-3) for e in steps)  # the last stage's loss, reported
    assert all(0 <= e["accuracy"] <= 1 for e in steps)


def test_step_events_carry_the_bubble_each_stages_times_and_every_ranks_peak_memory(runs):
    steps = [e for e in events_of(runs["pp2"]) if e["type"] == "step"]
    for e in steps:
        assert e["pipeline_bubble_ideal"] == pytest.approx(1 / 5)  # P = 2, M = 4: (P - 1) / (M + P - 1)
        assert 0 <= e["pipeline_bubble"] < 1 and e["time_bubble_s"] >= 0
        assert len(e["stage_forward_s"]) == len(e["stage_backward_s"]) == 2
        assert all(t > 0 for t in e["stage_forward_s"] + e["stage_backward_s"])
        assert len(e["mem_peak_ranks_bytes"]) == 2 and all(b > 0 for b in e["mem_peak_ranks_bytes"])
    assert "time_bubble_s" not in [e for e in events_of(runs["one"]) if e["type"] == "step"][-1]
    wide = [e for e in events_of(runs["pp2_d2"]) if e["type"] == "step"][-1]
    assert wide["pipeline_bubble_ideal"] == pytest.approx(1 / 5) and len(wide["mem_peak_ranks_bytes"]) == 4


def test_an_interleaved_pipeline_holds_two_stages_on_each_rank_and_agrees_with_one_process(runs):
    one = final_state(runs["one"])["model"]
    ranks = shards(runs["il"])
    assert [(r["pipeline_stages"], r["stages_per_rank"]) for r in ranks] == [(2, 2), (2, 2)]
    first, second = (set(r["model"]) for r in ranks)
    blocks = [{k.split(".")[1] for k in part if k.startswith("blocks.")} for part in (first, second)]
    assert blocks == [{"0", "2"}, {"1", "3"}]  # 4 stages looped over 2 ranks: rank 0 holds stages 0 and 2
    assert "embed.weight" in first and "head.weight" in second and first | second == set(one)
    for r in ranks:
        for name, tensor in r["model"].items():
            assert torch.allclose(tensor, one[name], rtol=0, atol=1e-4), f"{name}: {float((tensor - one[name]).abs().max())}"
    assert val_losses(runs["il"]) == pytest.approx(val_losses(runs["one"]), rel=1e-3)
    steps = [e for e in events_of(runs["il"]) if e["type"] == "step"]
    assert steps[-1]["step"] == 46 and steps[-1]["pipeline_bubble_ideal"] == pytest.approx(1 / 9)  # V = 2, M = 4
    assert all(len(e["stage_forward_s"]) == 2 and min(e["stage_forward_s"]) > 0 for e in steps)


def test_a_pipeline_composed_with_fsdp_on_four_ranks_agrees_with_one_process(runs):
    ranks = shards(runs["pp2_d2"])
    assert len(ranks) == 4 and {r["pipeline_stages"] for r in ranks} == {2}
    assert val_losses(runs["pp2_d2"]) == pytest.approx(val_losses(runs["one"]), rel=2e-3)


def test_a_pipeline_run_stopped_mid_epoch_resumes_bit_exactly_and_refuses_another_layout(tmp_path, runs):
    run = stop_mid_run(tmp_path, PP_RUN, PP2)
    other = run_engine("resume", "cut", "--runs-dir", str(run.parent), "--set", "distributed.pipeline_stages=1",
                       "--set", "distributed.nproc=1", timeout=300)  # one process: the whole model
    assert other.returncode == EXIT_BAD_INPUT, other.stderr[-3000:]
    assert "pipeline_stages = 2 x 1" in other.stderr and "tensor_parallel = 1 x 1" in other.stderr
    other = run_engine("resume", "cut", "--runs-dir", str(run.parent), "--nproc", "2",
                       "--set", "distributed.pipeline_schedule='interleaved1f1b'", "--set", "distributed.stages_per_rank=2",
                       timeout=300)
    assert other.returncode == EXIT_BAD_INPUT, other.stderr[-3000:]
    assert "pipeline_stages = 2 (stages_per_rank = 2) x 1" in other.stderr, other.stderr[-3000:]
    resume_matches(run, runs["pp2"])


def test_an_interleaved_pipeline_stopped_mid_epoch_resumes_bit_exactly(tmp_path, runs):
    resume_matches(stop_mid_run(tmp_path, PP_RUN, INTERLEAVED), runs["il"])


@pytest.mark.parametrize("sets, words", [
    (["distributed.nproc=3", "distributed.pipeline_stages=2"], ["pipeline_stages = 2", "nproc = 3"]),
    (["distributed.nproc=4", "distributed.pipeline_stages=4", "model.factory_args={layers=2,dim=32,heads=4,context=32}"],
     ["pipeline_stages = 4", "2 blocks"]),
    (["distributed.nproc=2", "distributed.pipeline_stages=2", "distributed.pipeline_schedule='interleaved1f1b'",
      "distributed.stages_per_rank=3"], ["pipeline_stages = 2 x stages_per_rank = 3", "4 blocks"]),
    (["distributed.nproc=2", "distributed.pipeline_stages=2", "distributed.stages_per_rank=2"],
     ["stages_per_rank = 2", "interleaved1f1b"]),
    (["distributed.nproc=4", "distributed.pipeline_stages=2", "distributed.pipeline_schedule='interleaved1f1b'",
      "distributed.strategy='fsdp'"], ["interleaved1f1b", "nproc = 4", "not supported"]),
    (["distributed.nproc=2", "distributed.pipeline_stages=2", "distributed.pipeline_schedule='interleaved1f1b'",
      "distributed.microbatches=1"], ["microbatches = 1", "multiple of pipeline_stages = 2"]),
    (["distributed.nproc=2", "distributed.pipeline_stages=2", "distributed.pipeline_split=['blocks.7']"],
     ["pipeline_split", "blocks.7"]),
    (["distributed.nproc=4", "distributed.pipeline_stages=2"], ["strategy = 'ddp'", "fsdp"]),
    (["distributed.nproc=2", "distributed.pipeline_stages=2", "distributed.microbatches=5"],
     ["microbatches = 5", "batch_size = 32"]),
    (["distributed.nproc=2", "distributed.pipeline_stages=2", "model.name='small_cnn'", "data.name='digits'",
      "model.factory_args={}"],
     ["pipeline_stages", "cannot be split"]),
    (["distributed.pipeline_stages=2"], ["pipeline_stages = 2", "nproc"]),
    (["distributed.nproc=2", "distributed.pipeline_stages=2", "train.eval_batch_size=8"], ["eval_batch_size = 8"]),
])
def test_a_pipeline_that_cannot_be_built_exits_2_naming_the_field_and_writes_nothing(tmp_path, sets, words):
    refused(tmp_path, PP_RUN, sets, words)


SEQUENTIAL = '''
import torch
from torch import nn


def mlp(num_classes, in_channels, hidden=32):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, num_classes))
'''


def test_a_users_sequential_model_is_cut_between_its_children(tmp_path):
    (tmp_path / "seqmodel.py").write_text(SEQUENTIAL)
    (tmp_path / "seq.toml").write_text('[model]\nname = "seqmodel:mlp"\n[data]\nname = "digits"\n'
                                       "[optim]\nname = \"adamw\"\nlr = 0.01\n[train]\nepochs = 2\nbatch_size = 32\n"
                                       "[logging]\nevery_steps = 5\n")
    env_path = f"{tmp_path}"
    done = run_engine("run", str(tmp_path / "seq.toml"), "--runs-dir", str(tmp_path / "runs"), "--run-id", "seq",
                      "--nproc", "2", "--set", "distributed.pipeline_stages=2",
                      "--set", "distributed.pipeline_split=['3']", timeout=300,
                      env={**engine_env(), "PYTHONPATH": env_path + os.pathsep + engine_env()["PYTHONPATH"]})
    assert done.returncode == 0, done.stderr[-3000:]
    first, last = (set(r["model"]) for r in shards(tmp_path / "runs" / "seq"))
    assert first == {"1.weight", "1.bias"} and last == {"3.weight", "3.bias", "5.weight", "5.bias"}
    evals = [e for e in events_of(tmp_path / "runs" / "seq") if e["type"] == "eval"]
    assert evals and evals[-1]["metrics"]["accuracy"] > 0.5  # a classifier learnt through two stages
