"""The run configuration: one TOML file validated into a typed tree (pydantic).

Every field has a description; `cockpit-engine example-config` prints them as a commented
example and the README's field reference is generated from the same schema. Validation
errors name the field path, the value given and what was expected; unknown keys get a
"did you mean". Nothing here imports torch, so a bad config is refused in a fraction of a
second and before anything is written.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

BUILTIN_DATASETS = (
    "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic",
)
DATASETS_WITH_ROOT = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder")


#: An integer field that refuses floats (1e9, 2.5) and booleans instead of truncating them.
Int = Annotated[int, Strict()]


class Section(BaseModel):
    """A config table: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _is_import_path(name: str) -> bool:
    return ":" in name and all(part.isidentifier() for part in name.replace(":", ".").split("."))


class ModelConfig(Section):
    """Which network to train."""

    name: str = Field(
        "small_cnn",
        description="'small_cnn' (a compact CNN for tiny images; factory_args width, norm, dropout), "
        "'mlp' (Linear layers; factory_args hidden = [256, 256], dropout), any torchvision "
        "classification model ('resnet18', 'mobilenet_v3_small', ...), or your own "
        "'package.module:factory' called as factory(num_classes=, in_channels=, **factory_args)",
    )
    num_classes: Optional[Int] = Field(
        None, ge=2, description="Output classes; default: taken from the dataset"
    )
    in_channels: Optional[Int] = Field(
        None, ge=1, description="Input channels; default: taken from the dataset"
    )
    weights_path: Optional[str] = Field(
        None, description="Weights to start from: a local state_dict file, a checkpoint of ours, or a "
        "run directory of ours (its best checkpoint, else its latest)"
    )
    pretrained: Optional[Union[bool, str]] = Field(
        None, description="Hub weights are never downloaded: set weights_path to a local file"
    )
    factory_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for a model factory"
    )

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.pretrained not in (None, False):
            raise ValueError(
                f"pretrained={self.pretrained!r}: weights are never downloaded from a hub; "
                "download them yourself and set model.weights_path to the local file"
            )
        return self


class AugmentConfig(Section):
    """Training-time augmentation, applied per sample with a seed derived from (seed, epoch, index)."""

    random_crop_padding: Int = Field(
        0, ge=0, description="Pad by this many pixels, then crop back at a random offset (0: off)"
    )
    horizontal_flip: bool = Field(False, description="Flip left-right with probability 0.5")
    normalize: bool = Field(True, description="Subtract mean and divide by std per channel")
    mean: Optional[list[float]] = Field(
        None, description="Per-channel mean for normalization; default: the dataset's own"
    )
    std: Optional[list[float]] = Field(
        None, description="Per-channel std for normalization; default: the dataset's own"
    )


