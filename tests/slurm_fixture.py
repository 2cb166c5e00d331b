"""The `slurm` fixture: a real single-node Slurm cluster on loopback (tests/slurm_cluster.py).

Session-scoped, so under pytest-xdist each worker that runs a test asking for it starts its own
cluster (own folder, own ports, own munge socket) and stops it at the end; a worker whose files
never ask for it starts none. Keep every Slurm test in a file whose tests use this fixture.
Where Slurm is not installed (or not root, or a daemon will not start) the tests skip with why.

The object it yields: `.env` (os.environ plus SLURM_CONF and the sbin folders on PATH; pass it to
every Slurm client command and to anything that runs them), `.node` (the hostname), `.partition`
("debug", the default), `.run(*args)` (a client command with that env: a CompletedProcess with
text output), `.submit(*sbatch_args)` (the job id), `.squeue()` (squeue --json, parsed),
`.folder` (the cluster's own folder; `folder / "jobs"` is where `.submit` runs jobs).
"""

from __future__ import annotations

import pytest

from slurm_cluster import SlurmCluster, SlurmUnavailable


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as e:
        pytest.skip(f"no Slurm cluster: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
