"""VMamba-Tiny ("vanilla", v0) in pure PyTorch: a CPU-capable teacher for PDD.

PDD (Section 3.2) names its Mamba teacher "vanilla-VMamba-Tiny": the first
public VMamba release (the VSSM *v0* architecture).  This module implements it
with ordinary torch ops — the 2-D selective scan (SS2D: cross-scan in four
directions, selective scan, cross-merge; the scan itself in
:mod:`medad.backbones.selective_scan`) included — so it runs on CPU with no
``mamba_ssm`` / ``selective_scan`` CUDA kernel and no triton.

Configuration (the official ``vssm_tiny`` v0 config, ``configs/vssm/vssm_tiny_224.yaml``
of the first release, MzeroMiko/VMamba):

* patch embedding: 4×4 conv, stride 4, 3 → 96 channels, LayerNorm;
* 4 stages of 96 / 192 / 384 / 768 channels at strides 4 / 8 / 16 / 32 with
  depths [2, 2, 9, 2]; a Swin-style patch merging (2×2 gather, LayerNorm(4C),
  Linear(4C → 2C, no bias)) at the end of stages 1–3;
* each block: ``x + SS2D(LayerNorm(x))`` (no MLP, ``mlp_ratio = 0``);
* SS2D: ``ssm_ratio`` (expand) 2.0, ``d_state`` 16, ``dt_rank`` = ceil(C / 16),
  depthwise 3×3 conv with bias, SiLU, 4 scan directions (row-major, column-major
  and both reversed), ``out_norm`` LayerNorm, gate ``· SiLU(z)``, ``out_proj``;
* every LayerNorm uses eps = 1e-5 (``nn.LayerNorm``'s default, as the v0 model).

Checkpoint
----------
The official ImageNet-1K checkpoint of this model (82.2 % top-1, trained without
EMA; "VMamba-T" in the first README, "Vanilla-VMamba-T" in the later performance
tables), about 92 MB (22.89 M parameters: 22.12 M backbone + the 1000-class head):

    file:   vssmtiny_dp01_ckpt_epoch_292.pth
    source: https://github.com/MzeroMiko/VMamba/releases/download/%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth
            (the same file was first published under the release tag ``#20240218``:
            https://github.com/MzeroMiko/VMamba/releases/download/%2320240218/vssmtiny_dp01_ckpt_epoch_292.pth)

It is the VMamba-Tiny file that downstream projects (VM-UNet, Swin-UMamba,
Sigma, …) use, and the one "vanilla-VMamba-Tiny" refers to.  The later v2/v3
checkpoints (e.g. ``vssm1_tiny_0230s_ckpt_epoch_264.pth``: depths [2, 2, 5, 2],
d_state 1, with MLPs) are a different architecture and do not load here.

The file is a dict whose ``"model"`` entry is the state_dict, with keys
``patch_embed.{proj,norm}.*``, ``layers.N.blocks.M.ln_1.*``,
``layers.N.blocks.M.self_attention.{in_proj.weight, conv2d.*, x_proj_weight,
dt_projs_weight, dt_projs_bias, A_logs, Ds, out_norm.*, out_proj.weight}``,
``layers.N.downsample.{norm.*, reduction.weight}`` (N = 0, 1, 2), ``norm.*`` and
the classifier ``head.*``.  The submodules below carry exactly those names, so
the backbone keys load with ``strict=True``; only ``head.*`` is dropped.

Weights lookup (:func:`build_vmamba_tiny`): an explicit path, else
``$MEDAD_VMAMBA_WEIGHTS``, else ``~/.cache/medad/weights/vssmtiny_dp01_ckpt_epoch_292.pth``.
Nothing is ever downloaded: when no file exists, :class:`MissingWeightsError`
says which file to put where.

Features
--------
``extract`` returns the output of each stage's blocks (before its patch merging),
channels-first B×C×H×W: 96@/4, 192@/8, 384@/16, 768@/32.  The final
classification LayerNorm ``norm`` is loaded (it is part of the checkpoint's
backbone) but not applied unless ``norm_last_stage=True``, matching the
official ``forward_backbone`` / dense-prediction usage.

Threads: a forward runs ~3 000 small per-position ops (one per scanned position
of every block), each an OpenMP parallel region.  On a CPU shared with other
jobs, two intra-op threads were 2–5× *slower* than ``torch.set_num_threads(1)``
(each region waits for a descheduled thread); on an idle machine two threads
were ~1.4× faster.  The module leaves the thread count to the caller.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medad.backbones.base import FeatureStage, MissingWeightsError, Teacher
from medad.backbones.selective_scan import selective_scan

logger = logging.getLogger(__name__)

#: official checkpoint file name (VMamba v0 "vssm_tiny", ImageNet-1K)
CHECKPOINT_NAME = "vssmtiny_dp01_ckpt_epoch_292.pth"
#: where to download it (GitHub release ``#v0cls`` of MzeroMiko/VMamba)
CHECKPOINT_URL = f"https://github.com/MzeroMiko/VMamba/releases/download/%23v0cls/{CHECKPOINT_NAME}"
#: environment variable naming a checkpoint file
WEIGHTS_ENV = "MEDAD_VMAMBA_WEIGHTS"

DIMS = (96, 192, 384, 768)
DEPTHS = (2, 2, 9, 2)
D_STATE = 16
SSM_RATIO = 2.0
D_CONV = 3
#: classifier keys in the official checkpoint that the backbone does not use
HEAD_PREFIXES = ("head.",)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- modules


class PatchEmbed2D(nn.Module):
    """4×4 stride-4 convolution to ``embed_dim`` channels, then LayerNorm; returns B×H×W×C."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """Halve the resolution and double the channels (channels-last in and out).

    The 2×2 neighbours are concatenated in the order (0,0), (1,0), (0,1), (1,1)
    (row offset, column offset) — the order the checkpoint's ``reduction`` expects.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        if height % 2 or width % 2:
            raise ValueError(f"patch merging needs an even feature size, got {height}×{width}")
        gathered = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(gathered))


