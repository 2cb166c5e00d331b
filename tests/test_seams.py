"""The seams the next features plug into, each proven by real training in this process:
boundary sources (a preemption), evaluation hooks (a pruner), tasks with named loss parts,
model converters, the run result, and telemetry that a sink may re-enter."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from engine.config.loading import validate
from contracts.events import EXIT_FINISHED, EXIT_STOPPED, read_events
from engine.run import session
from engine.run.rundir import RunDir
from engine.telemetry.sinks import Telemetry
from contracts.stops import Plan, Reason, Source
from engine.parallel.dist import Dist
from engine.run.assemble import build_trainer
from engine.train.evaluate import EvalVerdict, evaluate
from engine.train.task import Classification, StepOutput
from engine.train.trainer import Trainer

SMALL = {
    "model": {"name": "small_cnn", "factory_args": {"width": 4}},
    "data": {"name": "synthetic", "synthetic_samples": 96, "synthetic_shape": [3, 8, 8]},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
    "checkpoint": {"async_save": False},
    "logging": {"every_steps": 1, "max_step_events_per_s": 100000, "tensorboard": True},
}


def make_trainer(tmp_path: Path, **sections) -> tuple[Trainer, Telemetry, RunDir]:
    raw = {k: dict(v) for k, v in SMALL.items()}
    for name, fields in sections.items():
        raw.setdefault(name, {}).update(fields)
    cfg = validate(raw)
    spec, model = session.prepare(cfg)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    tele = session.telemetry_for(cfg, run, "none", None)
    return build_trainer(cfg, spec, model, run, tele, Dist()), tele, run


def events(run: RunDir) -> list[dict]:
    return list(read_events(run.events.read_text().splitlines(keepends=True)))


class PreemptAt(Source):
    """A boundary source like the spot poller: asks to stop as preempted from a given step."""

    def __init__(self, trainer: Trainer, step: int):
        self.trainer, self.step = trainer, step

    def poll(self) -> Plan:
        if self.trainer.pos.step >= self.step:
            return Plan(Reason.PREEMPTED, why="spot interruption notice")
        return Plan()


def test_a_source_that_says_preempted_ends_the_run_preempted_with_a_checkpoint(tmp_path: Path):
    trainer, tele, run = make_trainer(tmp_path)
    trainer.sources.append(PreemptAt(trainer, 5))
    result = trainer.train()
    tele.close()
    assert (result.exit_code, result.state, result.steps) == (EXIT_STOPPED, "preempted", 5)
    assert result.reason == "spot interruption notice"
    final = [e for e in events(run) if e["type"] == "state"][-1]
    assert final == {**final, "state": "preempted", "exit_code": EXIT_STOPPED, "reason": "spot interruption notice"}
    saves = [e for e in events(run) if e["type"] == "checkpoint"]
    assert saves[-1]["step"] == 5 and saves[-1]["reason"] == "stop"
    assert (run.checkpoints / "step-00000005.pt").is_file()


def test_an_evaluation_hook_may_stop_the_run_and_the_result_carries_the_metrics(tmp_path: Path):
    trainer, tele, run = make_trainer(tmp_path)
    seen = []

    def pruner(step: int, epoch: int, metrics: dict[str, float]):
        seen.append((step, epoch, metrics))
        return EvalVerdict(Reason.PRUNED, "pruned at epoch 1")

    trainer.eval_hooks.append(pruner)
    result = trainer.train()
    tele.close()
    per_epoch = trainer.steps_per_epoch
    assert [(s, e) for s, e, _ in seen] == [(per_epoch, 0)], "called once, after the first evaluation"
    assert (result.exit_code, result.state, result.steps, result.reason) == (EXIT_STOPPED, "pruned", per_epoch,
                                                                           "pruned at epoch 1")
    assert result.metrics == seen[0][2] and set(result.metrics) == {"loss", "accuracy"}


def test_a_finished_run_returns_its_result(tmp_path: Path):
    trainer, tele, run = make_trainer(tmp_path)
    result = trainer.train()
    tele.close()
    assert (result.exit_code, result.state, result.steps) == (EXIT_FINISHED, "finished", trainer.total_steps)
    evals = [e for e in events(run) if e["type"] == "eval"]
    assert result.metrics == evals[-1]["metrics"] and result.best == max(e["metrics"]["accuracy"] for e in evals)


class CeAndL2(Classification):
    """A second task through the same loop: cross-entropy plus a small weight penalty."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.params = list(model.parameters())

    def __call__(self, model, batch) -> StepOutput:
        out = super().__call__(model, batch)
        l2 = 1e-3 * sum(p.square().sum() for p in self.params)
        return StepOutput(out.loss + l2, {"ce": out.parts["ce"], "l2": l2.detach()}, out.logits)


