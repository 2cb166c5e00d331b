"""`cockpit-engine`: train headless, resume, send commands, print the example config."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources

from engine.telemetry import startup  # first: its import time ends the interpreter's start-up
from engine.config import loading as config_mod
from engine.config.schema import Config
from contracts.errors import BadInput
from contracts.control import COMMANDS
from contracts.events import EXIT_BAD_INPUT
from contracts.layout import RunLayout

EPILOG = """exit codes: 0 finished, 1 failed, 2 bad input (config, arguments, data paths),
3 stopped with a resumable checkpoint (SIGTERM, Ctrl+C or the stop command).

examples:
  cockpit-engine example-config > run.toml
  cockpit-engine run run.toml --set train.epochs=5 --set optim.lr=0.01
  cockpit-engine resume runs/20261123-221500-small_cnn-3f9a
  cockpit-engine send runs/20261123-221500-small_cnn-3f9a checkpoint
  cockpit-engine quantize runs/20261123-221500-small_cnn-3f9a --mode static
  cockpit-engine compress runs/20261123-221500-small_cnn-3f9a --preset half-width
  cockpit-engine run run.toml --gpus 4             (DDP on 4 GPUs, torchrun underneath)
  torchrun --nproc-per-node 8 -m engine.cli run run.toml --run-id big   (launch it yourself)
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config field (repeatable), e.g. --set train.epochs=5")
    p.add_argument("--runs-dir", help="root of run directories (default: $COCKPIT_RUNS or ./runs)")
    p.add_argument("--json", action="store_true", help="print events as JSON lines on stdout")
    p.add_argument("--detach", action="store_true",
                   help="train in the background as its own session (survives logout and SSH drops); "
                        "output goes to the run's engine.log")
    p.add_argument("--detached-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of failures the engine explains in a paragraph (a full disk)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nproc", type=int, metavar="N",
                   help="train data-parallel as N processes on this machine, torchrun underneath "
                        "(same as --set distributed.nproc=N; gloo on the CPU, nccl on GPUs)")
    g.add_argument("--gpus", type=int, metavar="N",
                   help="train on N local GPUs, one process each (--nproc N with train.device = 'cuda')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cockpit-engine", description="Train PyTorch models headless, with exact checkpoint and resume.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_training(sub)  # run, demo, resume
    _add_send(sub)
    _add_slurm(sub)
    _add_quantize(sub)
    _add_plugged_in(sub)  # cost, cloud, sweep: each command module adds its own
    p = sub.add_parser("example-config", help="print a complete, commented example config")
    p.add_argument("--markdown", action="store_true", help="print the field reference as a Markdown table")
    p.set_defaults(func=cmd_example)
    return parser


def _add_training(sub: argparse._SubParsersAction) -> None:
    """The commands that train here: run, demo, resume."""
    sub_kw = {"epilog": EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}
    p = sub.add_parser("run", help="start a new run from a TOML config", **sub_kw)
    p.add_argument("config", help="path of the TOML config file")
    p.add_argument("--run-id", help="name of the run directory (default: time-name-random)")
    _common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="train the built-in demo (bundled digits, no download)", **sub_kw)
    p.add_argument("--run-id", help="name of the run directory")
    p.add_argument("--gpt", action="store_true",
                   help="the language-model demo instead: a byte-level transformer on the Python standard "
                        "library's own source (no download)")
    p.add_argument("--sweep", action="store_true",
                   help="the demo sweep instead: an Optuna study of 6 short trials over the digits demo's "
                        "learning rate and width (engine/demo_sweep.toml; --run-id names the study)")
    p.add_argument("--storage", metavar="URL", help="with --sweep: the Optuna storage (default: "
                   "sqlite:///<runs-dir>/sweeps.db)")
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("resume", help="continue a run from its newest valid checkpoint", **sub_kw)
    p.add_argument("run", help="run directory, or run id under the runs directory")
    p.add_argument("--or-start", action="store_true",
                   help="a run directory with a config but no checkpoint yet starts from step 0 (what a Slurm "
                        "job written by `slurm submit` runs at each start)")
    p.add_argument("--s3", metavar="s3://BUCKET/PREFIX",
                   help="the run is mirrored to PREFIX/RUN-ID in S3 (checkpoint.s3_uri): pull it when "
                        "the local directory is missing or older, as on a new instance")
    p.add_argument("--wait-lease", type=float, default=0.0, metavar="SECONDS",
                   help="with a mirrored run another engine still owns: wait up to SECONDS for its lease "
                        "to be released or to expire (a relaunched spot instance; default: refuse at once)")
    _common(p)
    p.set_defaults(func=cmd_resume)


