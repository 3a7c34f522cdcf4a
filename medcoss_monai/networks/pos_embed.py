"""Grid-aware position embeddings for text (1D), 2D and 3D token grids, and their resizing.

A :class:`PositionEmbedding` stores its table (``weight``, shape ``(1, N, C)``) next to the grid it was
made for (``grid``, a persistent integer buffer), so a state dict always says which grid its table
belongs to. :func:`adapt_state_dict` uses that to resize the tables of weights trained at another
input size before ``load_state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "sincos_pos_embed",
    "resize_pos_embed",
    "PositionEmbedding",
    "StateDictReport",
    "adapt_state_dict",
]


def sincos_pos_embed(grid: Sequence[int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed sine-cosine position embedding of a 1D, 2D or 3D grid (MAE style, any ``dim``).

    Each grid axis gets an equal, even share of the channels (half sine, half cosine of the integer
    coordinate at geometric frequencies); channels left over when ``dim`` does not split evenly are zero.
    Tokens are numbered row-major over the grid, the order of a flattened convolution output.

    Kept rather than MONAI's ``build_sincos_position_embedding``: that one has no 1D (text) table, refuses
    sizes not divisible by 4 (2D) or 6 (3D) (the 3D MAE decoder table at 128 channels), lists the axes
    as (W, H, D) and computes in float32 (after reordering the axes its tables differ from these by up
    to 1.2e-7, which would change every trained model).

    Args:
        grid: tokens along each axis, e.g. ``(112,)``, ``(6, 6)`` or ``(4, 4, 2)``.
        dim: embedding size.
        temperature: the longest wavelength.

    Returns:
        ``(1, prod(grid), dim)`` float32 tensor.
    """
    grid = [int(g) for g in grid]
    per_axis = (dim // (2 * len(grid))) * 2
    if per_axis == 0:
        raise ValueError(f"embedding size {dim} is too small for a {len(grid)}D sine-cosine embedding.")
    half = per_axis // 2
    omega = 1.0 / temperature ** (torch.arange(half, dtype=torch.float64) / half)
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    for c in coords:
        angles = c.reshape(-1, 1) * omega.reshape(1, -1)
        parts += [torch.sin(angles), torch.cos(angles)]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < dim:
        emb = F.pad(emb, (0, dim - emb.shape[1]))
    return emb.float().unsqueeze(0)


def resize_pos_embed(
    pos_embed: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int], mode: str | None = None
) -> torch.Tensor:
    """Interpolate a position-embedding table from one token grid to another.

    Used when an input (or weights trained on one) has another size than the model was built for.

    Args:
        pos_embed: ``(1, N, C)`` or ``(N, C)`` table with ``N == prod(old_grid)``.
        old_grid: the grid of ``pos_embed``.
        new_grid: the wanted grid (same number of axes).
        mode: interpolation mode; default ``linear`` (1D), ``bicubic`` (2D), ``trilinear`` (3D).

    Returns:
        The table on ``new_grid``, same leading shape and dtype as ``pos_embed``.

    Raises:
        ValueError: when the grids have different numbers of axes or ``N`` does not match ``old_grid``.
    """
    old_grid, new_grid = tuple(int(g) for g in old_grid), tuple(int(g) for g in new_grid)
    if len(old_grid) != len(new_grid) or not 1 <= len(old_grid) <= 3:
        raise ValueError(f"cannot resize a position embedding from grid {old_grid} to grid {new_grid}.")
    squeeze = pos_embed.ndim == 2
    table = pos_embed.unsqueeze(0) if squeeze else pos_embed
    if table.shape[1] != math.prod(old_grid):
        raise ValueError(
            f"position embedding has {table.shape[1]} tokens, grid {old_grid} needs {math.prod(old_grid)}."
        )
    if old_grid == new_grid:
        return pos_embed
    mode = mode or {1: "linear", 2: "bicubic", 3: "trilinear"}[len(old_grid)]
    channels = table.shape[-1]
    x = table.float().transpose(1, 2).reshape(1, channels, *old_grid)
    x = F.interpolate(x, size=new_grid, mode=mode, align_corners=False)
    out = x.reshape(1, channels, -1).transpose(1, 2).to(pos_embed.dtype)
    return out[0] if squeeze else out


