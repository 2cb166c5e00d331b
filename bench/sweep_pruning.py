"""How many good trials the median pruner throws away on a short sweep (#23 part 4).

One real sweep first: the demo sweep (engine/demo_sweep.toml: the small CNN on the bundled
digits, optim.lr and the width swept, a few epochs) with no pruner and the random sampler, so
that every trial runs to its end and the trials are independent draws of the space:

    python -m engine.cli sweep engine/demo_sweep.toml --set sweep.pruner="none" \
        --set sweep.sampler="random" --trials N --runs-dir TMP

Each trial's learning curve (its validation accuracy after each epoch, as the worker reported
it to Optuna) is read back from the study. Then each candidate pruner setting is replayed with
Optuna's own MedianPruner over many short sweeps drawn from those curves (--budget trials each,
in a random order, --parallel at a time: a trial sees as complete only the trials that ended
before it started), and counted:

  good pruned   the good trials (final accuracy in the top half of all the recorded trials)
                that the pruner stopped, over the good trials in those sweeps
  best lost     the sweeps whose best trial was pruned (the sweep reports a worse best)
  epochs saved  the epochs not run, over the epochs of the same sweeps without a pruner

    python bench/sweep_pruning.py --trials 10 --budget 6            # the sweep, then the replay
    python bench/sweep_pruning.py --curves /tmp/curves.json         # the replay of saved curves

The replay does not model the sampler's reaction to pruned trials (TPE reads them too); with
--budget at the demo's 6 trials TPE samples at random for all of them anyway (its first 10).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: (label, startup_trials, warmup_epochs (None: half the epochs), n_min_trials)
CANDIDATES = [
    ("startup 2, warmup 1 (the old defaults)", 2, 1, 1),
    ("startup 5, warmup 1 (Optuna's startup)", 5, 1, 1),
    ("startup 2, warmup half the epochs", 2, None, 1),
    ("startup 3, warmup half the epochs", 3, None, 1),
    ("startup 5, warmup half the epochs", 5, None, 1),
    ("startup 2, warmup half, n_min_trials 3", 2, None, 3),
]


def record(trials: int, parallel: int, sets: list[str]) -> dict:
    """Run the demo sweep without pruning; return {"epochs": E, "curves": [[acc per epoch], ...]}."""
    import optuna

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "engine.cli", "sweep", str(REPO / "engine" / "demo_sweep.toml"),
               "--trials", str(trials), "--parallel", str(parallel), "--runs-dir", tmp, "--study", "bench",
               "--set", 'sweep.pruner="none"', "--set", 'sweep.sampler="random"', *[f"--set={s}" for s in sets]]
        print("$", " ".join(cmd), flush=True)
        t0 = time.monotonic()
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name="bench", storage=f"sqlite:///{tmp}/sweeps.db")
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        curves = [[t.intermediate_values[e] for e in sorted(t.intermediate_values)] for t in done]
        params = [t.params for t in done]
    epochs = max(len(c) for c in curves)
    print(f"recorded {len(curves)} trials of {epochs} epochs in {wall:.0f} s", flush=True)
    return {"epochs": epochs, "curves": curves, "params": params, "wall_s": round(wall, 1)}


def replay(curves: list[list[float]], order: list[int], pruner, parallel: int) -> list[int]:
    """Epochs each trial of `order` ran under `pruner` (fewer than its curve: pruned)."""
    import optuna

    study = optuna.create_study(direction="maximize", pruner=pruner)
    running: list[tuple[object, list[float], int]] = []  # (trial, curve, epochs run), not yet told
    ran: list[int] = []

    def tell_oldest() -> None:
        trial, curve, n = running.pop(0)
        if n < len(curve):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, curve[-1])

    for i in order:
        while len(running) >= parallel:  # a slot frees: the oldest running trial ends first
            tell_oldest()
        trial, curve = study.ask(), curves[i]
        n = len(curve)
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
            if epoch < len(curve) and trial.should_prune():  # the worker never prunes at the last epoch
                n = epoch
                break
        running.append((trial, curve, n))
        ran.append(n)
    while running:
        tell_oldest()
    return ran


def score(data: dict, budget: int, parallel: int, sweeps: int, seed: int) -> list[dict]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    curves, epochs = data["curves"], data["epochs"]
    finals = [c[-1] for c in curves]
    cut = statistics.median(finals)
    good = {i for i, f in enumerate(finals) if f >= cut}
    rng = random.Random(seed)
    orders = [rng.sample(range(len(curves)), min(budget, len(curves))) for _ in range(sweeps)]
    rows = []
    for label, startup, warmup, n_min in CANDIDATES:
        warm = epochs // 2 if warmup is None else warmup
        good_seen = good_pruned = best_lost = run_epochs = full_epochs = pruned = 0
        for order in orders:
            pruner = optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warm, n_min_trials=n_min)
            ran = replay(curves, order, pruner, parallel)
            best = max(order, key=lambda i: finals[i])
            for i, n in zip(order, ran):
                stopped = n < len(curves[i])
                pruned += stopped
                good_seen += i in good
                good_pruned += stopped and i in good
                best_lost += stopped and i == best
                run_epochs += n
                full_epochs += len(curves[i])
        rows.append({"candidate": label, "startup_trials": startup, "warmup_epochs": warm, "n_min_trials": n_min,
                     "pruned_per_sweep": pruned / sweeps, "good_pruned": good_pruned / good_seen,
                     "best_lost": best_lost / sweeps, "epochs_saved": 1 - run_epochs / full_epochs})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10, help="trials of the recorded sweep (default 10)")
    p.add_argument("--record-parallel", type=int, default=1, help="trials at once while recording (default 1)")
    p.add_argument("--set", action="append", default=[], help="override a demo sweep field while recording")
    p.add_argument("--curves", type=Path, help="replay these saved curves instead of recording")
    p.add_argument("--save", type=Path, help="write the recorded curves here (JSON)")
    p.add_argument("--budget", type=int, default=6, help="trials in each replayed sweep (default 6)")
    p.add_argument("--parallel", type=int, nargs="+", default=[1, 2], help="trials at once in the replay")
    p.add_argument("--sweeps", type=int, default=300, help="replayed sweeps per candidate (default 300)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = json.loads(args.curves.read_text()) if args.curves else record(args.trials, args.record_parallel,
                                                                         args.set)
    if args.save:
        args.save.write_text(json.dumps(data, indent=1) + "\n")
    finals = sorted(c[-1] for c in data["curves"])
    print(f"final val_accuracy of the {len(finals)} trials: " + ", ".join(f"{f:.3f}" for f in finals))
    print("epoch-1 val_accuracy: " + ", ".join(f"{c[0]:.3f}" for c in data["curves"]))
    for parallel in args.parallel:
        print(f"\n{args.sweeps} sweeps of {args.budget} trials from the {len(finals)} curves, {parallel} at a time "
              f"({data['epochs']} epochs each; good: final >= {statistics.median(finals):.3f}, the median):")
        print("| candidate | pruned per sweep | good trials pruned | sweeps whose best was pruned | epochs saved |")
        print("|---|---|---|---|---|")
        for r in score(data, args.budget, parallel, args.sweeps, args.seed):
            print(f"| {r['candidate']} | {r['pruned_per_sweep']:.2f} | {r['good_pruned']:.0%} | "
                  f"{r['best_lost']:.0%} | {r['epochs_saved']:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
