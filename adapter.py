"""The SAT adapter: weights that only semantic adaptive tokens see, on a frozen base model.

In SDSAT no standard token ever attends to a SAT (SDSAT.md section 1). So if the weights
that training changes act only at SAT positions, every standard token's output is the
base model's, exactly: verification and plain decoding run the untouched base, and greedy
SDSAT output is the base model's greedy output. The adapter is

  * a SAT embedding of its own, [D]: a SAT's input vector, in place of the base's row;
  * a low-rank change (rank r) of every linear layer of every block, W x + B A x, added
    only at SAT rows. The gate is the token id: a row is a SAT row iff its id is the SAT id.

    rows fed:    cur   S    S    S          (a draft pass, k = 3)
    q_proj:      W x   W x + B A x, at each SAT row
    embedding:   E[cur] e_sat e_sat e_sat

A forward with no SAT in it (verification, plain decoding, the prompt) never runs the
adapter: `Llama.network` checks the ids first. The gate being the id, the SAT id must be
one the model never writes (a spare special token): a real token with that id would be
read as a SAT.

On disk (checkpoint.py) an adapter is a small directory of its own that names its base:

    adapter.json          {"base": "../smollm2-135m", "base_shape": {...}, "rank": 32,
                           "sat_token_id": 6, "sat_k": 5}
    adapter.safetensors   embed [D], layers.{i}.{q_proj,...,down_proj}.{a [r, in], b [out, r]}
    training.json         the training report (train_sat.py --mode adapter)

`checkpoint.load_model` takes such a directory as a model: it loads the base named in
adapter.json (relative to the adapter directory, or absolute), checks its shape, and
attaches the adapter. So `decode.py --model ADAPTER_DIR` and `bench.py --model
ADAPTER_DIR` run the SAT model.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import CheckpointError, Llama, ModelArgs

# What must match between an adapter and the base it is put on.
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size")


def adapted_shapes(args: ModelArgs) -> dict[str, tuple[int, int]]:
    """(in, out) of every linear layer of a block, which the adapter changes."""
    D, ffn = args.hidden_size, args.intermediate_size
    q, kv = args.num_attention_heads * args.head_dim, args.num_key_value_heads * args.head_dim
    return {"q_proj": (D, q), "k_proj": (D, kv), "v_proj": (D, kv), "o_proj": (q, D),
            "gate_proj": (D, ffn), "up_proj": (D, ffn), "down_proj": (ffn, D)}


class LowRank(nn.Module):
    """x -> B (A x): a rank-r change of one linear layer (LoRA). B starts at zero, so a new
    adapter changes nothing until it trains."""

    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, d_in) / math.sqrt(d_in))  # [r, in]
        self.b = nn.Parameter(torch.zeros(d_out, rank))  # [out, r]

    def forward(self, x):  # in x's dtype: a float32 adapter on a bf16 base computes in bf16
        return F.linear(F.linear(x, self.a.to(x.dtype)), self.b.to(x.dtype))


class SATAdapter(nn.Module):
    """The SAT embedding and one LowRank per linear layer of every block."""

    def __init__(self, args: ModelArgs, rank: int, sat_id: int, sat_k: int | None = None):
        super().__init__()
        self.rank, self.sat_id, self.sat_k = rank, sat_id, sat_k
        self.embed = nn.Parameter(torch.zeros(args.hidden_size))  # [D]
        self.layers = nn.ModuleList(
            nn.ModuleDict({name: LowRank(d_in, d_out, rank) for name, (d_in, d_out) in adapted_shapes(args).items()})
            for _ in range(args.num_hidden_layers))
        self.stacked = []  # per block, the changes of model.STACKED's groups (stack_changes); not saved

    def changes(self, i: int) -> dict:
        """Block i's low-rank changes by layer name, and by group name once stacked."""
        return {**self.layers[i], **self.stacked[i]} if self.stacked else self.layers[i]