def _add_send(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="send a control command to a running engine")
    p.add_argument("run", help="run directory, or run id under the runs directory")
    p.add_argument("cmd", choices=COMMANDS, help="the command")
    p.add_argument("--lr", type=float, help="learning rate, for the set command")
    p.add_argument("--metric", help="target: val_accuracy, val_loss or val_perplexity (default: the current one)")
    p.add_argument("--value", type=float, help="target: the value to reach")
    p.add_argument("--stop", action=argparse.BooleanOptionalAction, default=None,
                   help="target: finish the run when it is reached (default: as before)")
    p.add_argument("--clear", action="store_true", help="target: remove the run's target")
    p.add_argument("--runs-dir", help="root of run directories")
    p.add_argument("--via", choices=["auto", "socket", "file"], default="auto",
                   help="the control socket (this host) or RUN/commands/ (an engine on another host, e.g. a "
                        "Slurm node); auto: the socket where the engine runs on this host, else the folder "
                        "(COCKPIT_COMMANDS_VIA=file forces the folder)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds to wait for the reply")
    p.set_defaults(func=cmd_send)


SLURM_EPILOG = """\
The job runs one srun task per node, each a torchrun agent (a c10d rendezvous on the job's first
node); every start of the job resumes the run from its newest checkpoint. USR1 comes
slurm.signal_lead_s (120) seconds before the time limit: the engine checkpoints, requeues the job
(scontrol requeue) and exits; the requeued job resumes exactly. The run directory (config.toml,
slurm/job.sh, slurm/job.json, slurm/job-<id>.out) must be on a file system the nodes share.

examples:
  cockpit-engine slurm submit run.toml --nodes 4 --gpus-per-node 8 --time 12:00:00 --partition gpu
  cockpit-engine slurm submit run.toml --time 30 --dry-run          (print the script, submit nothing)
  cockpit-engine send RUN pause                    (from the login node: through RUN/commands/)
"""


def _add_slurm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slurm", help="run on a Slurm cluster: submit a run as a batch job")
    slurm = p.add_subparsers(dest="slurm_command", required=True, metavar="COMMAND")
    s = slurm.add_parser("submit", help="write the run's sbatch script into its run directory and submit it",
                         epilog=SLURM_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("config", help="path of the TOML config file")
    s.add_argument("--run-id", help="name of the run directory (default: time-name-random)")
    s.add_argument("--runs-dir", help="root of run directories, on a shared file system (default: $COCKPIT_RUNS "
                                      "or ./runs)")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config field (repeatable)")
    s.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes (default 1)")
    s.add_argument("--gpus-per-node", type=int, default=0, metavar="G",
                   help="GPUs per node, one rank each (default 0: distributed.nproc ranks per node on the CPU)")
    s.add_argument("--time", default="1:00:00", metavar="T",
                   help="time limit, in Slurm's format (minutes, HH:MM:SS, D-HH:MM; default 1:00:00)")
    s.add_argument("--partition", metavar="P", help="partition (default: the cluster's default)")
    s.add_argument("--account", metavar="A", help="account to charge")
    s.add_argument("--qos", metavar="Q", help="quality of service")
    s.add_argument("--constraint", metavar="C", help="node features (sbatch --constraint)")
    s.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="one more sbatch option for the script, e.g. --sbatch-arg=--mem=200G (repeatable)")
    s.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    s.set_defaults(func=cmd_slurm_submit)


