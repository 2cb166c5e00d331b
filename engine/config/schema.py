"""The run configuration: one TOML file validated into a typed tree (pydantic).

Every field has a description; `cockpit-engine example-config` prints them as a commented
example and the README's field reference is generated from the same schema. Validation
errors name the field path, the value given and what was expected; unknown keys get a
"did you mean". Nothing here imports torch, so a bad config is refused in a fraction of a
second and before anything is written.

The sections live by theme in model_data, training, operations and sweep; they are re-exported
here, so `from engine.config.schema import DataConfig` keeps working. engine/config/ imports
only the standard library, pydantic (and tomli_w to write TOML), contracts and itself:
the rest of the engine builds on it.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from engine.config.alerts import AlertsConfig
from engine.config.base import FeatureSection, Int, Section
from engine.config.model_data import (
    BUILTIN_DATASETS, DATASETS_WITH_ROOT, AugmentConfig, DataConfig, ModelConfig)
from engine.config.operations import (
    SPOT_POLL_MAX_S, CheckpointConfig, CostConfig, DistributedConfig, LoggingConfig, SlurmConfig, SpotConfig)
from engine.config.sweep import SpaceParam, SweepConfig, check_space, with_values
from engine.config.training import (
    DistillConfig, OptimConfig, QuantizeConfig, ScheduleConfig, TrainConfig)

__all__ = [
    "AugmentConfig", "BUILTIN_DATASETS", "CheckpointConfig", "Config", "CostConfig", "DATASETS_WITH_ROOT",
    "DataConfig", "DistillConfig", "DistributedConfig", "FeatureSection", "Int", "LoggingConfig",
    "ModelConfig", "OptimConfig", "QuantizeConfig", "SPOT_POLL_MAX_S", "ScheduleConfig", "Section",
    "SlurmConfig", "SpaceParam", "SpotConfig", "SweepConfig", "TrainConfig", "with_values",
]

class Config(Section):
    """A whole run."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    spot: SpotConfig = Field(default_factory=SpotConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)

    @model_validator(mode="after")
    def _check(self) -> "Config":
        q, d = self.quantize, self.distributed
        if (q.qat or q.float8) and (d.nproc > 1 or d.strategy != "ddp"):
            field = "quantize.qat" if q.qat else "quantize.float8"
            raise ValueError(f"{field} = true: quantized training runs in one process for now "
                             f"(distributed.nproc = {d.nproc}, strategy {d.strategy!r})")
        if q.qat and self.train.compile:
            raise ValueError("quantize.qat = true with train.compile = true: torch.compile fails on PT2E's fused "
                             "fake-quantization op (its meta kernel gets the observer shapes wrong); train QAT "
                             "uncompiled (the int8 model it converts to is compiled for inference)")
        if d.tensor_parallel > 1:
            self._check_tensor_parallel()
        if d.pipeline_stages > 1:
            self._check_pipeline()
        if self.sweep.space:
            check_space(self)
        target = self.train.target
        if target is not None and target.metric == "val_perplexity" and self.data.name != "text":
            raise ValueError(f"train.target.metric = 'val_perplexity' with data.name = {self.data.name!r}: "
                             "perplexity is a language model's (data.name = 'text'); use val_accuracy or val_loss")
        return self

    def _check_pipeline(self) -> None:
        d, t = self.distributed, self.train
        p, m = d.pipeline_stages, d.microbatches
        if m is not None and t.batch_size % m:
            raise ValueError(f"distributed.microbatches = {m}: must divide train.batch_size = {t.batch_size}")
        if m is not None and m % p and d.pipeline_schedule == "interleaved1f1b":
            raise ValueError(f"distributed.microbatches = {m}: an interleaved schedule needs a multiple of "
                             f"pipeline_stages = {p}")
        if m is None and t.batch_size % p:
            raise ValueError(f"train.batch_size = {t.batch_size}: a {p}-stage pipeline splits it into at least "
                             f"{p} microbatches; make it a multiple of {p} or set distributed.microbatches")
        for field, value, ok in (("train.grad_accum_steps", t.grad_accum_steps, 1), ("train.precision", t.precision, "fp32"),
                                 ("train.compile", t.compile, False), ("train.grad_clip_norm", t.grad_clip_norm, None)):
            if value != ok and not (field == "train.precision" and value == "bf16"):
                raise ValueError(f"{field} = {value!r} with distributed.pipeline_stages = {p}: not supported in a "
                                 "pipeline yet")
        if t.eval_batch_size not in (None, t.batch_size):
            raise ValueError(f"train.eval_batch_size = {t.eval_batch_size} with distributed.pipeline_stages = {p}: "
                             f"the stages exchange activations of one shape; leave it unset or {t.batch_size}")
        if self.distill.enabled:
            raise ValueError(f"distill.enabled = true with distributed.pipeline_stages = {p}: not supported")
        self._check_stages_fit()

    def _check_stages_fit(self) -> None:
        """What can be told from the config alone, before any process starts: the built-in models."""
        d, name, split = self.distributed, self.model.name, self.distributed.pipeline_split
        p = d.pipeline_stages * d.stages_per_rank
        if name != "gpt" and ":" not in name:
            raise ValueError(f"distributed.pipeline_stages = {p}: model.name = {name!r} cannot be split into stages "
                             "(a pipeline needs the built-in gpt, whose blocks are a ModuleDict, or an nn.Sequential "
                             "from a factory)")
        layers = self.model.factory_args.get("layers", 4) if name == "gpt" else None
        if isinstance(layers, int) and p > layers:
            stages = (f"pipeline_stages = {d.pipeline_stages} x stages_per_rank = {d.stages_per_rank}"
                      if d.stages_per_rank > 1 else f"pipeline_stages = {p}")
            raise ValueError(f"distributed.{stages}: more stages than the model's {layers} blocks")
        names = [f"blocks.{i}" for i in range(layers)] if isinstance(layers, int) else None
        wrong = [s for s in split if names is not None and s not in names]
        if wrong:
            raise ValueError(f"distributed.pipeline_split = {split!r}: {wrong[0]!r} names no module to split at "
                             f"(the model's are {', '.join(names[:8])}{' ...' if len(names) > 8 else ''})")

    def _check_tensor_parallel(self) -> None:
        t, name = self.distributed.tensor_parallel, self.model.name
        if name != "gpt" and ":" not in name:
            raise ValueError(f"distributed.tensor_parallel = {t}: model.name = {name!r} has no tensor-parallel plan "
                             "(the built-in 'gpt' has one; a factory's model can define tp_plan())")
        heads = self.model.factory_args.get("heads", 4) if name == "gpt" else None
        if isinstance(heads, int) and heads % t:
            raise ValueError(f"distributed.tensor_parallel = {t}: must divide model.factory_args.heads = {heads} "
                             "(each rank holds whole attention heads)")