def stack_changes(adapter: SATAdapter):
    """For packing.pack_weights, which stacks q, k and v into one product: the matching
    change, of rank 3r, whose A stacks the three A and whose B is block-diagonal, so its
    output is the three changes side by side (the same sums, the zero blocks adding exact
    zeros; only their order may differ):

        [B_q      ] [A_q]         [B_q A_q x]
        [   B_k   ] [A_k] x   =   [B_k A_k x]
        [      B_v] [A_v]         [B_v A_v x]

    Every change becomes a FrozenLowRank. A plain list, not submodules: the adapter saves
    and loads as it was."""
    from model import STACKED
    adapter.stacked = []
    for layer in adapter.layers:
        group, alone = {}, set(layer)
        for name, parts in STACKED.items():
            a = torch.cat([layer[p].a.detach() for p in parts])
            b = torch.block_diag(*[layer[p].b.detach() for p in parts])
            group[name], alone = FrozenLowRank(a, b), alone - set(parts)
        for name in alone:  # and the others as they are
            group[name] = FrozenLowRank(layer[name].a.detach(), layer[name].b.detach())
        adapter.stacked.append(group)


class FrozenLowRank(nn.Module):
    """x -> B (A x) for decoding: A and B kept transposed, in float32, and multiplied with
    torch.mm. A pass feeds a few SAT rows, so each product is tiny and costs what its
    call costs: on this CPU, timed alone for 5 rows, a change with its in-place add took
    25.6 us this way against 56.4 us through oneDNN's pre-packed bf16 products. In a whole
    bf16 pass the 150 changes still cost about 12 ms (60.5 ms against 48.5 with each change
    replaced by a zero), three times what the same calls timed alone add up to. Returns
    float32: linear() adds it in place to the layer's output, in that output's dtype."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.a_t, self.b_t = a.float().t().contiguous(), b.float().t().contiguous()  # [in, r], [r, out]

    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1]).float()
        return (rows @ self.a_t @ self.b_t).view(*x.shape[:-1], -1)


def grow_rank(adapter: SATAdapter, rank: int, seed: int = 0):
    """Give every low-rank change `rank` instead of adapter.rank, changing no output: the
    new rows of A start random (as a new adapter's do) and the new columns of B at zero,
    so B A x is the same sum plus exact zeros. Training then has room the old rank lacked,
    from where the smaller adapter stopped. In place; the adapter must not be stacked."""
    if rank < adapter.rank:
        raise ValueError(f"an adapter of rank {adapter.rank} cannot grow to rank {rank}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in adapter.layers:
            for change in layer.values():
                a, b = change.a.detach(), change.b.detach()
                new = LowRank(a.shape[1], b.shape[0], rank - adapter.rank).to(a.device, a.dtype)
                change.a = nn.Parameter(torch.cat([a, new.a.detach()]))
                change.b = nn.Parameter(torch.cat([b, new.b.detach()], dim=1))
    adapter.rank = rank


def new_adapter(model: Llama, rank: int, sat_id: int, sat_k: int | None = None, seed: int = 0,
                dtype: torch.dtype | None = None) -> SATAdapter:
    """A fresh adapter on `model` (attached): the SAT embedding starts as the base's row of
    the SAT id, every low-rank change at zero, so the model is still exactly the base."""
    if not 0 <= sat_id < model.args.vocab_size:
        raise CheckpointError(f"SAT id {sat_id} is outside the vocabulary (0..{model.args.vocab_size - 1})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = SATAdapter(model.args, rank, sat_id, sat_k)
    with torch.no_grad():
        adapter.embed.copy_(model.embed_tokens.weight[sat_id].float())
    attach(model, adapter, dtype)
    return adapter


def attach(model: Llama, adapter: SATAdapter, dtype: torch.dtype | None = None):
    """Put the adapter on the model, on its device, in `dtype` (default: the model's); the
    base stays as it is. Training keeps the adapter in float32 on a bf16 base (autocast)."""
    model.adapter = adapter.to(model.device, dtype or model.dtype)
    model.args.sat_token_id, model.args.sat_k = adapter.sat_id, adapter.sat_k
    if hasattr(model.layers[0].self_attn, "qkv"):  # packed before: the changes stack as its products do
        stack_changes(adapter)


def base_shape(args: ModelArgs) -> dict:
    return {key: getattr(args, key) for key in SHAPE_KEYS}