def cmd_slurm_submit(args: argparse.Namespace) -> int:
    from contracts.layout import new_run_id, runs_root
    from engine.cluster import slurm

    cfg = config_mod.load(args.config, args.set)
    if args.gpus_per_node and cfg.train.device == "cpu":
        raise BadInput(f"--gpus-per-node {args.gpus_per_node} with train.device = 'cpu': set train.device to "
                       "'auto' or 'cuda', or leave --gpus-per-node out")
    if args.gpus_per_node:
        cfg.distributed.nproc = args.gpus_per_node
    spec = slurm.JobSpec(args.nodes, args.gpus_per_node, args.time, args.partition, args.account, args.qos,
                         args.constraint, args.sbatch_arg)
    root = runs_root(args.runs_dir, cfg.logging.runs_dir)
    run_id = args.run_id or new_run_id(cfg.logging.run_name or cfg.model.name)
    return slurm.submit(cfg, config_mod.to_toml(cfg), root, run_id, spec, args.dry_run)


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize", help="an int8 model of a finished run, measured against the float one",
        description="Quantize a run's best checkpoint (else its latest) to int8 and write "
        "RUN/quantized/<mode>-int8.pt2 (a torch.export program), float.pt2 and a report "
        "(quantize.json, quantize.txt): file size, CPU latency (eager and compiled), validation "
        "accuracy and the layers covered. Needs the quantize extra: pip install 'training-cockpit[quantize]'.",
        epilog=QUANTIZE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory, or run id under the runs directory")
    p.add_argument("--mode", required=True, choices=["static", "dynamic", "qat-convert"],
                   help="static: PT2E int8, calibrated (conv nets); dynamic: int8 Linear layers, "
                        "activations quantized at run time (MLPs, transformers); qat-convert: a run "
                        "trained with quantize.qat = true")
    p.add_argument("--calibration-batches", type=config_mod.positive_int, default=16, metavar="N",
                   help="training batches the static mode calibrates on (default 16)")
    p.add_argument("--repeats", type=config_mod.positive_int, default=20, metavar="N",
                   help="timed runs per latency measurement; the median is reported (default 20)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip torch.compile (quicker; static int8 is slow in eager mode, so its "
                        "latency then says little)")
    p.add_argument("--runs-dir", help="root of run directories")
    p.set_defaults(func=cmd_quantize)


def _add_plugged_in(sub: argparse._SubParsersAction) -> None:
    from engine.telemetry.cost_report import add_parser as add_cost

    add_cost(sub)  # cost RUN [--json]

    from engine.telemetry.goodput_report import add_parser as add_goodput

    add_goodput(sub)  # goodput RUN ... | --sweep STUDY [--json]

    from engine.cloud.commands import add_parser as add_cloud

    add_cloud(sub)  # cloud launch|status|stop|exists (EC2 spot instances, S3)

    from engine.sweep.command import add_parser as add_sweep

    add_sweep(sub)  # sweep CONFIG: an Optuna sweep worker, each trial a run

    from engine.compress.command import add_parser as add_compress

    add_compress(sub)  # compress RUN: students, distillation and int8 of a finished run, the frontier


QUANTIZE_EPILOG = """exit codes: 0 done, 2 bad input (no checkpoint, a mode the model does not suit,
a model torch.export cannot trace, torchao missing or too old); nothing is written then.

examples:
  cockpit-engine quantize runs/cnn --mode static --calibration-batches 32
  cockpit-engine quantize runs/mlp --mode dynamic
  cockpit-engine quantize runs/cnn-qat --mode qat-convert

load the result (images scaled to [0, 1]; any batch size):
  import torch
  model = torch.compile(torch.export.load("runs/cnn/quantized/static-int8.pt2").module())
  logits = model(images)
"""


def cmd_quantize(args: argparse.Namespace) -> int:
    from contracts.layout import find_run, runs_root

    run = find_run(args.run, runs_root(args.runs_dir, None))
    from engine.quantize.command import quantize

    report = quantize(run, args.mode, args.calibration_batches, not args.no_compile, args.repeats)
    print((RunLayout(run).quantized / "quantize.txt").read_text(), end="")
    print(f"wrote {run / 'quantized' / report[args.mode]['file']}", file=sys.stderr)
    return 0


def _launch_sets(args: argparse.Namespace) -> list[str]:
    """--nproc / --gpus as the config overrides they stand for."""
    for flag in ("nproc", "gpus"):
        n = getattr(args, flag, None)
        if n is not None and n < 1:
            raise BadInput(f"--{flag} {n}: expected a number of processes, 1 or more")
    if args.gpus is not None:
        return [f"distributed.nproc={args.gpus}", "train.device='cuda'"]
    return [f"distributed.nproc={args.nproc}"] if args.nproc is not None else []


