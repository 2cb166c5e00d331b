"""Models: a small CNN for tiny images, an MLP, any torchvision classifier by name, or a factory."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.config.importing import import_factory
from engine.config.schema import Config
from engine.data.sources import DataSpec, as_tensor
from contracts.errors import BadInput
from contracts.layout import RunLayout


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head; works from 8x8 digits to 32x32 CIFAR.

    `norm` is "batch" (the default), "group" (independent of the batch, so data-parallel
    training matches one process at the same global batch without SyncBatchNorm) or "none".
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32,
                 norm: str = "batch", dropout: float = 0.1):
        super().__init__()
        if norm not in ("batch", "group", "none"):
            raise BadInput(f"model.factory_args.norm = {norm!r}: expected 'batch', 'group' or 'none'")
        if not 0 <= dropout < 1:
            raise BadInput(f"model.factory_args.dropout = {dropout!r}: expected a number in [0, 1)")

        def block(cin: int, cout: int) -> nn.Sequential:
            layer = {"batch": lambda: nn.BatchNorm2d(cout), "group": lambda: nn.GroupNorm(min(8, cout), cout),
                     "none": nn.Identity}[norm]
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"),
                                 layer(), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(in_channels, width), block(width, width), nn.MaxPool2d(2),
            block(width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """Flatten, then Linear layers with ReLU: the Linear-heavy model dynamic int8 and Linear QAT
    are for. `hidden` lists the hidden widths; or `width` and `depth` say "depth layers of width"
    (a sweep's two numbers for what a list would be)."""

    def __init__(self, num_classes: int = 10, in_features: int = 64, hidden: list[int] | None = None,
                 dropout: float = 0.0, width: int | None = None, depth: int | None = None):
        super().__init__()
        if hidden is not None and (width is not None or depth is not None):
            raise BadInput(f"model.factory_args: hidden = {hidden!r} with width or depth: give hidden, or "
                           "width and depth")
        if width is not None or depth is not None:
            if not isinstance(depth if depth is not None else 2, int) or (depth is not None and depth < 1):
                raise BadInput(f"model.factory_args.depth = {depth!r}: expected an integer, 1 or more")
            hidden = [256 if width is None else width] * (2 if depth is None else depth)
        hidden = [256, 256] if hidden is None else list(hidden)
        if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
            raise BadInput(f"model.factory_args.hidden = {hidden!r}: expected a list of widths, each 1 or more")
        if not 0 <= dropout < 1:
            raise BadInput(f"model.factory_args.dropout = {dropout!r}: expected a number in [0, 1)")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _adapt_input(model: nn.Module, in_channels: int) -> None:
    """Swap the first convolution for one taking `in_channels` inputs."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(parent, name, nn.Conv2d(
                        in_channels, child.out_channels, child.kernel_size, child.stride,
                        child.padding, child.dilation, child.groups, child.bias is not None))
                return


def _torchvision(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    names = _torchvision_names()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names + ["small_cnn", "mlp"], n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise BadInput(
            f"model.name = {name!r}: not 'small_cnn', 'mlp', a torchvision classification model, or "
            f"'package.module:factory'{hint}"
        )
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    _adapt_input(model, in_channels)
    return model


def build_model(cfg: Config, spec: DataSpec) -> nn.Module:
    """The configured model, with classes and input channels adapted to the data."""
    num_classes = cfg.model.num_classes or spec.num_classes
    in_channels = cfg.model.in_channels or spec.in_channels
    name = cfg.model.name
    if (spec.kind == "tokens") != (name == "gpt") and ":" not in name:
        raise BadInput(f"model.name = {name!r} with data.name = {cfg.data.name!r}: 'gpt' trains on token windows "
                       "(data.name = 'text'); the image models train on images")
    if name == "gpt":
        from engine.model.gpt import build_gpt

        model: nn.Module = build_gpt(num_classes, cfg.model.factory_args)
    elif name == "small_cnn":
        try:
            model = SmallCNN(num_classes, in_channels, **cfg.model.factory_args)
        except TypeError as exc:
            raise BadInput(f"model.factory_args = {cfg.model.factory_args!r}: small_cnn takes width, norm "
                           f"and dropout ({exc})") from None
    elif name == "mlp":
        features = as_tensor(spec.train[0][0]).numel()
        try:
            model = MLP(num_classes, features, **cfg.model.factory_args)
        except TypeError as exc:
            raise BadInput(f"model.factory_args = {cfg.model.factory_args!r}: mlp takes hidden (or width and depth) and dropout "
                           f"({exc})") from None
    elif ":" in name:
        fn = import_factory(name, "model.name")
        model = fn(num_classes=num_classes, in_channels=in_channels, **cfg.model.factory_args)
        if not isinstance(model, nn.Module):
            raise BadInput(f"model.name = {name!r}: factory returned {type(model).__name__}, not an nn.Module")
    else:
        model = _torchvision(name, num_classes, in_channels)
    if cfg.model.weights_path:
        load_weights(model, cfg.model.weights_path)
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load a local state_dict, a checkpoint of ours, or a run of ours (its best checkpoint, else
    its latest); weights only: no code runs while unpickling."""
    p = Path(path)
    if p.is_dir() and RunLayout(p).config.is_file():
        from engine.checkpoint.store import best_or_latest

        found = best_or_latest(RunLayout(p).checkpoints)
        if found is None or found.is_dir():
            raise BadInput(f"model.weights_path = {path!r}: the run has no single-file checkpoint to start from")
        p = found
    if not p.is_file():
        raise BadInput(f"model.weights_path = {path!r}: file not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any failure here is the user's file
        raise BadInput(f"model.weights_path = {path!r}: cannot load weights: {exc}") from None
