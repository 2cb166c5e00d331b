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


class SweepConfig(Section):
    """Optuna sweeps: `cockpit-engine sweep CONFIG` runs trials over [sweep.space], each a run."""

    enabled: bool = Field(False, description="Marks the config as a sweep (`cockpit-engine sweep` needs it)")
    trials: Int = Field(12, ge=1, description="Trials in the study (a restarted worker continues up to this)")
    metric: Literal["val_accuracy", "val_loss"] = Field(
        "val_accuracy", description="What the study optimizes: each epoch's validation accuracy or loss; a "
        "finished trial's value is its last evaluation's")
    direction: Optional[Literal["maximize", "minimize"]] = Field(
        None, description="Default: maximize for val_accuracy, minimize for val_loss")
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna's sampler, seeded from train.seed")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="Stops unpromising trials after an evaluation (state 'pruned')")
    warmup_epochs: Int = Field(1, ge=0, description="The median pruner never prunes before this many epochs")
    startup_trials: Int = Field(2, ge=0, description="The median pruner prunes only once this many trials completed")
    space: dict[str, SpaceParam] = Field(
        default_factory=dict, description="The search space: keys are dotted config field names "
        "('optim.lr', 'model.factory_args.width'), values { low, high, log, step } or { choices = [...] }")

    @property
    def resolved_direction(self) -> str:
        return self.direction or ("maximize" if self.metric == "val_accuracy" else "minimize")


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
