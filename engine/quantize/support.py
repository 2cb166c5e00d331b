"""Whether quantization can run here: torchao installed, and new enough for this torch.

Quantization is an optional extra (`pip install 'training-cockpit[quantize]'`): the engine
itself runs on torch 2.4, torchao's maintained quantization needs a recent torch. Every
entry point calls `require_torchao` first, so a missing or mismatched install is one clear
message and exit 2, before anything is built or written.
"""

from __future__ import annotations

from importlib import metadata

from contracts.errors import BadInput

MIN_TORCHAO = (0, 17)
# torchao release -> the oldest torch it supports (torchao's compatibility table)
TORCH_FOR_TORCHAO = {(0, 17): (2, 10), (0, 18): (2, 11)}
INSTALL = "pip install 'training-cockpit[quantize]'"


def _version(text: str) -> tuple[int, int]:
    parts = []
    for piece in text.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def torch_needed(torchao_version: tuple[int, int]) -> tuple[int, int]:
    """The oldest torch a torchao release runs on (newer releases: the newest entry we know)."""
    known = [v for v in TORCH_FOR_TORCHAO if v <= torchao_version]
    return TORCH_FOR_TORCHAO[max(known)] if known else TORCH_FOR_TORCHAO[min(TORCH_FOR_TORCHAO)]


def check_versions(torch_version: str, torchao_version: str | None, what: str) -> None:
    """Refuse, naming `what` asked for it, when torchao is missing or does not fit torch."""
    if torchao_version is None:
        raise BadInput(f"{what}: needs torchao, which is not installed; {INSTALL}")
    ao, pt = _version(torchao_version), _version(torch_version)
    if ao < MIN_TORCHAO:
        raise BadInput(f"{what}: torchao {torchao_version} is too old (need {MIN_TORCHAO[0]}.{MIN_TORCHAO[1]} "
                       f"or later); {INSTALL}")
    need = torch_needed(ao)
    if pt < need:
        raise BadInput(f"{what}: torchao {torchao_version} needs torch {need[0]}.{need[1]} or later, this is "
                       f"torch {torch_version}; upgrade torch, or install torchao 0.17 for torch 2.10")


def require_torchao(what: str) -> None:
    """Check the installed torch and torchao before anything quantization-related is imported."""
    import torch

    try:
        ao = metadata.version("torchao")
    except metadata.PackageNotFoundError:
        ao = None
    check_versions(torch.__version__, ao, what)
