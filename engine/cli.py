"""`cockpit-engine`: train headless, resume, send commands, print the example config."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources

from engine import config as config_mod
from engine.errors import BadInput
from engine.protocol import COMMANDS, EXIT_BAD_INPUT

EPILOG = """exit codes: 0 finished, 1 failed, 2 bad input (config, arguments, data paths),
3 stopped with a resumable checkpoint (SIGTERM, Ctrl+C or the stop command).

examples:
  cockpit-engine example-config > run.toml
  cockpit-engine run run.toml --set train.epochs=5 --set optim.lr=0.01
  cockpit-engine resume runs/20261123-221500-small_cnn-3f9a
  cockpit-engine send runs/20261123-221500-small_cnn-3f9a checkpoint
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cockpit-engine", description="Train PyTorch models headless, with exact checkpoint and resume.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub_kw = {"epilog": EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}
    p = sub.add_parser("run", help="start a new run from a TOML config", **sub_kw)
    p.add_argument("config", help="path of the TOML config file")
    p.add_argument("--run-id", help="name of the run directory (default: time-name-random)")
    _common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="train the built-in demo (bundled digits, no download)", **sub_kw)
    p.add_argument("--run-id", help="name of the run directory")
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("resume", help="continue a run from its newest valid checkpoint", **sub_kw)
    p.add_argument("run", help="run directory, or run id under the runs directory")
    _common(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("send", help="send a control command to a running engine")
    p.add_argument("run", help="run directory, or run id under the runs directory")
    p.add_argument("cmd", choices=COMMANDS, help="the command")
    p.add_argument("--lr", type=float, help="learning rate, for the set command")
    p.add_argument("--runs-dir", help="root of run directories")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("example-config", help="print a complete, commented example config")
    p.add_argument("--markdown", action="store_true", help="print the field reference as a Markdown table")
    p.set_defaults(func=cmd_example)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config, args.set)
    return _start(cfg, args, [args.config])


def cmd_demo(args: argparse.Namespace) -> int:
    raw = config_mod.tomllib.loads(resources.files("engine").joinpath("demo.toml").read_text())
    cfg = config_mod.validate(config_mod.apply_overrides(raw, args.set), "demo config")
    return _start(cfg, args, [])


def _start(cfg: config_mod.Config, args: argparse.Namespace, positional: list[str]) -> int:
    from engine.rundir import new_run_id, runs_root

    root = runs_root(args.runs_dir, cfg.logging.runs_dir)
    if args.detach:
        run_id = args.run_id or new_run_id(cfg.logging.run_name or cfg.model.name.split(":")[-1])
        if (root / run_id).exists():
            raise BadInput(f"--run-id {run_id!r}: {root / run_id} already exists; pick another id")
        argv = [args.command, *positional, "--run-id", run_id, "--runs-dir", str(root)]
        return _spawn(argv + [f"--set={s}" for s in args.set], root / run_id)
    from engine import session  # torch is imported only once the config is valid

    return session.start(cfg, root, args.run_id, args.json, detached=args.detached_child)


def _spawn(argv: list[str], run_dir) -> int:
    from engine import detach

    return detach.spawn(argv, run_dir)


def cmd_resume(args: argparse.Namespace) -> int:
    from engine.rundir import find_run, runs_root

    run = find_run(args.run, runs_root(args.runs_dir, None))
    config_mod.load(run / "config.toml", args.set)  # refuse bad overrides before torch loads
    if args.detach:
        return _spawn(["resume", str(run), *[f"--set={s}" for s in args.set]], run)
    from engine import session

    return session.resume(run, args.set, args.json, detached=args.detached_child)


def cmd_send(args: argparse.Namespace) -> int:
    from engine.protocol import send_command
    from engine.rundir import find_run, runs_root

    run = find_run(args.run, runs_root(args.runs_dir, None))
    try:
        status = json.loads((run / "status.json").read_text())
        socket_path = status["socket"]
    except (OSError, ValueError, KeyError):
        raise BadInput(f"run {str(run)!r}: no status.json naming a control socket; is it running?") from None
    extra = {"lr": args.lr} if args.cmd == "set" else {}
    try:
        reply = send_command(socket_path, args.cmd, **extra)
    except (FileNotFoundError, ConnectionRefusedError):
        raise BadInput(f"run {str(run)!r}: no engine is listening (state {status.get('state')!r})") from None
    print(json.dumps(reply))
    return 0 if reply.get("ok") else 1


def cmd_example(args: argparse.Namespace) -> int:
    from engine import schema_doc

    print(schema_doc.markdown_reference() if args.markdown else schema_doc.example_toml())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BadInput as exc:
        print(f"cockpit-engine: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def entry() -> None:
    """Console-script entry point."""
    try:
        sys.exit(main())
    except BrokenPipeError:  # `cockpit-engine example-config | head` is fine
        sys.stderr.close()
        sys.exit(0)


if __name__ == "__main__":
    entry()
