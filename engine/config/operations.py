"""Where and how a run executes and what it keeps: [distributed], [checkpoint], [logging], [cost], [spot]."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from engine.config.base import Int, Section, suggest
from engine.config.price_table import load_table
from engine.config.s3_uri import uri_problem

#: AWS's advice for spot interruption notices: poll every 5 s (the window is two minutes).
SPOT_POLL_MAX_S = 5.0


class DistributedConfig(Section):
    """Data- and tensor-parallel training on several processes (torchrun underneath)."""

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
    hang_warn_s: float = Field(
        60.0, gt=0, description="Several processes: when no rank has moved for this long, rank 0 names the rank "
        "the others wait for (alerts.hang); under timeout_s (default: 60, or timeout_s / 2 when that is less)")
    tensor_parallel: Int = Field(
        1, ge=1, description="Shard each transformer block's linears over this many ranks (torch's "
        "ColwiseParallel/RowwiseParallel); the processes are tensor_parallel x D, the D groups data-parallel "
        "(with strategy = 'fsdp' when D > 1)")

    pipeline_stages: Int = Field(
        1, ge=1, description="Cut the model into this many stages, one per rank (torch.distributed.pipelining); "
        "the processes are pipeline_stages x D, the D groups data-parallel (strategy = 'fsdp' when D > 1)")
    pipeline_split: list[str] = Field(
        default_factory=list, description="Module names where stages 2, 3, ... start (['blocks.2']); "
        "default: balanced by parameter count")
    microbatches: Optional[Int] = Field(
        None, ge=1, description="Pipeline: microbatches per batch (must divide train.batch_size); default: "
        "2 x pipeline_stages where that divides it, else pipeline_stages")
    pipeline_schedule: Literal["gpipe", "1f1b", "interleaved1f1b"] = Field(
        "1f1b", description="Pipeline schedule: gpipe (all forwards, then all backwards), 1f1b (one forward, one "
        "backward: less activation memory) or interleaved1f1b (1F1B over stages_per_rank stages on each rank: "
        "a smaller bubble)")
    stages_per_rank: Optional[Int] = Field(
        None, ge=1, description="Pipeline stages each rank holds (interleaved1f1b; the model is cut into "
        "pipeline_stages x stages_per_rank stages, rank r holding r, r + pipeline_stages, ...); default: 2 for "
        "interleaved1f1b, else 1")

    @model_validator(mode="after")
    def _check_layout(self) -> "DistributedConfig":
        if self.hang_warn_s >= self.timeout_s and "hang_warn_s" not in self.model_fields_set:
            self.hang_warn_s = self.timeout_s / 2  # a short timeout_s brings the warning forward
        elif self.hang_warn_s >= self.timeout_s:
            raise ValueError(f"hang_warn_s = {self.hang_warn_s:g} with timeout_s = {self.timeout_s:g}: the hang "
                             "warning must come before the collectives give up (hang_warn_s < timeout_s)")
        p, v = self.pipeline_stages, self.stages_per_rank
        interleaved = self.pipeline_schedule == "interleaved1f1b"
        if v is None:
            self.stages_per_rank = v = 2 if interleaved else 1
        if v > 1 and not interleaved:
            raise ValueError(f"stages_per_rank = {v} with pipeline_schedule = {self.pipeline_schedule!r}: more than "
                             "one stage a rank needs pipeline_schedule = 'interleaved1f1b'")
        if interleaved and p > 1 and self.nproc > p:
            raise ValueError(f"pipeline_schedule = 'interleaved1f1b' with nproc = {self.nproc} and pipeline_stages "
                             f"= {p}: an interleaved pipeline with data-parallel groups is not supported yet (use "
                             f"nproc = {p}, or 1f1b)")
        if p > 1 and self.tensor_parallel > 1:
            raise ValueError(f"pipeline_stages = {p} with tensor_parallel = {self.tensor_parallel}: one or the "
                             "other for now (a 3-D mesh is not built yet)")
        if p > 1 and self.nproc > 1 and self.nproc % p:
            raise ValueError(f"pipeline_stages = {p}: must divide nproc = {self.nproc} "
                             "(the processes are pipeline_stages x data-parallel groups)")
        if p > 1 and self.nproc > p and self.strategy == "ddp":
            raise ValueError(f"strategy = 'ddp' with pipeline_stages = {p} and nproc = {self.nproc}: the "
                             f"{self.nproc // p} data-parallel groups need strategy = 'fsdp'")
        t = self.tensor_parallel
        if t > 1 and self.nproc > 1 and self.nproc % t:
            raise ValueError(f"tensor_parallel = {t}: must divide nproc = {self.nproc} "
                             "(the processes are tensor_parallel x data-parallel groups)")
        if t > 1 and self.nproc > t and self.strategy == "ddp":
            raise ValueError(f"strategy = 'ddp' with tensor_parallel = {t} and nproc = {self.nproc}: the "
                             f"{self.nproc // t} data-parallel groups need strategy = 'fsdp' (FSDP2 over the "
                             "mesh's data-parallel dimension, as torchtitan composes them)")
        return self


class CheckpointConfig(Section):
    """When checkpoints are written and which are kept."""

    every_steps: Optional[Union[Int, Literal["auto"]]] = Field(
        None, description="Save every this many optimizer steps (default: off); 'auto': as often as it pays, "
        "sqrt(2 x the measured checkpoint stall x the mean time between interruptions) (Young-Daly)")
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
    def _check_every(self) -> "CheckpointConfig":
        if isinstance(self.every_steps, int) and self.every_steps < 1:
            raise ValueError(f"every_steps = {self.every_steps}: expected a number of steps of at least 1, or 'auto'")
        return self

    @model_validator(mode="after")
    def _check_s3(self) -> "CheckpointConfig":
        if self.s3_uri is not None:
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
    ranks: bool = Field(
        True, description="Several processes: every rank's record (step-time split, memory, its GPU) at each "
        "logging step, as ranks events (false: only the averages in step events)")
    tensorboard_ranks: bool = Field(
        False, description="Also write each rank's record as TensorBoard scalars (ranks/<field>/rank<N>)")
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
            table = load_table()
            if table.get(self.instance_type) is None:
                raise ValueError(f"instance_type={self.instance_type!r}: not in the price table "
                                 f"({table.source}: {', '.join(sorted(table.instances))})"
                                 f"{suggest(self.instance_type, table.instances)}")
        return self


class SlurmConfig(Section):
    """Slurm jobs (cockpit-engine slurm submit): the time-limit warning and the requeue."""

    signal_lead_s: Int = Field(
        120, ge=10, le=3600, description="Ask Slurm for USR1 this many seconds before the time limit (sbatch "
        "--signal=B:USR1@S): the engine checkpoints at its next step boundary, requeues the job and exits. Slurm may "
        "send it up to 60 s earlier; leave time for a checkpoint")


class SpotConfig(Section):
    """EC2 spot interruptions: the metadata service's notice stops the run with a checkpoint."""

    enabled: bool = Field(
        False, description="Watch for interruption notices even where the machine does not say it is "
        "EC2 (false: watch on EC2 only; nothing is ever sent to the metadata address elsewhere; "
        "AWS_EC2_METADATA_DISABLED=true turns it off everywhere)")
    interruptions_per_hour: Optional[float] = Field(
        None, gt=0, description="How often this capacity is interrupted, for checkpoint.every_steps = 'auto' "
        "(default: the interruption band below where known, else every 2 h on spot, every 24 h elsewhere)")
    interruption_band: Optional[Literal["<5%", "5-10%", "10-15%", "15-20%", ">20%"]] = Field(
        None, description="The capacity's frequency of interruption as AWS's Spot Instance Advisor shows it "
        "(the share reclaimed in a month), for checkpoint.every_steps = 'auto'; taken at the band's upper edge "
        "(>20%: 50%)")
    advisor_data: Optional[str] = Field(
        None, description="A downloaded copy of the Spot Instance Advisor's spot-advisor-data.json: on EC2 the "
        "band of this instance's type and region is looked up in it (nothing is fetched)")
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
        if self.advisor_data is not None:
            from engine.config.spot_advisor import load

            load(self.advisor_data)  # readable and shaped like the advisor's file, or the field is named
        return self