class DataConfig(Section):
    """Where the samples come from and how they are loaded."""

    name: str = Field(
        "digits",
        description="'digits' (scikit-learn's bundled 8x8 handwritten digits, no download), "
        "'mnist', 'fashion_mnist', 'cifar10', 'cifar100' (torchvision's on-disk layout under "
        "root), 'imagefolder' (root/train/<class>/*, root/val/<class>/*), 'synthetic' "
        "(random tensors, for benchmarks), or 'package.module:factory' returning "
        "(train_dataset, val_dataset)",
    )
    root: Optional[str] = Field(None, description="Directory of an on-disk dataset")
    download: bool = Field(
        False, description="Let torchvision download a missing dataset into root (off: never)"
    )
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share held out for validation where the set has no split"
    )
    image_size: Optional[Int] = Field(
        None, ge=1, description="Resize imagefolder images to this square size"
    )
    synthetic_samples: Int = Field(2048, ge=1, description="Synthetic: training samples")
    synthetic_shape: list[Int] = Field(
        [3, 32, 32], min_length=3, max_length=3, description="Synthetic: [channels, height, width]"
    )
    synthetic_classes: Int = Field(10, ge=2, description="Synthetic: number of classes")
    factory_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for a dataset factory"
    )
    num_workers: Int = Field(0, ge=0, description="DataLoader worker processes (0: load in the trainer)")
    pin_memory: bool = Field(False, description="Page-locked host batches for faster GPU copies")
    persistent_workers: bool = Field(
        False, description="Keep workers alive between epochs (needs num_workers > 0)"
    )
    prefetch_factor: Optional[Int] = Field(
        None, ge=1, description="Batches each worker loads ahead (needs num_workers > 0)"
    )
    device_resident: bool = Field(
        False, description="Keep the whole in-memory dataset on the device in the training dtype; "
        "batches by index, crops and flips on the device (no workers)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.name not in BUILTIN_DATASETS and not _is_import_path(self.name):
            raise ValueError(
                f"name={self.name!r}: expected one of {', '.join(BUILTIN_DATASETS)} "
                f"or 'package.module:factory'{_suggest(self.name, BUILTIN_DATASETS)}"
            )
        if self.name in DATASETS_WITH_ROOT and not self.root:
            raise ValueError(f"root: data.name={self.name!r} reads from disk; set data.root")
        if self.device_resident and self.name in ("imagefolder",) or (self.device_resident and ":" in self.name):
            raise ValueError(f"device_resident=true needs an in-memory dataset (digits, mnist, fashion_mnist, "
                             f"cifar10, cifar100, synthetic), not {self.name!r}")
        if self.num_workers == 0 and self.persistent_workers:
            raise ValueError("persistent_workers=true needs num_workers > 0: raise data.num_workers")
        if self.num_workers == 0 and self.prefetch_factor is not None:
            raise ValueError("prefetch_factor needs num_workers > 0: raise data.num_workers")
        return self


class OptimConfig(Section):
    """The optimizer."""

    name: Literal["sgd", "adam", "adamw", "lamb"] = Field(
        "adamw", description="sgd, adam, adamw, or lamb (large batches; needs timm)")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (the schedule scales it)")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (decoupled for adamw)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="SGD Nesterov momentum (needs momentum > 0)")
    betas: list[float] = Field(
        [0.9, 0.999], min_length=2, max_length=2, description="Adam/AdamW/LAMB betas"
    )
    eps: float = Field(1e-8, gt=0, description="Adam/AdamW/LAMB epsilon")

    @model_validator(mode="after")
    def _check(self) -> "OptimConfig":
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov=true needs optim.name='sgd' and optim.momentum > 0")
        return self


class ScheduleConfig(Section):
    """The learning rate as a pure function of the optimizer step."""

    name: Literal["constant", "cosine", "step", "onecycle"] = Field(
        "cosine", description="constant, cosine (to min_lr_ratio), step (decay by gamma), onecycle"
    )
    warmup_steps: Int = Field(0, ge=0, description="Linear warm-up from 0 over this many steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine: final lr as a share of lr")
    step_size: Int = Field(1000, ge=1, description="Step: decay every this many steps")
    gamma: float = Field(0.1, gt=0, le=1, description="Step: decay factor")
    pct_start: float = Field(0.3, gt=0, lt=1, description="Onecycle: share of steps spent rising")
    div_factor: float = Field(25.0, ge=1, description="Onecycle: initial lr = lr / div_factor")
    final_div_factor: float = Field(1e4, ge=1, description="Onecycle: final lr = initial / this")


class TrainConfig(Section):
    """The loop itself."""

    epochs: Int = Field(10, ge=1, description="Passes over the training set")
    max_steps: Optional[Int] = Field(
        None, ge=1, description="Stop after this many optimizer steps (default: epochs decide)"
    )
    batch_size: Int = Field(64, ge=1, description="Samples per micro-batch")
    eval_batch_size: Optional[Int] = Field(None, ge=1, description="Default: batch_size")
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="fp32, fp16 (autocast + GradScaler) or bf16 (autocast, no scaler)"
    )
    device: str = Field("auto", description="'auto' (cuda if present), 'cpu', 'cuda' or 'cuda:N'")
    seed: Int = Field(0, ge=0, description="Seed for weights, shuffling and augmentation")
    deterministic: bool = Field(
        True, description="Deterministic algorithms (bit-exact resume on the CPU)"
    )
    grad_accum_steps: Int = Field(1, ge=1, description="Micro-batches per optimizer step")
    grad_clip_norm: Optional[float] = Field(
        None, gt=0, description="Clip the gradient's global norm to this (default: off)"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing")
    channels_last: bool = Field(False, description="channels_last memory format for conv nets")
    tf32: bool = Field(False, description="Allow TF32 matmuls and convolutions on GPUs that have them")
    peak_tflops: Optional[float] = Field(
        None, gt=0, description="The device's peak TFLOP/s for MFU (default: a table of common GPUs)")
    compile: bool = Field(False, description="torch.compile the model (falls back to eager on failure)")
    compile_mode: str = Field("default", description="torch.compile mode")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        ok = self.device in ("auto", "cpu", "cuda") or (
            self.device.startswith("cuda:") and self.device[5:].isdigit()
        )
        if not ok:
            raise ValueError(
                f"device={self.device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
            )
        return self


class CheckpointConfig(Section):
    """When checkpoints are written and which are kept."""

    every_steps: Optional[Int] = Field(
        None, ge=1, description="Save every this many optimizer steps (default: off)"
    )
    every_minutes: Optional[float] = Field(
        None, gt=0, description="Save when this many minutes passed since the last save"
    )
    on_epoch_end: bool = Field(True, description="Save after each epoch's validation")
    keep_last: Int = Field(3, ge=2, description="Newest checkpoints kept (at least 2)")
    async_save: bool = Field(
        True, description="Write checkpoints on a background thread; the loop only pays for a host copy")
    best_metric: Optional[Literal["val_accuracy", "val_loss"]] = Field(
        "val_accuracy", description="Also keep the best checkpoint by this metric"
    )
    disk_full_wait_s: float = Field(
        600.0, ge=0, description="A checkpoint the disk has no room for pauses training and is retried; "
        "after this many seconds without room the run stops (exit 1), the last good checkpoint intact")
    s3_uri: Optional[str] = Field(
        None, description="Mirror the run to s3://bucket/prefix/<run-id>/ (checkpoints uploaded in the "
        "background, config.toml, events.jsonl); resume pulls from it when the local copy is missing or older")
    s3_lease_s: float = Field(
        60.0, ge=5, le=3600, description="The run's lease in S3 lasts this long unless renewed (an engine "
        "that died frees the run after this)")
    s3_wait_s: float = Field(
        100.0, ge=0, description="On exit, wait at most this long for pending S3 uploads")

    @model_validator(mode="after")
    def _check_s3(self) -> "CheckpointConfig":
        if self.s3_uri is not None:
            from engine.cloud.s3 import uri_problem  # standard library only

            problem = uri_problem(self.s3_uri)
            if problem:  # a URI with user info may hold a secret: never echoed
                shown = self.s3_uri if "@" not in self.s3_uri else "s3://[redacted]@..."
                raise ValueError(f"s3_uri = {shown!r}: {problem}")
        return self


class LoggingConfig(Section):
    """Telemetry: events, TensorBoard, the console."""

    runs_dir: Optional[str] = Field(
        None, description="Root of run directories (else --runs-dir, $COCKPIT_RUNS, ./runs)"
    )
    run_name: Optional[str] = Field(None, description="Readable part of the run id")
    every_steps: Int = Field(
        10, ge=1, description="Read the loss every this many steps (a host-device sync)"
    )
    max_step_events_per_s: float = Field(
        10.0, gt=0, description="Step events are coalesced to at most this rate"
    )
    tensorboard: bool = Field(True, description="Write TensorBoard scalars to tb/")
    status_every_s: float = Field(2.0, gt=0, description="status.json refresh interval")


class CostConfig(Section):
    """What the run costs."""

    price_per_hour: Optional[float] = Field(
        None, ge=0, description="Price of this machine per hour, for cost events"
    )
    currency: str = Field("USD", description="Currency of price_per_hour")
    instance_type: Optional[str] = Field(
        None, description="Price this machine as this EC2 instance type from the shipped on-demand table "
        "when neither price_per_hour nor the instance metadata gives a price (e.g. 'g5.xlarge')")

    @model_validator(mode="after")
    def _check_instance_type(self) -> "CostConfig":
        if self.instance_type is not None:
            from engine.telemetry.price_table import load_table

            table = load_table()
            if table.get(self.instance_type) is None:
                near = difflib.get_close_matches(self.instance_type, list(table.instances), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ValueError(f"instance_type={self.instance_type!r}: not in the price table "
                                 f"({table.source}: {', '.join(sorted(table.instances))}){hint}")
        return self


class DistributedConfig(Section):
    """Data-parallel training on several processes (torchrun underneath)."""

    nproc: Int = Field(
        1, ge=1, le=1024,
        description="Processes on this machine; above 1 the engine starts torchrun (same as --nproc N)")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp (replicated model) or fsdp (FSDP2 fully_shard: sharded model, sharded checkpoints)")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Process-group backend: auto is nccl on GPUs, gloo on the CPU")
    sync_batchnorm: bool = Field(
        False, description="DDP on GPUs: batch-norm statistics over the global batch (SyncBatchNorm)")
    timeout_s: float = Field(
        300.0, gt=0, description="A collective waiting longer than this fails every rank (a dead rank never hangs the run)")


class FeatureSection(Section):
    """A section whose feature lands in a later release: accepted only while disabled."""

    enabled: bool = Field(False, description="Not available in this version")

    @model_validator(mode="after")
    def _check(self) -> "FeatureSection":
        if self.enabled:
            raise ValueError("enabled=true: this feature is not available in this version yet")
        return self


class DistillConfig(Section):
    """Knowledge distillation: the model learns from a frozen teacher's softened outputs."""

    enabled: bool = Field(False, description="Train the model as a student of `teacher`")
    teacher: Optional[str] = Field(
        None, description="A run directory of ours (its best checkpoint, else its latest), a checkpoint "
        "file of ours, a torchvision classifier by name, or 'package.module:factory'")
    teacher_weights: Optional[str] = Field(
        None, description="For a torchvision or factory teacher: a local state_dict file (never downloaded)")
    teacher_factory_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for a teacher factory")
    temperature: float = Field(3.0, gt=0, description="Softens both distributions: softmax(logits / T)")
    alpha: float = Field(
        0.5, ge=0, le=1, description="Share of the distillation term: alpha * T^2 * KL + (1 - alpha) * CE")

    @model_validator(mode="after")
    def _check(self) -> "DistillConfig":
        if self.enabled and not self.teacher:
            raise ValueError("enabled=true needs distill.teacher: a run directory, a checkpoint file, "
                             "a torchvision model name or 'package.module:factory'")
        return self


class QuantizeConfig(Section):
    """Training-time quantization (needs the `quantize` extra: torchao). Post-training
    quantization of a finished run is the `cockpit-engine quantize` command."""

    qat: bool = Field(
        False, description="Quantization-aware training: train with int8 fake quantization (PT2E for "
        "conv nets, torchao's QATConfig for Linear-only models), then `cockpit-engine quantize RUN "
        "--mode qat-convert`; fine-tune a float run by setting model.weights_path to its run directory")
    float8: bool = Field(
        False, description="float8 training of the Linear layers (torchao; H100-class GPUs, both "
        "dimensions divisible by 16)")


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


#: AWS's advice for spot interruption notices: poll every 5 s (the window is two minutes).
SPOT_POLL_MAX_S = 5.0


class SpotConfig(Section):
    """EC2 spot interruptions: the metadata service's notice stops the run with a checkpoint."""

    enabled: bool = Field(
        False, description="Watch for interruption notices even where the machine does not say it is "
        "EC2 (false: watch on EC2 only; nothing is ever sent to the metadata address elsewhere; "
        "AWS_EC2_METADATA_DISABLED=true turns it off everywhere)")
    poll_s: float = Field(
        5.0, gt=0, le=SPOT_POLL_MAX_S,
        description="Seconds between polls of the notice (AWS advises 5 s or faster: the notice comes "
        "two minutes before the instance is taken)")
    endpoint: Optional[str] = Field(
        None, description="Instance metadata endpoint; default: $AWS_EC2_METADATA_SERVICE_ENDPOINT, "
        "else http://169.254.169.254 (setting it also turns the watcher on)")

    @model_validator(mode="after")
    def _check(self) -> "SpotConfig":
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint={self.endpoint!r}: expected an http:// or https:// URL")
        return self


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
        if self.sweep.space:
            _check_space(self)
        return self


def _space_field_error(key: str) -> str | None:
    """Why a sweep.space key is not a config field (None: it is one)."""
    parts = key.split(".")
    model: Any = Config
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields or (i == 0 and part == "sweep"):
            known = [f for f in fields if not (i == 0 and f == "sweep")]
            where = ".".join(parts[:i]) or "the config"
            return f"{part!r} is not a field of {where}{_suggest(part, known)}"
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


def with_values(cfg: "Config", values: dict[str, Any]) -> dict[str, Any]:
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


def _check_space(cfg: "Config") -> None:
    from pydantic import ValidationError

    for key, param in cfg.sweep.space.items():
        error = _space_field_error(key)
        if error:
            raise ValueError(f"sweep.space.{key!r}: {error}")
        for value in param.values_to_check():
            try:
                Config.model_validate(with_values(cfg, {key: value}))
            except ValidationError as exc:
                first = exc.errors()[0]
                msg = first["msg"].removeprefix("Value error, ")
                raise ValueError(f"sweep.space.{key!r}: {key} = {value!r} is refused: {msg}") from None


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