class PositionEmbedding(nn.Module):
    """A position-embedding table that knows its grid and adapts to other grids on the fly.

    Images of another size than the model's use the table interpolated to their grid
    (:func:`resize_pos_embed`); texts shorter than the table use its first positions.

    Args:
        grid: tokens along each axis.
        dim: embedding size.
        learnable: a trainable table (truncated-normal init), else a fixed sine-cosine table.
    """

    def __init__(self, grid: Sequence[int], dim: int, learnable: bool = False) -> None:
        super().__init__()
        grid = tuple(int(g) for g in grid)
        if learnable:
            weight = nn.init.trunc_normal_(torch.zeros(1, math.prod(grid), dim), std=0.02)
        else:
            weight = sincos_pos_embed(grid, dim)
        # a Parameter even when fixed (MAE does the same) so optimizers and state dicts treat both alike
        self.weight = nn.Parameter(weight, requires_grad=learnable)
        self.register_buffer("grid", torch.tensor(grid, dtype=torch.long))

    @property
    def grid_size(self) -> tuple[int, ...]:
        """The grid the table was made for."""
        return tuple(int(g) for g in self.grid.tolist())

    def forward(self, grid: Sequence[int] | None = None) -> torch.Tensor:
        """The table for ``grid``.

        Args:
            grid: the wanted grid; None or the own grid returns the table itself.

        Returns:
            ``(1, prod(grid), dim)`` tensor.

        Raises:
            ValueError: a text longer than the table, or a grid with another number of axes.
        """
        own = self.grid_size
        grid = own if grid is None else tuple(int(g) for g in grid)
        if grid == own:
            return self.weight
        if len(own) == 1 and len(grid) == 1:
            if grid[0] > own[0]:
                raise ValueError(f"sequence of {grid[0]} tokens is longer than the {own[0]} positions of the model.")
            return self.weight[:, : grid[0]]
        if len(grid) != len(own):
            raise ValueError(f"a {len(own)}D position embedding cannot serve a {len(grid)}D grid {grid}.")
        return resize_pos_embed(self.weight, own, grid)

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # the grid is fixed by the constructor; a stored grid only says what the stored table was made for.
        # Never copy it in (a failed or non-strict load would leave the table and its grid disagreeing).
        g_key, w_key = prefix + "grid", prefix + "weight"
        if g_key in state_dict:
            stored = tuple(int(g) for g in torch.as_tensor(state_dict[g_key]).tolist())
            if stored != self.grid_size and w_key in state_dict and state_dict[w_key].shape == self.weight.shape:
                error_msgs.append(
                    f"{w_key} was made for grid {stored}, the model's is {self.grid_size}: "
                    "adapt the weights with medcoss_monai.networks.adapt_state_dict first."
                )
            state_dict[g_key] = self.grid.clone()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"grid={self.grid_size}, dim={self.weight.shape[-1]}, learnable={self.weight.requires_grad}"


@dataclass
class StateDictReport:
    """What :func:`adapt_state_dict` did.

    Attributes:
        loaded: keys that will load.
        resized: position embeddings resized, ``key -> (old grid, new grid)``.
        skipped: keys dropped for a shape mismatch, ``key -> (stored shape, model shape)``.
        missing: model keys absent from the state dict (they keep their initial values).
        unexpected: state-dict keys the model does not have (dropped).
        prefix_change: how key prefixes were changed to match the model (e.g. ``"+encoder."``), or "".
    """

    loaded: list[str] = field(default_factory=list)
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    skipped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    prefix_change: str = ""

    def __str__(self) -> str:
        def few(keys: Sequence[str]) -> str:
            keys = list(keys)
            return ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")

        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.prefix_change:
            parts.append(f"key prefix {self.prefix_change}")
        if self.resized:
            grids = [f"{k} {'x'.join(map(str, a))}->{'x'.join(map(str, b))}" for k, (a, b) in self.resized.items()]
            parts.append("resized " + ", ".join(grids))
        if self.skipped:
            shapes = [f"{k} {tuple(a)} vs {tuple(b)}" for k, (a, b) in self.skipped.items()]
            parts.append("shape mismatch skipped: " + few(shapes))
        if self.missing:
            parts.append("missing: " + few(self.missing))
        if self.unexpected:
            parts.append("unexpected: " + few(self.unexpected))
        return "; ".join(parts)


