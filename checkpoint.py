"""Checkpoints on disk: reading and writing models in the Hugging Face layout, without pickle.

    config.json                          the model's shape (model.ModelArgs)
    model.safetensors                    one file, or shards listed in
    model.safetensors.index.json         {"weight_map": {tensor name: shard file}}

Tensor names are "model." + the parameter names of model.Llama, except lm_head.weight
(absent when the embeddings are tied). Loading is strict: every name and shape must
match the config. A directory holding an SAT adapter instead (adapter.json, see
adapter.py) loads as its base model with the adapter attached.

Writes are atomic: a file appears whole or not at all (write a temporary, then rename).
"""

import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from adapter import SATAdapter, attach, base_shape
from model import CheckpointError, Llama, ModelArgs

ADAPTER_CONFIG, ADAPTER_TENSORS = "adapter.json", "adapter.safetensors"


def hf_name(name: str) -> str:
    return name if name.startswith("lm_head.") else "model." + name


def stored_tensors(model: Llama) -> dict[str, torch.Tensor]:
    """What a checkpoint holds, by Hugging Face name: every parameter of the base (a head
    tied to the embedding once) and every buffer (quantize.py's int8 weights and scales)."""
    named = list(model.named_parameters()) + list(model.named_buffers())  # tied: listed once
    return {hf_name(n): t for n, t in named if not n.startswith("adapter.")}  # adapter.py saves those


def read_config(path: str) -> ModelArgs:
    """The model's shape from config.json; for an adapter directory, its base's, with the
    adapter's SAT id and k."""
    if os.path.isfile(path):
        raise CheckpointError(f"{path} is a file: give the model's directory (config.json, *.safetensors)")
    if not os.path.isdir(path):
        raise CheckpointError(f"model directory {path} does not exist")
    if is_adapter_dir(path):
        adapter = read_adapter_config(path)
        base = base_dir_of(path, adapter)
        args = read_config(base)
        check_base(adapter, args, path, base)
        args.sat_token_id, args.sat_k = adapter["sat_token_id"], adapter.get("sat_k")
        return args
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{path} has no config.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from None
    return ModelArgs.from_config(cfg, cfg_path)


