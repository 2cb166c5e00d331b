"""The [sweep] section: an Optuna study over [sweep.space], whose keys must be sweepable config fields."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field, ValidationError, model_validator

from engine.config.base import Int, Section, suggest


class SpaceParam(Section):
    """One dimension of a sweep's search space: a range (float or int) or a list of choices."""

    low: Optional[Union[Int, float]] = Field(None, description="Lowest value (with high)")
    high: Optional[Union[Int, float]] = Field(None, description="Highest value (with low)")
    log: bool = Field(False, description="Sample on a log scale (low > 0)")
    step: Optional[Union[Int, float]] = Field(None, gt=0, description="Spacing of the values (int when low, high and step are integers)")
    choices: Optional[list[Any]] = Field(None, description="A categorical dimension: one of these values")

    @model_validator(mode="after")
    def _check(self) -> "SpaceParam":
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("choices: give either choices or low/high (log, step), not both")
            if not self.choices:
                raise ValueError("choices = []: expected at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("expected { low = ..., high = ... } (log, step optional) or { choices = [...] }")
        if self.low > self.high:
            raise ValueError(f"low = {self.low!r} is above high = {self.high!r}")
        if self.log and self.step is not None:
            raise ValueError("log = true with step: a log scale has no step")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true with low = {self.low!r}: a log scale needs low > 0")
        return self

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high, self.step)
                                            if v is not None)

    def values_to_check(self) -> list[Any]:
        """The values a config must accept for this dimension to be sweepable."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


#: What a sweep can optimize, each with its natural direction. val_*: the last evaluation's; params:
#: the model's parameter count; latency_ms: one CPU forward pass of a batch of 1 through the
#: compiled model (median of 20, measured once at the end of a finished trial); cost: the trial's
#: dollars from its goodput ledger, or its seconds when no price is known.
OBJECTIVE_METRICS = {"val_accuracy": "maximize", "val_loss": "minimize", "val_perplexity": "minimize",
                     "params": "minimize", "latency_ms": "minimize", "cost": "minimize"}
#: The factory_args each built-in model takes (a sweep suggests a model.factory_args.X only for them).
MODEL_ARGS = {"small_cnn": ("width", "norm", "dropout"), "mlp": ("hidden", "width", "depth", "dropout"),
              "gpt": ("layers", "dim", "heads", "context", "dropout")}


class Objective(Section):
    """One objective of a sweep: a metric and whether to maximize or minimize it."""

    metric: str = Field(description="One of " + ", ".join(OBJECTIVE_METRICS))
    direction: Optional[str] = Field(None, description="'maximize' or 'minimize' (default: the metric's natural one)")

    @model_validator(mode="after")
    def _check(self) -> "Objective":
        if self.metric not in OBJECTIVE_METRICS:
            raise ValueError(f"metric = {self.metric!r}: expected one of {', '.join(OBJECTIVE_METRICS)}"
                             f"{suggest(self.metric, OBJECTIVE_METRICS)}")
        if self.direction not in (None, "maximize", "minimize"):
            raise ValueError(f"direction = {self.direction!r}: expected 'maximize' or 'minimize'")
        return self

    @property
    def resolved_direction(self) -> str:
        return self.direction or OBJECTIVE_METRICS[self.metric]


class SweepConfig(Section):
    """Optuna sweeps: `cockpit-engine sweep CONFIG` runs trials over [sweep.space], each a run."""

    enabled: bool = Field(False, description="Marks the config as a sweep (`cockpit-engine sweep` needs it)")
    trials: Int = Field(12, ge=1, description="Trials in the study (a restarted worker continues up to this)")
    metric: Literal["val_accuracy", "val_loss", "val_perplexity"] = Field(
        "val_accuracy", description="What the study optimizes: each epoch's validation accuracy, loss or "
        "perplexity (text); a finished trial's value is its last evaluation's (one objective: see objectives)")
    direction: Optional[Literal["maximize", "minimize"]] = Field(
        None, description="Default: maximize for val_accuracy, minimize for val_loss and val_perplexity")
    objectives: list[Objective] = Field(
        default_factory=list, description="Several objectives at once instead of metric/direction: "
        "[{ metric = \"val_accuracy\", direction = \"maximize\" }, { metric = \"params\" }]; metrics: "
        + ", ".join(OBJECTIVE_METRICS) + " (latency_ms: CPU, compiled, batch of 1; cost: dollars, or seconds "
        "without a price); the study keeps the Pareto front")
    sampler: Literal["auto", "tpe", "nsga2", "random"] = Field(
        "auto", description="Optuna's sampler, seeded from train.seed; auto: TPE (multi-objective TPE with "
        "several objectives: NSGA-II's first generation of 50 is random search in a sweep of tens of trials)")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="Stops unpromising trials after an evaluation (state 'pruned'); Optuna cannot "
        "prune a study of several objectives: there it is off unless set, and refused if set")
    warmup_epochs: Optional[Int] = Field(
        None, ge=0, description="The median pruner never prunes before this many epochs; default: half of "
        "train.epochs (a fraction scales with the trials' length; on the demo sweep it pruned no more good "
        "trials than 1 epoch: bench/RESULTS.md, #23 part 4)")
    startup_trials: Int = Field(
        5, ge=0, description="The median pruner prunes only once this many trials completed (Optuna's own "
        "default; with 2, a 6-trial demo sweep lost 16% of its good trials, with 5 2%: bench/RESULTS.md, #23 part 4)")
    space: dict[str, SpaceParam] = Field(
        default_factory=dict, description="The search space: keys are dotted config field names "
        "('optim.lr', 'model.factory_args.width'), values { low, high, log, step } or { choices = [...] }")

    @model_validator(mode="after")
    def _check_objectives(self) -> "SweepConfig":
        if not self.objectives:
            return self
        given = [f for f in ("metric", "direction") if f in self.model_fields_set]
        if given:
            raise ValueError(f"objectives with {given[0]} = {getattr(self, given[0])!r}: give objectives, or "
                             "metric and direction (one objective), not both")
        seen = [o.metric for o in self.objectives]
        for i, metric in enumerate(seen):
            if metric in seen[:i]:
                raise ValueError(f"objectives.{i}.metric = {metric!r}: already objective {seen.index(metric)}; "
                                 "each metric once")
        if len(self.objectives) > 1 and "pruner" in self.model_fields_set and self.pruner != "none":
            raise ValueError(f"pruner = {self.pruner!r} with {len(self.objectives)} objectives: Optuna cannot prune "
                             "a multi-objective study (a trial's intermediate values have no single order); "
                             "set pruner = \"none\" or leave it out")
        return self

    def warmup_for(self, epochs: int) -> int:
        """The median pruner's warm-up: warmup_epochs, else half of the trials' epochs (at least 1)."""
        return self.warmup_epochs if self.warmup_epochs is not None else max(1, epochs // 2)

    @property
    def resolved_direction(self) -> str:
        return self.direction or ("maximize" if self.metric == "val_accuracy" else "minimize")

    @property
    def resolved_objectives(self) -> list[tuple[str, str]]:
        """(metric, direction) of each objective: objectives, or metric/direction as one."""
        if self.objectives:
            return [(o.metric, o.resolved_direction) for o in self.objectives]
        return [(self.metric, self.resolved_direction)]

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def resolved_pruner(self) -> str:
        """The pruner used: none for a multi-objective study (Optuna prunes only single-objective ones)."""
        return "none" if self.multi else self.pruner


def _space_field_error(key: str, root: type[BaseModel]) -> str | None:
    """Why a sweep.space key is not a field of the root config (None: it is one)."""
    parts = key.split(".")
    model: Any = root
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields or (i == 0 and part == "sweep"):
            known = [f for f in fields if not (i == 0 and f == "sweep")]
            where = ".".join(parts[:i]) or "the config"
            return f"{part!r} is not a field of {where}{suggest(part, known)}"
        annotation = fields[part].annotation
        rest = parts[i + 1:]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if not rest:
                return f"{key!r} is a section, not a field"
            model = annotation
            continue
        if getattr(annotation, "__origin__", None) is dict:
            return None if len(rest) <= 1 else f"{key!r}: {part} takes one more key, e.g. {part}.width"
        return None if not rest else f"{'.'.join(parts[:i + 1])} is a value, not a section"
    return None


def with_values(cfg: BaseModel, values: dict[str, Any]) -> dict[str, Any]:
    """The config as a raw dict, without its sweep section, with dotted keys set to values."""
    data = cfg.model_dump(exclude_none=True)
    data.pop("sweep", None)
    for key, value in values.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def check_space(cfg: BaseModel) -> None:
    """Refuse a space key that is no field, or a value of it the config itself refuses."""
    root = type(cfg)
    for key, param in cfg.sweep.space.items():
        error = _space_field_error(key, root)
        if error:
            raise ValueError(f"sweep.space.{key!r}: {error}")
        for value in param.values_to_check():
            try:
                root.model_validate(with_values(cfg, {key: value}))
            except ValidationError as exc:
                first = exc.errors()[0]
                msg = first["msg"].removeprefix("Value error, ")
                raise ValueError(f"sweep.space.{key!r}: {key} = {value!r} is refused: {msg}") from None
    check_models(cfg)


def model_choices(cfg: BaseModel) -> list[str]:
    """The model names a sweep's trials may train: sweep.space's model.name choices, else model.name."""
    param = cfg.sweep.space.get("model.name")
    return [str(c) for c in param.choices] if param is not None and param.choices is not None else [cfg.model.name]


def takes(model: str, arg: str) -> bool:
    """Whether a model takes model.factory_args.<arg> (a factory of the user's: assumed so)."""
    if ":" in model:
        return True
    return arg in MODEL_ARGS.get(model, ())


def _feed_error(model: str, data: str) -> str | None:
    """Why `data` cannot feed `model` (None: it can, or that cannot be told before the data loads)."""
    if ":" in model or ":" in data:
        return None
    if data == "text" and model != "gpt":
        return f"data.name = 'text' feeds token windows to 'gpt' only; {model!r} is an image model"
    if data != "text" and model == "gpt":
        return f"'gpt' trains on token windows (data.name = 'text'), not on data.name = {data!r} images"
    return None


def check_models(cfg: BaseModel) -> None:
    """Refuse a model the data cannot feed, and a factory argument no model of the sweep takes."""
    space, models = cfg.sweep.space, model_choices(cfg)
    where = "sweep.space.'model.name'" if "model.name" in space else "model.name"
    for model in models:
        error = _feed_error(model, cfg.data.name)
        if error:
            raise ValueError(f"{where}: {model!r} cannot be trained on this data: {error}")
    metrics = [m for m, _ in cfg.sweep.resolved_objectives]
    if "val_perplexity" in metrics and cfg.data.name != "text" and ":" not in cfg.data.name:
        field = f"sweep.objectives.{metrics.index('val_perplexity')}.metric" if cfg.sweep.objectives else "sweep.metric"
        raise ValueError(f"{field} = 'val_perplexity' with data.name = {cfg.data.name!r}: perplexity is a language "
                         "model's (data.name = 'text'); use val_accuracy or val_loss")
    for key in space:
        parts = key.split(".")
        if parts[:2] != ["model", "factory_args"] or len(parts) != 3:
            continue
        if not any(takes(m, parts[2]) for m in models):
            known = "; ".join(f"{m} takes {', '.join(MODEL_ARGS[m])}" for m in models if m in MODEL_ARGS)
            raise ValueError(f"sweep.space.{key!r}: no model of the sweep ({', '.join(models)}) takes "
                             f"{parts[2]!r} ({known})")