def _match_prefix(keys: Sequence[str], model_keys: set[str]) -> tuple[dict[str, str], str]:
    """Rename state-dict keys so most of them name model keys (DDP ``module.``, encoder-only states)."""
    candidates: list[tuple[str, dict[str, str]]] = [("", {k: k for k in keys})]
    if keys and all(k.startswith("module.") for k in keys):
        keys = [k[len("module.") :] for k in keys]
        candidates = [("-module.", {"module." + k: k for k in keys})]
    base_change, base = candidates[0]
    for change, fn in (("+encoder.", lambda k: "encoder." + k), ("-encoder.", lambda k: k[len("encoder.") :])):
        renamed = {old: fn(new) for old, new in base.items() if change[0] == "+" or new.startswith("encoder.")}
        candidates.append(((base_change + " " + change).strip(), renamed))
    best = max(candidates, key=lambda c: sum(v in model_keys for v in c[1].values()))
    return best[1], best[0]


def _old_grid(
    state: Mapping[str, torch.Tensor], grid_key: str, n_tokens: int, new_grid: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The grid a stored table was made for: its stored ``grid`` buffer, else a guess from its length."""
    if grid_key in state:
        return tuple(int(g) for g in torch.as_tensor(state[grid_key]).tolist())
    if len(new_grid) == 1:
        return (n_tokens,)
    # no grid stored: assume the grid was scaled evenly along every axis
    side = round((n_tokens / math.prod(new_grid)) ** (1.0 / len(new_grid)) * new_grid[0])
    guess = tuple(max(1, round(g * side / new_grid[0])) for g in new_grid)
    return guess if math.prod(guess) == n_tokens else None


def adapt_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], StateDictReport]:
    """Make a state dict loadable into ``model``: fix key prefixes, resize position embeddings, drop misfits.

    - keys are renamed when that makes more of them fit (``module.`` of DDP removed; ``encoder.``
      added for an encoder-only state loaded into a full model, or removed for the reverse);
    - every :class:`PositionEmbedding` table whose grid differs is interpolated to the model's grid
      (texts: the first positions are kept, extra ones keep the model's values);
    - other tensors whose shape differs are dropped, as are keys the model does not have.

    Load the result with ``model.load_state_dict(state, strict=False)``; ``report.missing`` lists what
    keeps its initial values.

    Args:
        state_dict: weights, e.g. a stage's ``model.pt``.
        model: the module to load into.

    Returns:
        ``(state, report)``: the adapted state dict and a :class:`StateDictReport` (``str()`` is one log line).
    """
    target = model.state_dict()
    rename, change = _match_prefix(list(state_dict), set(target))
    report = StateDictReport(prefix_change=change)
    state = {rename[k]: v for k, v in state_dict.items() if k in rename}
    report.unexpected += [k for k in state_dict if k not in rename]

    for name, module in model.named_modules():
        if not isinstance(module, PositionEmbedding):
            continue
        w_key, g_key = f"{name}.weight" if name else "weight", f"{name}.grid" if name else "grid"
        if w_key not in state:
            continue
        new_grid = module.grid_size
        stored = state[w_key]
        old_grid = _old_grid(state, g_key, stored.shape[1], new_grid)
        if old_grid == new_grid and tuple(stored.shape) == tuple(target[w_key].shape):
            continue
        if old_grid is None or len(old_grid) != len(new_grid) or stored.shape[-1] != target[w_key].shape[-1]:
            continue  # left to the shape check below, which reports it
        if len(new_grid) == 1:
            resized = target[w_key].clone()
            n = min(old_grid[0], new_grid[0])
            resized[:, :n] = stored[:, :n].to(resized.dtype)
        else:
            resized = resize_pos_embed(stored, old_grid, new_grid)
        state[w_key] = resized
        state[g_key] = target[g_key].clone()
        report.resized[w_key] = (old_grid, new_grid)

    for k in list(state):
        if k not in target:
            report.unexpected.append(k)
            del state[k]
        elif tuple(state[k].shape) != tuple(target[k].shape):
            report.skipped[k] = (tuple(state[k].shape), tuple(target[k].shape))
            del state[k]
    report.loaded = list(state)
    report.missing = [k for k in target if k not in state]
    return state, report
