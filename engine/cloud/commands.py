"""The `cockpit-engine cloud` subcommands' arguments (boto3 is imported only when one runs)."""

from __future__ import annotations

import argparse

CLOUD_EPILOG = """exit codes: 0 done, 2 bad input (arguments, config, an instance that is not ours);
`cloud exists` answers 0 (S3 has a checkpoint of the run) or 1 (it has none).

examples:
  cockpit-engine cloud launch --spot run.toml --instance-type g5.xlarge --s3 s3://my-bucket/runs \\
      --iam-profile cockpit-s3 --run-id bert-1
  cockpit-engine cloud status
  cockpit-engine cloud launch --spot run.toml --instance-type g5.xlarge --s3 s3://my-bucket/runs \\
      --iam-profile cockpit-s3 --run-id bert-1        (after an interruption: resumes from S3)
  cockpit-engine cloud stop bert-1
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`cloud launch|status|stop|exists` under the main parser."""
    fmt = {"epilog": CLOUD_EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}
    cloud = sub.add_parser("cloud", help="EC2 spot instances that train a run mirrored to S3", **fmt)
    verbs = cloud.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("launch", help="start a spot instance that trains CONFIG (or resumes it from S3)", **fmt)
    p.add_argument("--spot", required=True, metavar="CONFIG", help="the run's TOML config")
    p.add_argument("--instance-type", required=True, metavar="TYPE", help="e.g. g5.xlarge")
    p.add_argument("--s3", required=True, metavar="s3://BUCKET/PREFIX",
                   help="where the run is mirrored (checkpoint.s3_uri): PREFIX/RUN-ID/")
    p.add_argument("--region", help="default: boto3's configured region")
    p.add_argument("--ami", help="default: the AWS Deep Learning AMI with PyTorch, from SSM")
    p.add_argument("--run-id", help="the run's id; launching an id S3 has a checkpoint of resumes it")
    p.add_argument("--install", metavar="PIP_REQUIREMENT",
                   help="what the instance pip-installs (default: this project's source, uploaded to "
                        "PREFIX/RUN-ID/source/)")
    p.add_argument("--iam-profile", help="instance profile giving the instance access to the bucket")
    p.add_argument("--key-name", help="EC2 key pair, for SSH")
    p.add_argument("--subnet", help="subnet id")
    p.add_argument("--max-price", help="highest spot price per hour (default: the on-demand price)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    p.add_argument("--dry-run", action="store_true", help="print the request and the user data; start nothing")
    p.set_defaults(func=_launch)

    p = verbs.add_parser("status", help="list the instances we launched (by tag)")
    p.add_argument("--region")
    p.add_argument("--all", action="store_true", help="include terminated instances")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: _launcher().status(a.region, a.all, a.json))

    p = verbs.add_parser("stop", help="terminate instances we launched, by instance id or run id")
    p.add_argument("targets", nargs="*", metavar="ID", help="instance ids or run ids")
    p.add_argument("--all", action="store_true", help="every live instance we launched")
    p.add_argument("--region")
    p.set_defaults(func=lambda a: _launcher().stop(a.targets, a.all, a.region))

    p = verbs.add_parser("exists", help="whether S3 holds a checkpoint of RUN (exit 0) or not (exit 1)")
    p.add_argument("run", help="run id")
    p.add_argument("--s3", required=True, metavar="s3://BUCKET/PREFIX")
    p.set_defaults(func=lambda a: _launcher().exists(a.run, a.s3))


def _launcher():
    from engine.cloud import launch

    return launch


def _launch(a: argparse.Namespace) -> int:
    return _launcher().launch(a.spot, a.set, a.instance_type, a.s3, a.region, a.ami, a.run_id, a.install,
                              a.dry_run, a.iam_profile, a.key_name, a.subnet, a.max_price)