def cmd_run(args: argparse.Namespace) -> int:
    args.set = args.set + _launch_sets(args)
    cfg = _fits_machine(config_mod.load(args.config, args.set), args.config, args.set)
    return _start(cfg, args, [args.config])


def cmd_demo(args: argparse.Namespace) -> int:
    if args.sweep:
        from engine.sweep.demo import cmd_demo_sweep

        return cmd_demo_sweep(args)
    if args.storage:
        raise BadInput(f"--storage {args.storage!r}: only a demo sweep (--sweep) has an Optuna storage")
    args.set = args.set + _launch_sets(args)
    raw = config_mod.tomllib.loads(resources.files("engine").joinpath(
        "demo_gpt.toml" if args.gpt else "demo.toml").read_text())
    if args.gpt:
        import sysconfig

        raw["data"]["root"] = sysconfig.get_paths()["stdlib"]
    cfg = config_mod.validate(config_mod.apply_overrides(raw, args.set), "demo config")
    return _start(_fits_machine(cfg, "demo config", args.set), args, [])


def _fits_machine(cfg: Config, source: str, sets: list[str]) -> Config:
    """Refuse what this machine cannot run (before any process or run directory exists); print
    the warnings for what it runs poorly, once (our torchrun launcher did; else rank 0)."""
    from engine.config import machine
    from engine.run.launch import LAUNCHER_ENV

    overridden = tuple(".".join(config_mod.parse_override(s)[0]) for s in sets)
    warnings = machine.check(cfg, source, overridden)
    if os.environ.get("RANK", "0") == "0" and LAUNCHER_ENV not in os.environ:
        for message in warnings:
            print(f"cockpit-engine: warning: {message}", file=sys.stderr, flush=True)
    return cfg


def _start(cfg: Config, args: argparse.Namespace, positional: list[str]) -> int:
    from contracts.layout import new_run_id, runs_root

    root = runs_root(args.runs_dir, cfg.logging.runs_dir)
    multi = _needs_launcher(cfg)
    if args.detach or multi:
        run_id = args.run_id or new_run_id(cfg.logging.run_name or cfg.model.name)
        if (root / run_id).exists():
            raise BadInput(f"--run-id {run_id!r}: {root / run_id} already exists; pick another id")
        argv = [args.command, *positional, "--run-id", run_id, "--runs-dir", str(root)]
        argv += [f"--set={s}" for s in args.set]
        if args.detach:
            return _spawn(argv, root / run_id)
        return _torchrun(cfg, argv, args)
    from engine.run import session  # torch is imported only once the config is valid

    startup.mark("imports")
    return session.start(cfg, root, args.run_id, args.json, detached=args.detached_child)


def _needs_launcher(cfg: Config) -> bool:
    """More than one process asked for, and torchrun has not started us yet."""
    from engine.parallel.dist import under_torchrun

    d = cfg.distributed
    split = max((d.tensor_parallel, "tensor_parallel"), (d.pipeline_stages, "pipeline_stages"))
    if split[0] > 1 and d.nproc == 1 and not under_torchrun():
        raise BadInput(f"distributed.{split[1]} = {split[0]}: needs that many processes or a multiple; set "
                       "distributed.nproc (or --nproc) or start the engine with torchrun")
    return d.nproc > 1 and not under_torchrun()


def _torchrun(cfg: Config, argv: list[str], args: argparse.Namespace) -> int:
    from engine.run import launch

    if cfg.train.device.startswith("cuda"):
        import torch  # only here: a CPU launch stays quick

        visible = torch.cuda.device_count()
        if visible < cfg.distributed.nproc:
            raise BadInput(f"distributed.nproc = {cfg.distributed.nproc} with train.device = "
                           f"{cfg.train.device!r} (--gpus): {visible} CUDA device(s) visible, one per "
                           "process is needed; use --nproc N on the CPU")
    extra = (["--json"] if args.json else []) + (["--detached-child"] if args.detached_child else [])
    return launch.run(cfg.distributed.nproc, argv + extra)


def _spawn(argv: list[str], run_dir) -> int:
    from engine.run import detach

    return detach.spawn(argv, run_dir)