class SS2D(nn.Module):
    """2-D selective scan block (VMamba v0): in_proj → dwconv → SiLU → 4-way scan → norm · SiLU(z) → out_proj.

    Directions k = 0 … 3 scan the H×W map row-major, column-major, row-major
    reversed and column-major reversed; each has its own x/Δ projections, A, D
    and Δ bias (stacked along the first axis of the parameters); the four
    outputs are mapped back to row-major order and summed.
    """

    directions = 4

    def __init__(self, d_model: int, d_state: int = D_STATE, ssm_ratio: float = SSM_RATIO,
                 d_conv: int = D_CONV, dt_rank: int | None = None) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        k, inner, rank = self.directions, self.d_inner, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * inner, bias=False)
        self.conv2d = nn.Conv2d(inner, inner, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=inner, bias=True)
        self.act = nn.SiLU()
        # per direction: x → (Δ low-rank, B, C) and Δ low-rank → Δ per channel
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * d_state, inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, inner, rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, inner))
        self.A_logs = nn.Parameter(torch.empty(k * inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * inner))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, d_model, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """Mamba's initialisation: S4D-real A, D = 1, Δ bias so that softplus(bias) ∈ [dt_min, dt_max]."""
        bound = 1 / math.sqrt(self.d_inner)
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(-self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(self.dt_projs_bias.shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def cross_scan(self, x: torch.Tensor) -> torch.Tensor:
        """B×D×H×W → B×4×D×L: row-major, column-major, and both reversed."""
        batch, dim, height, width = x.shape
        row_major = x.reshape(batch, dim, height * width)
        column_major = x.transpose(2, 3).reshape(batch, dim, height * width)
        forward = torch.stack([row_major, column_major], dim=1)
        return torch.cat([forward, forward.flip(-1)], dim=1)

    @staticmethod
    def cross_merge(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """B×4×D×L (in scan order) → B×D×L in row-major order, summed over directions."""
        batch, _, dim, length = ys.shape
        ys = torch.cat([ys[:, :2], ys[:, 2:].flip(-1)], dim=1)  # undo the reversal
        column_major = ys[:, 1::2].sum(1).view(batch, dim, width, height).transpose(2, 3).reshape(batch, dim, length)
        return ys[:, 0::2].sum(1) + column_major

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """Selective scan of a B×D×H×W map in 4 directions; returns B×D×H×W (float32)."""
        batch, _, height, width = x.shape
        length = height * width
        k = self.directions
        xs = self.cross_scan(x)  # b,k,d,l
        projected = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(projected, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        ys = selective_scan(
            xs.reshape(batch, k * self.d_inner, length),
            dts.reshape(batch, k * self.d_inner, length),
            -torch.exp(self.A_logs.float()),
            Bs, Cs, self.Ds,
            delta_bias=self.dt_projs_bias.reshape(-1),
            delta_softplus=True,
        ).view(batch, k, self.d_inner, length)
        return self.cross_merge(ys, height, width).view(batch, self.d_inner, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×H×W×C → B×H×W×C."""
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2)))
        y = self.scan(x).to(z.dtype).permute(0, 2, 3, 1)
        return self.out_proj(self.out_norm(y) * F.silu(z))


class VSSBlock(nn.Module):
    """Pre-norm residual SS2D block: ``x + SS2D(LayerNorm(x))`` (channels-last)."""

    def __init__(self, hidden_dim: int, d_state: int = D_STATE) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(hidden_dim, d_state=d_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.self_attention(self.ln_1(x))


class VSSLayer(nn.Module):
    """One stage: ``depth`` VSS blocks, then (stages 1–3) a patch merging to the next stage."""

    def __init__(self, dim: int, depth: int, downsample: bool, d_state: int = D_STATE) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([VSSBlock(dim, d_state=d_state) for _ in range(depth)])
        self.downsample = PatchMerging2D(dim) if downsample else None

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


# --------------------------------------------------------------------------- checkpoint handling


def default_weights_path() -> Path:
    """``~/.cache/medad/weights/vssmtiny_dp01_ckpt_epoch_292.pth``."""
    return Path.home() / ".cache" / "medad" / "weights" / CHECKPOINT_NAME


def expected_weight_paths(weights: str | Path | None = None) -> list[Path]:
    """Where :func:`build_vmamba_tiny` looks for the checkpoint, in order."""
    if weights is not None:
        return [Path(weights).expanduser()]
    paths = []
    if os.environ.get(WEIGHTS_ENV):
        paths.append(Path(os.environ[WEIGHTS_ENV]).expanduser())
    paths.append(default_weights_path())
    return paths


def missing_weights_message(paths: list[Path]) -> str:
    where = " or ".join(str(path) for path in paths)
    return (
        f"VMamba-Tiny ImageNet weights not found: expected the official checkpoint {CHECKPOINT_NAME} at {where}. "
        f"Download it from {CHECKPOINT_URL} (VMamba v0 'vssm_tiny', ImageNet-1K) on a machine with internet, "
        f"then put it at {default_weights_path()}, or set {WEIGHTS_ENV}=/path/to/{CHECKPOINT_NAME}, "
        f"or pass the path explicitly (weights=PATH / --weights PATH)."
    )


def load_checkpoint_file(path: str | Path) -> object:
    """``torch.load`` a checkpoint on CPU, tensors-only first.

    Training checkpoints may also pickle a config object, which the safe loader
    refuses.  Unpickling runs arbitrary code, so it is done only when the user opts
    in with ``MEDAD_TRUST_CHECKPOINTS=1`` (for a file from the official source).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if os.environ.get("MEDAD_TRUST_CHECKPOINTS") != "1":
            raise ValueError(f"{path} holds non-tensor (pickled) objects, which medad does not unpickle by default; "
                             f"if the file comes from {CHECKPOINT_URL}, set MEDAD_TRUST_CHECKPOINTS=1 to load it") from error
        logger.warning("%s holds non-tensor objects (%s); loading it with full unpickling — "
                       "only use a checkpoint from %s", path, str(error).splitlines()[0], CHECKPOINT_URL)
        return torch.load(path, map_location="cpu", weights_only=False)


def official_backbone_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The backbone ``state_dict`` of an official VMamba checkpoint.

    Accepts the training file (``{"model": state_dict, …}``), a ``{"state_dict": …}``
    wrapper or a bare state_dict; strips a DataParallel ``module.`` prefix and
    drops the classifier head (``head.*``).
    """
    state_dict = checkpoint
    for key in ("model", "state_dict"):
        if isinstance(state_dict, Mapping) and key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"not a VMamba checkpoint: expected a dict with a 'model' state_dict, got {type(state_dict)}")
    cleaned = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith(HEAD_PREFIXES):
            continue
        cleaned[key] = value
    return cleaned


def _layout_hint(keys: list[str]) -> str:
    if any(".op." in key or key.startswith("classifier.") or ".mlp." in key for key in keys):
        return (f" The checkpoint looks like a later VMamba v2/v3 model (e.g. vssm1_tiny_0230s_*), "
                f"a different architecture; this teacher needs the v0 file {CHECKPOINT_NAME} ({CHECKPOINT_URL}).")
    return ""


# --------------------------------------------------------------------------- teacher


class VMambaTiny(Teacher):
    """Frozen VMamba-Tiny (v0) teacher: 96@/4, 192@/8, 384@/16, 768@/32, channels-first.

    ``weights``: path of the official checkpoint (``{"model": state_dict}``), or
    None for random weights.  ``freeze`` (default, like the other teachers) puts
    it in eval mode with gradients off.  ``norm_last_stage`` applies the
    checkpoint's final LayerNorm to the stride-32 features.  ``num_stages`` (1 … 4) stages are
    returned, shallow first; the checkpoint always loads whole.
    """

    name = "vmamba_tiny"

    def __init__(self, weights: str | Path | None = None, *, num_stages: int = len(DIMS), freeze: bool = True,
                 norm_last_stage: bool = False) -> None:
        super().__init__(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        if not 1 <= num_stages <= len(DIMS):
            raise ValueError(f"VMamba-Tiny has {len(DIMS)} stages; num_stages={num_stages} is out of range")
        self.feature_info = [FeatureStage(dim, 4 * 2**index) for index, dim in enumerate(DIMS[:num_stages])]
        self.norm_last_stage = norm_last_stage
        self.patch_embed = PatchEmbed2D(patch_size=4, in_chans=3, embed_dim=DIMS[0])
        self.layers = nn.ModuleList([
            VSSLayer(dim, depth, downsample=index < len(DIMS) - 1)
            for index, (dim, depth) in enumerate(zip(DIMS, DEPTHS, strict=True))
        ])
        self.norm = nn.LayerNorm(DIMS[-1])
        self._init_weights()
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise MissingWeightsError(missing_weights_message([path]))
            self.load_official_checkpoint(load_checkpoint_file(path), source=str(path))
        if freeze:
            self.freeze()

    def _init_weights(self) -> None:
        # the official initialisation: truncated-normal Linear weights, zero biases, unit LayerNorms
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def load_official_checkpoint(self, checkpoint: Mapping[str, object], source: str = "checkpoint") -> None:
        """Load an official VMamba-Tiny v0 checkpoint (dict or ``{"model": …}``) strictly, ignoring ``head.*``."""
        state_dict = official_backbone_state_dict(checkpoint)
        expected = set(self.state_dict())
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{source} does not match the VMamba-Tiny v0 layout: {len(missing)} missing keys "
                f"{missing[:5]}{' …' if len(missing) > 5 else ''}, {len(unexpected)} unexpected keys "
                f"{unexpected[:5]}{' …' if len(unexpected) > 5 else ''}.{_layout_hint(unexpected)}")
        try:
            self.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:  # shape mismatches
            raise ValueError(f"{source} does not match the VMamba-Tiny v0 shapes: {error}") from error

    def extract(self, normalised: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(normalised)  # B×H×W×C
        features = []
        num_stages = len(self.feature_info)
        for index, layer in enumerate(self.layers[:num_stages]):
            x = layer.forward_blocks(x)
            stage = self.norm(x) if (self.norm_last_stage and index == len(self.layers) - 1) else x
            features.append(stage.permute(0, 3, 1, 2).contiguous())
            if index + 1 < num_stages:
                x = layer.downsample(x)
        return features


def build_vmamba_tiny(weights: str | Path | None = None, *, allow_random: bool = False, num_stages: int = len(DIMS),
                      freeze: bool = True) -> VMambaTiny:
    """VMamba-Tiny with the official ImageNet weights, found offline.

    Looks for the checkpoint at ``weights`` if given, else ``$MEDAD_VMAMBA_WEIGHTS``,
    else ``~/.cache/medad/weights/vssmtiny_dp01_ckpt_epoch_292.pth``.  If none
    exists: with ``allow_random`` (and no explicit ``weights``) a randomly
    initialised model (tests, speed measurement; a warning is logged), otherwise
    :class:`MissingWeightsError` naming the expected file, places and download
    URL.  An explicit ``weights`` path that does not exist is always an error.
    Never downloads.
    """
    candidates = expected_weight_paths(weights)
    for path in candidates:
        if path.is_file():
            return VMambaTiny(path, num_stages=num_stages, freeze=freeze)
    if allow_random and weights is None:
        logger.warning("VMamba-Tiny: no checkpoint at %s; using RANDOM weights (tests / speed only, "
                       "features are meaningless)", " or ".join(map(str, candidates)))
        return VMambaTiny(None, num_stages=num_stages, freeze=freeze)
    raise MissingWeightsError(missing_weights_message(candidates))


__all__ = [
    "CHECKPOINT_NAME", "CHECKPOINT_URL", "WEIGHTS_ENV", "VMambaTiny", "build_vmamba_tiny",
    "default_weights_path", "expected_weight_paths", "official_backbone_state_dict", "load_checkpoint_file",
    "SS2D", "VSSBlock", "VSSLayer", "PatchEmbed2D", "PatchMerging2D",
]
