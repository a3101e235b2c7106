"""Pre-packed weights: the one step between loading a model and decoding with it on a CPU.

oneDNN (x86) keeps a weight in a blocked layout of its own, made once, so that a product
of a few rows reads the weight at memory speed. decode.py and bench.py take this step on
a CPU unless --no-pack; model.py's layers call the packed products through the same
names, and model.linears makes one product of q, k and v where they were stacked here.
"""

import torch
import torch.nn as nn

from model import STACKED, Llama


class PackedLinear(nn.Module):
    """A linear layer whose weight is also kept pre-packed in oneDNN's blocked layout (x86
    CPUs), so that a product of a few rows reads it at memory speed: 1.6-2.5x faster than
    F.linear for 1 to 6 rows in bf16 here, and flat from 1 to 8 rows. `weight` stays as it
    was (the Hugging Face name and values: saving and loading see no difference); the
    packed copy is made once, by pack_weights. Inference only: it has no backward."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        if isinstance(weight, nn.Parameter):  # a layer's own weight keeps its name in the state dict;
            self.weight = weight  # a stacked one (pack_weights) is only packed
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)

    def forward(self, x):
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


def can_pack(model: Llama) -> bool:
    """oneDNN's packed products exist for x86 CPUs; in bf16, for those with bf16 support."""
    mkldnn = torch.backends.mkldnn
    return (model.device.type == "cpu" and mkldnn.is_available() and mkldnn.enabled and model.dtype != torch.float16
            and (model.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def pack_weights(model: Llama) -> Llama:
    """Pre-pack the base's linear layers (the blocks and the head) for oneDNN: the one step
    between loading and decoding on a CPU (decode.py and bench.py take it unless
    --no-pack), after the model has its final device and dtype.

      * q, k and v read the same input: their weights are stacked into one PackedLinear,
        self_attn.qkv, so a pass makes one product of them (Attention calls `linears`);
        every other linear layer and the head become PackedLinears of their own weights;
      * the nn.Linear layers stay where they are, unused, with their Hugging Face names and
        values: saving and loading see no difference;
      * a SAT adapter gets its changes stacked the same way (adapter.stack_changes).

    Greedy output is the unpacked model's token for token in float32 (tested); the
    products only add up in another order."""
    if not can_pack(model):
        return model
    for block in model.layers:
        for module in (block.self_attn, block.mlp):
            stacked = set()
            for group, names in STACKED.items():
                if hasattr(module, names[0]) and all(type(getattr(module, n)) is nn.Linear for n in names):
                    weight = torch.cat([getattr(module, n).weight.detach() for n in names])
                    setattr(module, group, PackedLinear(weight))
                    stacked.update(names)
            for name, child in list(module.named_children()):
                if type(child) is nn.Linear and name not in stacked:
                    setattr(module, name, PackedLinear(child.weight))
    if type(model.lm_head) is nn.Linear:
        model.lm_head = PackedLinear(model.lm_head.weight)
    if model.adapter is not None:
        from adapter import stack_changes
        stack_changes(model.adapter)
    return model
