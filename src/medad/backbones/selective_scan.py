"""The selective scan of Mamba / VMamba in plain PyTorch (CPU-capable, differentiable).

:func:`selective_scan` computes, per channel d and state n,

    h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t,     y_t = ⟨C_t, h_t⟩ + D x_t,

Δ = softplus(δ + bias), vectorised over batch, channels and directions.  It
processes the sequence in chunks: the decays exp(Δ A) and inputs Δ B x of a
chunk are computed for all its positions at once and the recurrence then runs
in place over the chunk (one fused multiply-add per position), and the chunk's
outputs are contracted with C in one op.  Measured on this project's 2-core CPU
this beat both a log-depth (Hillis–Steele) parallel scan within chunks (~2×
slower: log T passes over the state tensor) and the naive per-step loop
(~1.5× slower).  A cumulative-sum-in-log-space form was not used: its
exp(−Σ Δ A) factors overflow float32 once a chunk's accumulated decay passes
~88, which strongly decaying channels reach.
:func:`selective_scan_reference` is the plain per-position loop used to test it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float().view(1, -1, 1)
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _check_scan_shapes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor) -> tuple[int, int, int, int, int]:
    if u.ndim != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, channels, length); got {tuple(u.shape)}, {tuple(delta.shape)}")
    batch, channels, length = u.shape
    if A.ndim != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, d_state); got {tuple(A.shape)}")
    d_state = A.shape[1]
    if B.ndim != 4 or B.shape[0] != batch or B.shape[2] != d_state or B.shape[3] != length or B.shape != C.shape:
        raise ValueError(f"B and C must be (batch, groups, d_state, length); got {tuple(B.shape)}, {tuple(C.shape)}")
    groups = B.shape[1]
    if channels % groups:
        raise ValueError(f"{channels} channels cannot be split into {groups} groups of B/C")
    return batch, channels, length, groups, d_state


def selective_scan_reference(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                             C: torch.Tensor, D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                             delta_softplus: bool = True) -> torch.Tensor:
    """The selective scan as a plain loop over positions (the test reference).

    Layout as mamba_ssm's ``selective_scan_fn`` with grouped B/C: ``u``, ``delta``
    (batch, G·D, L); ``A`` (G·D, N); ``B``, ``C`` (batch, G, N, L); ``D``,
    ``delta_bias`` (G·D,).  Channel c uses B/C of group c // D.  Returns
    (batch, G·D, L) in float32.
    """
    batch, channels, length, groups, d_state = _check_scan_shapes(u, delta, A, B, C)
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    u = u.float()
    per_group = channels // groups
    # expand B and C to one copy per channel: (batch, channels, N, L)
    B_full = B.float().repeat_interleave(per_group, dim=1)
    C_full = C.float().repeat_interleave(per_group, dim=1)
    A = A.float()
    state = u.new_zeros(batch, channels, d_state)
    outputs = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)
        state = decay * state + (delta[:, :, t] * u[:, :, t])[:, :, None] * B_full[:, :, :, t]
        outputs.append((state * C_full[:, :, :, t]).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + u * D.float().view(1, -1, 1)
    return y


def _scan_chunk_size(batch: int, groups: int, per_group: int, d_state: int) -> int:
    """Positions per chunk: keep one chunk's state tensor near 2 M floats (8 MB)."""
    per_position = batch * groups * per_group * d_state
    return int(min(128, max(8, (1 << 21) // max(per_position, 1))))


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = True, chunk_size: int | None = None) -> torch.Tensor:
    """Chunked selective scan; same arguments, layout and result as :func:`selective_scan_reference`.

    Within a chunk of T positions the decays and inputs are computed at once as
    (T, batch, G, D, N) tensors and the recurrence runs in place over them; the
    chunk's outputs are then contracted with C.  Differentiable (a copy-free
    in-place path is used only when no gradient is needed).
    """
    batch, channels, length, groups, d_state = _check_scan_shapes(u, delta, A, B, C)
    per_group = channels // groups
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    u = u.float()
    if chunk_size is None:
        chunk_size = _scan_chunk_size(batch, groups, per_group, d_state)
    # sequence-first layouts, so that one position is one contiguous block
    delta_seq = delta.view(batch, groups, per_group, length).permute(3, 0, 1, 2).contiguous()  # L,b,G,D
    input_seq = (delta * u).view(batch, groups, per_group, length).permute(3, 0, 1, 2).contiguous()  # L,b,G,D
    B_seq = B.float().permute(3, 0, 1, 2).contiguous()  # L,b,G,N
    C_seq = C.float().permute(3, 0, 1, 2).contiguous()  # L,b,G,N
    A_groups = A.float().view(groups, per_group, d_state)  # G,D,N

    needs_grad = torch.is_grad_enabled() and any(
        tensor.requires_grad for tensor in (u, delta, A, B, C))
    state = None
    outputs = []
    for start in range(0, length, chunk_size):
        stop = min(length, start + chunk_size)
        decay = torch.exp(delta_seq[start:stop, ..., None] * A_groups)  # T,b,G,D,N
        states = input_seq[start:stop, ..., None] * B_seq[start:stop, :, :, None, :]  # T,b,G,D,N
        if needs_grad:
            history = []
            for t in range(stop - start):
                state = states[t] if state is None else torch.addcmul(states[t], decay[t], state)
                history.append(state)
            states = torch.stack(history)
        else:
            if state is not None:
                states[0].addcmul_(decay[0], state)
            for t in range(1, stop - start):
                states[t].addcmul_(decay[t], states[t - 1])
            state = states[-1]
        outputs.append((states * C_seq[start:stop, :, :, None, :]).sum(-1))  # T,b,G,D
    y = torch.cat(outputs).permute(1, 2, 3, 0).reshape(batch, channels, length)
    if D is not None:
        y = y + u * D.float().view(1, -1, 1)
    return y


__all__ = ["selective_scan", "selective_scan_reference"]
