"""Clusters the engine runs on: Slurm (submit, requeue, the job's facts)."""