def test_a_task_names_its_loss_parts_in_step_events_and_tensorboard(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, tele, run = make_trainer(tmp_path)
    trainer.task = trainer.stepper.task = CeAndL2(trainer.model)
    trainer.train()
    tele.close()
    steps = [e for e in events(run) if e["type"] == "step"]
    assert steps and all(set(e["losses"]) == {"ce", "l2"} for e in steps)
    for e in steps:  # the parts add up to the loss, up to float32 rounding of the sum
        assert e["losses"]["ce"] + e["losses"]["l2"] == pytest.approx(e["loss"], rel=1e-5)
    acc = EventAccumulator(str(run.tb))
    acc.Reload()
    assert {"loss/ce", "loss/l2", "train/loss"} <= set(acc.Tags()["scalars"])
    assert [s.step for s in acc.Scalars("loss/ce")] == [e["step"] for e in steps]
    assert [s.value for s in acc.Scalars("loss/l2")] == pytest.approx([e["losses"]["l2"] for e in steps])


def test_classification_reports_its_cross_entropy_as_the_ce_part(tmp_path: Path):
    trainer, tele, run = make_trainer(tmp_path, train={"epochs": 1})
    trainer.train()
    tele.close()
    steps = [e for e in events(run) if e["type"] == "step"]
    assert steps and all(e["losses"] == {"ce": e["loss"]} for e in steps)


def test_channels_last_is_a_converter_and_evaluate_needs_no_trainer(tmp_path: Path):
    trainer, tele, run = make_trainer(tmp_path, train={"channels_last": True, "epochs": 1})
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert [c.name for c in trainer.converters] == ["channels_last"]
    trainer.train()
    tele.close()
    # the free function scores the trained model exactly as the loop's last evaluation did
    trainer.model.eval()
    again = evaluate(trainer.model, trainer.data.val, trainer.task, trainer.device, "fp32",
                     lambda x: trainer.data.normalize(x).contiguous(memory_format=torch.channels_last))
    assert again == [e for e in events(run) if e["type"] == "eval"][-1]["metrics"]


class Echo:
    """A sink that answers every step event with an event of its own (as the cost meter does)."""

    def __init__(self, tele: Telemetry):
        self.tele, self.seen = tele, []

    def emit(self, event: dict) -> None:
        self.seen.append(event["type"])
        if event["type"] == "step":
            self.tele.emit("log", level="info", message=f"saw step {event['step']}")

    def close(self) -> None:
        pass


def test_a_sink_may_emit_and_every_sink_sees_one_order():
    tele = Telemetry([])
    first, second = Echo(tele), Echo(tele)
    tele.add(first)
    tele.add(second)
    done = threading.Event()

    def writer_thread():  # the checkpoint writer emits from its own thread meanwhile
        for n in range(200):
            tele.emit("checkpoint", step=n)
        done.set()

    thread = threading.Thread(target=writer_thread)
    thread.start()
    for n in range(200):
        tele.emit("step", step=n)
    thread.join(timeout=30)
    assert done.is_set(), "the writer thread deadlocked"
    assert first.seen == second.seen
    assert first.seen.count("log") == 2 * 200, "each step answered once by each echo"
    for i, kind in enumerate(first.seen):  # every step is followed by its two answers before anything else
        if kind == "step":
            assert first.seen[i + 1:i + 3] == ["log", "log"]


def test_the_cost_meter_is_a_sink_fed_by_the_config_price(tmp_path: Path):
    trainer, tele, run = make_trainer(tmp_path, cost={"price_per_hour": 3.6}, train={"epochs": 1})
    trainer.train()
    tele.close()
    costs = [e for e in events(run) if e["type"] == "cost"]
    assert costs and all(c["source"] == "config" and c["currency"] == "USD" for c in costs)
    spent = [c["accumulated"] for c in costs]
    assert spent == sorted(spent), "dollars only ever grow"
    # wall-clock billing (engine.telemetry.cost): from the process's start to the final state
    last = costs[-1]
    assert last["accumulated"] == pytest.approx(3.6 * (last["t"] - last["since"]) / 3600, abs=1e-5)
    assert last["projected"] == pytest.approx(last["accumulated"]) and last["remaining_steps"] == 0