def cmd_resume(args: argparse.Namespace) -> int:
    from engine.cloud.pull import locate
    from contracts.layout import runs_root

    run, s3_sets = locate(args.run, runs_root(args.runs_dir, None), args.s3, args.wait_lease)  # boto3 only if mirrored
    args.set = args.set + s3_sets
    args.set = args.set + _launch_sets(args)
    cfg = config_mod.load(RunLayout(run).config, args.set)  # refuse bad overrides before torch loads
    _fits_machine(cfg, str(RunLayout(run).config), args.set)
    argv = ["resume", str(run), *(["--or-start"] if args.or_start else []), *[f"--set={s}" for s in args.set]]
    if args.detach:
        return _spawn(argv, run)
    if _needs_launcher(cfg):
        return _torchrun(cfg, argv, args)
    from engine.run import session

    startup.mark("imports")
    return session.resume(run, args.set, args.json, detached=args.detached_child, or_start=args.or_start)


def cmd_send(args: argparse.Namespace) -> int:
    from contracts.control import send_command
    from contracts.layout import find_run, runs_root

    run = find_run(args.run, runs_root(args.runs_dir, None))
    from contracts import command_files

    extra = {"lr": args.lr} if args.cmd == "set" else {}
    if args.cmd == "target":
        extra = {"clear": True} if args.clear else {k: v for k, v in (("metric", args.metric), ("value", args.value),
                                                                       ("stop", args.stop), ("by", "cli"))
                                                     if v is not None}
    try:
        status = json.loads(RunLayout(run).status.read_text())
    except (OSError, ValueError):
        status = {}
    if command_files.via_file(status, args.via):
        ident = command_files.post(run, args.cmd, **extra)
        try:
            reply = command_files.wait_reply(run, ident, args.timeout)
        except TimeoutError as exc:
            raise BadInput(f"run {str(run)!r}: {exc}") from None
        print(json.dumps(reply))
        return 0 if reply.get("ok") else 1
    socket_path = status.get("socket")
    if not socket_path:
        raise BadInput(f"run {str(run)!r}: no status.json naming a control socket; is it running?")
    try:
        reply = send_command(socket_path, args.cmd, **extra)
    except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError):
        raise BadInput(f"run {str(run)!r}: no engine is listening (state {status.get('state')!r})") from None
    print(json.dumps(reply))
    return 0 if reply.get("ok") else 1


def cmd_example(args: argparse.Namespace) -> int:
    from engine.config import reference as schema_doc

    print(schema_doc.markdown_reference() if args.markdown else schema_doc.example_toml())
    return 0


def main(argv: list[str] | None = None) -> int:
    from engine.cloud.redact import quiet_aws_loggers

    quiet_aws_loggers()  # before any AWS client exists: capped, masked (standard library only)
    args = build_parser().parse_args(argv)
    if getattr(args, "debug", False):
        os.environ["COCKPIT_DEBUG"] = "1"  # read by the trainer; inherited by --detach and torchrun
    try:
        code = args.func(args)
    except BadInput as exc:
        print(f"cockpit-engine: {exc}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    from engine.run.launch import record_exit

    record_exit(code)  # rank 0 under `--nproc`: torchrun itself would only say "failed"
    return code


def entry() -> None:
    """Console-script entry point."""
    try:
        code = main()
    except BrokenPipeError:  # `cockpit-engine example-config | head` is fine
        sys.stderr.close()
        sys.exit(0)
    leave(code)


def leave(code: int) -> None:
    """Exit as the interpreter would (join the non-daemon threads, run the atexit handlers, flush
    the standard streams), without finalizing every module once torch is loaded: with torch and
    TorchDynamo in, that teardown is about 1 s of every run's end, spent on nothing the run still
    needs (bench/RESULTS.md). tests/warm.py's forked engines leave the same way. COCKPIT_FULL_EXIT=1
    exits the ordinary way (for a profiler that writes its report at exit)."""
    if "torch" not in sys.modules or os.environ.get("COCKPIT_FULL_EXIT", "") not in ("", "0"):
        sys.exit(code)
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined] - what the interpreter does first at exit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream: nothing left to say
            pass
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    entry()
