"""The peers of bench.py --peers: transformers' own generate() on the same weights.

  hf generate            greedy decoding, transformers' dynamic cache
  hf prompt lookup       the same, with prompt_lookup_num_tokens=10 (transformers' lookup)
  hf generate (compiled) with --compile: its static cache and a compiled decode step, what a
                         user who wants compiled decoding from transformers would pick
"""

import torch

from checkpoint import model_files_dir
from decode_common import Stats
from machine import now


def load_peer(model_dir: str, device: torch.device, dtype: torch.dtype):
    """The same checkpoint as transformers' LlamaForCausalLM (main checked that it is
    installed). For a SAT adapter directory, its base: the same outputs, by construction."""
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = model_files_dir(model_dir)
    return transformers.LlamaForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()


def compile_options(hf, cache_len: int) -> dict:
    """generate() options for transformers' compiled decoding: its static cache, one length
    for every prompt as ours has (else each longer prompt recompiles), and the decode step
    compiled (it compiles by itself only on accelerators; asked to here on a CPU as well).
    With CUDA graphs on a GPU, as transformers does by default."""
    from transformers import CompileConfig
    config = CompileConfig(fullgraph=True, dynamic=False,
                           mode="reduce-overhead" if hf.device.type == "cuda" else "default")
    config._compile_all_devices = True  # the documented switch for CPUs is this private field
    return {"cache_implementation": "static", "max_cache_len": cache_len, "compile_config": config}


class FirstTokenClock:
    """A transformers streamer that only reads the clock: generate() hands it the prompt,
    then the new tokens, so the second call marks the end of the prefill."""

    def __init__(self, device: torch.device):
        self.device, self.calls, self.first_token = device, 0, None

    def put(self, ids):
        self.calls += 1
        if self.calls == 2:
            self.first_token = now(self.device)

    def end(self):
        pass


@torch.inference_mode()
def run_hf(hf, prompt: list[int], m, max_new: int, stop_ids, cache_len: int = 0) -> dict:
    """transformers' greedy generate (with prompt lookup when m.drafts, compiled with a
    static cache of cache_len when m.compiled), timed as bench.run_once times ours: decode
    time from the first new token to the last. m: a bench.Method."""
    dev = hf.device
    ids = torch.tensor([prompt], device=dev)
    clock = FirstTokenClock(dev)
    lookup = {"prompt_lookup_num_tokens": m.drafts} if m.drafts else {}
    if m.compiled:
        lookup.update(compile_options(hf, cache_len))
    t0 = now(dev)
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                      eos_token_id=list(stop_ids), pad_token_id=0, streamer=clock, **lookup)
    t2 = now(dev)
    t1 = clock.first_token or t2
    tokens = out[0, len(prompt):].tolist()
    return {"tokens": tokens, "stats": Stats(new_tokens=len(tokens)), "prefill_s": t1 - t0, "decode_s": t2 - t1}