def safetensors_files(path: str) -> dict[str, str]:
    """Map tensor name -> file that holds it, from the index or the single file."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        return {name: os.path.join(path, file) for name, file in weight_map.items()}
    if os.path.isfile(single):
        with _open_safetensors(single) as f:
            return {name: single for name in f.keys()}
    raise CheckpointError(f"{path} has neither model.safetensors nor model.safetensors.index.json")


def _open_safetensors(file: str):
    if not os.path.isfile(file):
        raise CheckpointError(f"shard {file} is missing")
    try:
        return safe_open(file, framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not a readable safetensors file ({e})") from None


def base_dir_of(path: str, adapter: dict) -> str:
    base = adapter["base_dir"]
    if not os.path.isdir(base):
        raise CheckpointError(f"adapter {path} names its base model {adapter['base']}, but {base} does not exist "
                              "(bash get_smollm2.sh builds SmolLM2's; or edit \"base\" in its adapter.json)")
    return base


def model_files_dir(path: str) -> str:
    """Where a model directory's tokenizer and weights are: itself, or an adapter's base."""
    return base_dir_of(path, read_adapter_config(path)) if is_adapter_dir(path) else path


def load_model(path: str, device="cpu", dtype: torch.dtype = torch.float32) -> Llama:
    """Load a Hugging Face layout checkpoint, strictly, without pickle; or an adapter
    directory: its base, with the adapter attached.

    The model is built on the meta device (no memory), then materialised once on `device`
    in `dtype`; tensors are read one at a time from memory-mapped safetensors files and
    converted on the way, so the host never holds two copies of the model.
    """
    if is_adapter_dir(path):
        base = base_dir_of(path, read_adapter_config(path))
        model = load_model(base, device, dtype)
        load_adapter(model, path, base)
        return model
    args = read_config(path)
    with torch.device("meta"):
        model = Llama(args)
        if args.extra.get("quantization"):  # written by quantize.py: int8 linear layers
            from quantize import int8_shells
            int8_shells(model)
    expected = {n: tuple(t.shape) for n, t in stored_tensors(model).items()}
    where = safetensors_files(path)
    shapes = {}
    for file in sorted(set(where.values())):
        with _open_safetensors(file) as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    problems = []
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [f"{n} {list(shapes[n])} (expected {list(expected[n])})"
             for n in sorted(set(expected) & set(shapes)) if shapes[n] != expected[n]]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{path} does not match its config.json: " + "; ".join(problems))

    model = model.to_empty(device=device).to(dtype)  # one uninitialised copy, right dtype (int8 stays int8)
    if args.tie_word_embeddings and isinstance(model.lm_head, torch.nn.Linear):
        model.lm_head.weight = model.embed_tokens.weight  # to_empty keeps ties; be explicit
    params = stored_tensors(model)
    with torch.no_grad():
        for name, file in sorted(where.items()):
            # Opening the file per tensor unmaps the pages read so far: the process holds
            # the model plus one tensor, not the model plus every page of the file.
            with _open_safetensors(file) as f:
                params[name].copy_(f.get_tensor(name))  # converts dtype and device
    return model.eval()


def save_model(model: Llama, path: str, dtype: torch.dtype | None = None):
    """Write config.json and model.safetensors (Hugging Face layout), atomically each."""
    os.makedirs(path, exist_ok=True)
    tensors = {n: t.detach().to("cpu", dtype if dtype and t.is_floating_point() else t.dtype).contiguous()
               for n, t in stored_tensors(model).items()}
    atomic_write(os.path.join(path, "model.safetensors"),
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config = model.args.to_config()
    if dtype is not None:  # transformers 5 reads "dtype", older versions "torch_dtype"
        config["dtype"] = config["torch_dtype"] = str(dtype).removeprefix("torch.")
    write_json(os.path.join(path, "config.json"), config)


def atomic_write(final_path: str, write):
    """Call write(tmp_path), then rename onto final_path: readers never see half a file."""
    tmp = final_path + ".tmp"
    write(tmp)
    os.replace(tmp, final_path)


def write_text(path: str, text: str):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def write_json(path: str, obj):
    write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


# ----------------------------------------------------------------------------- adapters


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG)) and not os.path.isfile(os.path.join(path, "config.json"))


def read_adapter_config(path: str) -> dict:
    """adapter.json, with "base" resolved to a path (relative ones are relative to `path`)."""
    try:
        with open(os.path.join(path, ADAPTER_CONFIG)) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{os.path.join(path, ADAPTER_CONFIG)} cannot be read: {e}") from None
    for key in ("base", "base_shape", "rank", "sat_token_id"):
        if key not in cfg:
            raise CheckpointError(f"{os.path.join(path, ADAPTER_CONFIG)} has no {key}")
    cfg["base_dir"] = os.path.normpath(os.path.join(path, cfg["base"]))
    return cfg


def check_base(cfg: dict, args: ModelArgs, adapter_dir: str, base_dir: str):
    """One line naming the first difference between the adapter's base and this one."""
    for key, want in cfg["base_shape"].items():
        have = getattr(args, key, None)
        if have != want:
            raise CheckpointError(f"adapter {adapter_dir} was trained on a base with {key} {want}, but {base_dir} "
                                  f"has {have}: it belongs to another model")


def save_adapter(model: Llama, path: str, base_dir: str, dtype: torch.dtype = torch.bfloat16,
                 report: dict | None = None):
    """Write the model's adapter as a directory (atomically, file by file) that names base_dir."""
    adapter = model.adapter
    os.makedirs(path, exist_ok=True)
    tensors = {n: p.detach().to("cpu", dtype).contiguous() for n, p in adapter.named_parameters()}
    atomic_write(os.path.join(path, ADAPTER_TENSORS), lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    base = base_dir if os.path.isabs(base_dir) else os.path.relpath(base_dir, path)
    write_json(os.path.join(path, ADAPTER_CONFIG), {
        "base": base, "base_shape": base_shape(model.args), "rank": adapter.rank,
        "sat_token_id": adapter.sat_id, "sat_k": adapter.sat_k, "dtype": str(dtype).removeprefix("torch.")})
    if report is not None:
        write_json(os.path.join(path, "training.json"), report)


def load_adapter(model: Llama, path: str, base_dir: str = "the base", dtype: torch.dtype | None = None):
    """Read an adapter directory, check it fits `model`, attach it; returns it."""
    cfg = read_adapter_config(path)
    check_base(cfg, model.args, path, base_dir)
    adapter = SATAdapter(model.args, cfg["rank"], cfg["sat_token_id"], cfg.get("sat_k"))
    try:
        tensors = load_file(os.path.join(path, ADAPTER_TENSORS))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{os.path.join(path, ADAPTER_TENSORS)} cannot be read: {e}") from None
    expected = {n: tuple(p.shape) for n, p in adapter.named_parameters()}
    got = {n: tuple(t.shape) for n, t in tensors.items()}
    if got != expected:
        wrong = sorted(set(got.items()) ^ set(expected.items()))[:3]
        raise CheckpointError(f"{path}: {ADAPTER_TENSORS} does not match its {ADAPTER_CONFIG} (first differences: {wrong})")
    with torch.no_grad():
        for n, p in adapter.named_parameters():
            p.copy_(tensors[n])
    attach(model, adapter, dtype)
    return adapter
