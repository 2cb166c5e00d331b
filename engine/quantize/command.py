"""`cockpit-engine quantize RUN --mode static|dynamic|qat-convert`: an int8 model of a finished
run, measured against the float one.

Everything is checked and computed before anything is written: the run's checkpoint is
read (never changed), the quantized and float programs are built and measured in memory,
then `RUN/quantized/<mode>-int8.pt2`, `float.pt2`, `quantize.json` and `quantize.txt`
are written atomically. Bad input (no checkpoint, a mode the model does not suit, a model
`torch.export` cannot trace) stops before the first write, with exit 2.
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from contracts.atomic import write_atomic, write_json_atomic
from engine.checkpoint.store import best_or_latest, load
from engine.config.schema import Config
from contracts.errors import BadInput
from contracts.layout import RunLayout
from engine.quantize.support import require_torchao
from engine.train.measures import latency_ms

ARTIFACTS = {"static": "static-int8.pt2", "dynamic": "dynamic-int8.pt2", "qat-convert": "qat-int8.pt2"}
FLOAT = "float.pt2"


def _say(text: str) -> None:
    print(f"quantize: {text}", file=sys.stderr, flush=True)


def _checkpoint(run: Path) -> tuple[Path, dict[str, Any]]:
    found = best_or_latest(RunLayout(run).checkpoints)
    if found is None:
        raise BadInput(f"run {str(run)!r}: no checkpoint to quantize (train it first; a run stopped "
                       "before its first checkpoint has none)")
    if found.is_dir():
        raise BadInput(f"run {str(run)!r}: its checkpoint {found.name} is sharded (FSDP); quantization "
                       "needs a single-file checkpoint (train with one process or DDP)")
    try:
        return found, load(found)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is the user's input
        raise BadInput(f"run {str(run)!r}: cannot read checkpoint {found}: {exc}") from None


def _models(cfg: Config, spec: Any, state: dict[str, Any], mode: str, example: torch.Tensor,
            what: str) -> tuple[nn.Module, nn.Module | None]:
    """(the float model, QAT's fake-quantized one or None), both with the checkpoint's weights."""
    from engine.model.zoo import build_model
    from engine.quantize.training import prepare_qat

    cfg.model.weights_path = None
    float_model = build_model(cfg, spec)
    weights = state["model"]
    if mode != "qat-convert":
        float_model.load_state_dict(weights)
        return float_model.eval(), None
    import copy

    qat = prepare_qat(copy.deepcopy(float_model), example)
    qat.load_state_dict(weights)
    # The float baseline: the same trained weights without fake quantization.
    result = float_model.load_state_dict({k: v for k, v in weights.items() if "activation_post_process" not in k},
                                         strict=False)
    if result.missing_keys:
        raise BadInput(f"{what}: the checkpoint's weights do not fit the model ({result.missing_keys[:3]} missing)")
    return float_model.eval(), qat


def _loaders(cfg: Config, spec: Any, batches: int) -> tuple[list[torch.Tensor], Any, int]:
    """Calibration batches (training images, shuffled with a fixed seed, no augmentation) and
    the validation loader."""
    from torch.utils.data import DataLoader

    bs = cfg.train.eval_batch_size or cfg.train.batch_size
    calib = DataLoader(spec.train, batch_size=cfg.train.batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(cfg.train.seed))
    chosen = []
    for x, _ in calib:
        chosen.append(x.float())
        if len(chosen) == batches:
            break
    return chosen, DataLoader(spec.val, batch_size=bs, shuffle=False), bs


def _accuracy(fn: Callable[[torch.Tensor], torch.Tensor], val: Any) -> float:
    from engine.train.evaluate import evaluate
    from engine.train.task import Classification

    metrics = evaluate(fn, val, Classification(), torch.device("cpu"), "fp32")
    return metrics["accuracy"]


def _to_bytes(program: Any) -> bytes:
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def _measure(programs: dict[str, Any], eager: dict[str, Callable], val: Any, batch: torch.Tensor,
             repeats: int, compile_too: bool) -> dict[str, dict[str, Any]]:
    """Size, latency (eager, and compiled) and accuracy of each program; latencies of the
    models compared are timed interleaved."""
    from engine.quantize.artifact import weights_bytes

    out: dict[str, dict[str, Any]] = {}
    for name, program in programs.items():
        data = _to_bytes(program)
        out[name] = {"bytes": len(data), "weights_bytes": weights_bytes(program), "_data": data}
    for name, ms in latency_ms(eager, batch, repeats).items():
        out[name]["eager_ms"] = ms
    scorers = eager
    if compile_too:
        _say("compiling the float and int8 models (tens of seconds on a CPU)...")
        scorers = {name: torch.compile(program.module()) for name, program in programs.items()}
        for name, ms in latency_ms(scorers, batch, repeats).items():
            out[name]["compiled_ms"] = ms
    for name, fn in scorers.items():
        out[name].update(val_accuracy=_accuracy(fn, val), accuracy_measured="compiled" if compile_too else "eager")
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "torchao": _torchao_version()}


def _torchao_version() -> str:
    from importlib import metadata

    return metadata.version("torchao")


def quantize(run: Path, mode: str, calibration_batches: int = 16, compile_too: bool = True,
             repeats: int = 20) -> dict[str, Any]:
    """Quantize a run; the report written beside the artifacts."""
    what = f"quantize --mode {mode}"
    require_torchao(what)
    from engine.data.sources import build_spec
    from engine.quantize.artifact import Normalized
    from engine.quantize.methods import dynamic, float_program, qat_convert, static, weighted_layers
    from engine.quantize.training import example_input

    path, state = _checkpoint(run)
    cfg = Config.model_validate(state["config"])
    _check_mode(cfg, mode, run)
    spec = build_spec(cfg)
    example = example_input(spec)
    float_model, qat = _models(cfg, spec, state, mode, example, what)
    norm = (spec.mean, spec.std) if cfg.data.augment.normalize else (None, None)
    calib, val, bs = _loaders(cfg, spec, calibration_batches)
    batch = next(iter(val))[0].float()
    torch.manual_seed(0)

    _say(f"{mode}: {path.name} of {run.name} ({sum(p.numel() for p in float_model.parameters()):,} parameters)")
    if mode == "static":
        _say(f"calibrating on {len(calib)} batches of {cfg.train.batch_size}")
        result = static(float_model, norm, example, calib, what)
    elif mode == "dynamic":
        result = dynamic(float_model, norm, example, what)
    else:
        result = qat_convert(qat, weighted_layers(float_model), norm, example, what)
    baseline = float_program(float_model, norm, example, what)

    _say(f"measuring latency on batches of {len(batch)} ({repeats} runs each) and accuracy on "
         f"{len(spec.val)} validation images")
    measured = _measure({"float": baseline, "int8": result.program},
                        {"float": Normalized(float_model, *norm).eval(), "int8": result.program.module()},
                        val, batch, repeats, compile_too)
    f, q = measured["float"], measured["int8"]
    return _write_report(RunLayout(run).quantized, mode, f, q, {
        "run": str(run), "checkpoint": path.name, "step": state["step"], "batch": len(batch),
        "repeats": repeats, "calibration_batches": len(calib) if mode == "static" else None,
        "input": f"float images in [0, 1], shape (N, {', '.join(str(d) for d in example.shape[1:])}); "
                 "normalization is inside the model",
        "machine": machine(),
        "float": {k: v for k, v in f.items() if k != "_data"} | {"file": FLOAT},
        mode: _mode_entry(mode, f, q, result),
    })


def _check_mode(cfg: Config, mode: str, run: Path) -> None:
    """A QAT run is converted with qat-convert, and only a QAT run is."""
    if cfg.quantize.qat and mode != "qat-convert":
        raise BadInput(f"--mode {mode}: run {str(run)!r} was trained with quantization-aware training "
                       "(quantize.qat = true); convert it with --mode qat-convert")
    if mode == "qat-convert" and not cfg.quantize.qat:
        raise BadInput(f"--mode qat-convert: run {str(run)!r} was not trained with quantize.qat = true; use "
                       "--mode static (conv nets) or --mode dynamic (Linear layers), or fine-tune it with QAT first")


def _mode_entry(mode: str, f: dict[str, Any], q: dict[str, Any], result: Any) -> dict[str, Any]:
    """The int8 model's measurements, and how they compare with the float model's (f)."""
    return {k: v for k, v in q.items() if k != "_data"} | {
        "file": ARTIFACTS[mode], "layers_quantized": result.quantized, "layers_float": result.float,
        "size_ratio": q["bytes"] / f["bytes"], "weights_ratio": q["weights_bytes"] / max(1, f["weights_bytes"]),
        "accuracy_change": q["val_accuracy"] - f["val_accuracy"],
        # the float model's latencies timed beside this one (the "float" entry is the latest run's)
        **{f"float_{k}": f[k] for k in ("eager_ms", "compiled_ms") if k in f},
        **{f"speedup_{k[:-3]}": f[k] / q[k] for k in ("eager_ms", "compiled_ms") if k in f}}


def _write_report(folder: Path, mode: str, f: dict[str, Any], q: dict[str, Any],
                  report: dict[str, Any]) -> dict[str, Any]:
    """Both programs and the report (merged into the last one when it is of the same checkpoint)."""
    folder.mkdir(exist_ok=True)
    previous = _read_report(folder / "quantize.json")
    merged = previous | report if previous.get("checkpoint") == report["checkpoint"] else report
    write_atomic(folder / ARTIFACTS[mode], lambda fh: fh.write(q["_data"]))
    write_atomic(folder / FLOAT, lambda fh: fh.write(f["_data"]))
    write_json_atomic(folder / "quantize.json", merged)
    table = format_table(merged)
    write_atomic(folder / "quantize.txt", lambda fh: fh.write(table.encode()))
    return merged


def _read_report(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _kb(n: int) -> str:
    return f"{n / 1024:,.0f} KB" if n < 10 * 1024 * 1024 else f"{n / 2**20:,.1f} MB"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def format_table(report: dict[str, Any]) -> str:
    """The report as a readable table: one row per model."""
    rows = [("model", "file size", "weights", "eager", "compiled", "speed-up", "val acc", "layers int8")]
    for key in ("float", *ARTIFACTS):
        r = report.get(key)
        if not r:
            continue
        layers = "-" if key == "float" else f"{len(r['layers_quantized'])} of {len(r['layers_quantized']) + len(r['layers_float'])}"
        speedup = "-" if key == "float" else " / ".join(
            f"{r[k]:.2f}x" for k in ("speedup_eager", "speedup_compiled") if k in r)
        rows.append((key if key == "float" else f"{key} int8", _kb(r["bytes"]), _kb(r["weights_bytes"]),
                     _ms(r.get("eager_ms")), _ms(r.get("compiled_ms")), speedup, f"{100 * r['val_accuracy']:.2f}%",
                     layers))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    m = report["machine"]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append(f"latency: median of {report['repeats']} runs on batches of {report['batch']} (float and int8 "
                 f"interleaved), {m['cpu']}, "
                 f"{m['threads']} thread(s), torch {m['torch']}, torchao {m['torchao']}")
    lines.append("speed-up: the float model's time / the int8 model's, eager / compiled, timed side by side")
    for key in ARTIFACTS:
        r = report.get(key)
        if r and r["layers_float"]:
            lines.append(f"{key}: left in float: {', '.join(r['layers_float'])}")
    lines.append(f"load: torch.export.load('{report['run']}/quantized/<file>').module()  ({report['input']})")
    return "\n".join(lines) + "\n"
