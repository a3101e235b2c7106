"""The semantic adaptive token layout, shared by training (train_sat.py) and the one-step
fused decoder (decode.py): n ordinary tokens followed by one group of k SATs per anchor.

SAT j (1..k) of the group anchored at ordinary token p sits at position p + j, sees the
ordinary tokens 0..p and the SATs of its own group up to itself. Ordinary tokens see
only ordinary tokens, causally. train_sat.py draws the full picture for n = 8.
"""

import torch


def sat_layout(n: int, anchors: torch.Tensor, k: int):
    """Positions [B, T] and boolean mask [B, 1, T, T] for N standard tokens + |A| groups of k.

    Every token gets three numbers: the last standard index it may see (`sees_upto`), its
    group (-1 for standard tokens) and its offset j in the group (0 for standard tokens).
    Then: a column that is a standard token is visible if its index <= sees_upto of the
    row; a column that is a SAT is visible if it is in the row's group at offset <= the row's.
    """
    B, A = anchors.shape
    T, dev = n + A * k, anchors.device
    j = torch.arange(1, k + 1, device=dev).repeat(A).expand(B, -1)  # [B, A*k] offsets 1..k
    anchor = anchors.repeat_interleave(k, dim=1)  # [B, A*k] each SAT's anchor
    group = torch.arange(A, device=dev).repeat_interleave(k).expand(B, -1)
    std_idx = torch.arange(n, device=dev).expand(B, -1)
    positions = torch.cat([std_idx, anchor + j], 1)  # [B, T]
    sees_upto = torch.cat([std_idx, anchor], 1)  # [B, T]
    groups = torch.cat([torch.full((B, n), -1, device=dev), group], 1)
    offsets = torch.cat([torch.zeros(B, n, dtype=torch.long, device=dev), j], 1)
    col = torch.arange(T, device=dev)
    std_col = (col < n)[None, None, :] & (col[None, None, :] <= sees_upto[:, :, None])
    same_group = (groups[:, :, None] == groups[:, None, :]) & (groups[:, :, None] >= 0)
    sat_col = same_group & (offsets[:, None, :] <= offsets[:, :, None])
    return positions, (std_col | sat_col)[:, None]
