"""Writing down what bench.py measured: markdown tables, plots, and the environment line
that says where every number comes from (device, CPU and its bf16 instructions, threads,
torch, commit, time)."""

import os
import platform
import subprocess
import sys
import time

import torch

from machine import cpu_info


def markdown(results: dict) -> str:
    lines = []
    for dtype, res in results.items():
        for set_name, rows in res["sets"].items():
            lines += [f"\n**{set_name}, {dtype}** (repeated 4-grams in AR output: "
                      f"{rows['_repeated_4gram_fraction_ar']:.1%})\n",
                      "| method | tok/s | speedup | acc/it | acc/it (less repetitive half) | tok/fwd | ceiling | fed/fwd | exact | prefill ms |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for name, r in rows.items():
                if name.startswith("_"):
                    continue
                f = lambda v, fmt: "-" if v is None else format(v, fmt)
                lines.append(f"| {name} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f}x | "
                             f"{f(r['accepted_per_iter'], '.2f')} | {f(r['accepted_per_iter_less_repetitive_half'], '.2f')} | "
                             f"{f(r['tokens_per_forward'], '.2f')} | {f(r['ceiling'], '.1f')} | {f(r['tokens_fed_per_forward'], 'd')} | "
                             f"{'-' if r['exact_match'] is None else str(r['exact_match']) + '/' + str(r['prompts'])} | "
                             f"{1000 * r['prefill_s_mean']:.1f} |")
            compiled_ar = rows.get("ar (compiled)")
            if compiled_ar:  # the honest baseline for compiled SDSAT
                lines += ["\nCompiled rows against ar (compiled): " + ", ".join(
                    f"{name} {r['tokens_per_s'] / compiled_ar['tokens_per_s']:.2f}x" for name, r in rows.items()
                    if name.endswith("(compiled)") and name != "ar (compiled)")]
        if res.get("compile"):
            lines += ["\nCompiling, once before timing and kept out of tok/s: " + ", ".join(
                f"{name} {c['seconds']:.1f} s ({c['graphs']} new graph{'s' if c['graphs'] != 1 else ''})"
                for name, c in res["compile"].items())]
        lines += ["", latency_table(res, dtype, 128), break_even_table(res, dtype)]
        lines += [f"Autoregressive loop overhead outside the forward pass: {1e6 * res['ar_loop_overhead_s']:.0f} us/token "
                  f"({res['ar_loop_overhead_s'] / res['forward_latency_s'][1]:.1%} of a 1-token forward)"]
    return "\n".join(lines)


def plot(results: dict, path: str):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plots)", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for dtype, res in results.items():
        for set_name, rows in res["sets"].items():
            chain = sorted((r["k"], r) for n, r in rows.items() if not n.startswith("_")
                           and r["kind"] == "chain" and r["temperature"] == 0 and not r.get("compiled"))
            if not chain:
                continue
            ks = [k for k, _ in chain]
            axes[0].plot(ks, [r["speedup"] for _, r in chain], "o-", label=f"{set_name} {dtype}")
            axes[1].plot(ks, [r["accepted_per_iter"] for _, r in chain], "o-", label=f"{set_name} {dtype}")
    axes[0].axhline(1, color="gray", lw=0.5)
    axes[0].set(xlabel="k (SATs)", ylabel="speedup over autoregressive", title="greedy SDSAT speedup")
    axes[1].set(xlabel="k (SATs)", ylabel="accepted drafts / iteration", title="acceptance")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}", file=sys.stderr)


def break_even(res: dict) -> list[dict]:
    """The cost curve that decides (per prompt set, greedy eager rows of a speculative
    method): a method breaks even where its tokens per forward equal what a forward of
    its width costs in 1-token forwards, T(fed) / T(1); its predicted speedup is tokens per
    forward / that ratio, beside the speedup it measured. (The draft tree feeds its shape's
    size at most, so its prediction is a lower bound.) Where every pass carries SATs
    (fused, a draft tree with SAT groups) and the run timed such passes (sat_latency_s),
    T(fed) is theirs: the adapter's changes are part of the cost. The two-pass loops
    (sdsat, its token tree) are costed as plain passes, which flatters them."""
    from decode_tree import pass_cost
    lat = {int(T): t for T, t in res["forward_latency_s"].items()}
    sat_lat = {int(T): t for T, t in (res.get("sat_latency_s") or {}).items()}
    out = []
    for set_name, rows in res["sets"].items():
        for name, r in rows.items():
            if name.startswith("_") or r["kind"] in ("ar", "hf") or r["temperature"] != 0 or r.get("compiled"):
                continue
            fed = r["tokens_fed_per_forward"]
            every_pass_sats = r["kind"] == "fused" or (r["kind"] == "draft_tree" and "no SATs" not in (r.get("shape") or ""))
            ratio = pass_cost(sat_lat if every_pass_sats and sat_lat else lat, fed) / lat[1]
            out.append({"set": set_name, "method": name, "fed": fed, "cost_ratio": ratio,
                        "tokens_per_forward": r["tokens_per_forward"],
                        "predicted": r["tokens_per_forward"] / ratio, "measured": r["speedup"]})
    return out


def break_even_table(res: dict, dtype: str) -> str:
    rows = break_even(res)
    lines = [f"\n**the cost curve that decides, {dtype}**: a method pays where its tokens per forward exceed "
             "T(fed) / T(1)\n", "| prompts | method | tokens fed | T(fed) / T(1) = break-even tok/fwd | tok/fwd | "
             "predicted speedup | measured |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['set']} | {r['method']} | {r['fed']} | {r['cost_ratio']:.2f} | {r['tokens_per_forward']:.2f} | "
              f"{r['predicted']:.2f}x | {r['measured']:.2f}x |" for r in rows]
    return "\n".join(lines)


def plot_cost_curve(results: dict, path: str):
    """Per dtype: the measured cost of a forward against the tokens it feeds, in 1-token
    forwards (the tokens per forward a method of that width needs to break even), and each
    speculative method's measured tokens per forward at its width: above the curve it pays."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (dtype, res) in zip(axes[0], results.items()):
        lat = sorted((int(T), t) for T, t in res["forward_latency_s"].items())
        ax.plot([T for T, _ in lat], [t / lat[0][1] for _, t in lat], "k-", label="break-even: T(fed) / T(1)")
        for set_name, marker in (("heldout", "o"), ("humaneval", "s")):
            for r in (r for r in break_even(res) if r["set"] == set_name):
                ax.plot(r["fed"], r["tokens_per_forward"], marker, label=f"{r['method']} ({set_name}) "
                        f"{r['measured']:.2f}x")
        ax.set(xscale="log", xlabel="tokens fed per forward", ylabel="tokens per forward (or cost in 1-token forwards)",
               title=f"{dtype}: above the line a method pays")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}", file=sys.stderr)


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name and its bf16 instructions (machine.cpu_info): a CPU's bf16
    numbers mean little without them."""
    info = cpu_info(cpuinfo)
    if info is None:
        return platform.processor() or platform.machine()
    name, bf16 = info
    return f"{name}; bf16 instructions: {', '.join(bf16) if bf16 else 'none'}"


def environment(device: torch.device) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here).stdout.strip()
        if commit and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                     text=True, cwd=here).stdout.strip():
            commit += " (with uncommitted changes)"
    except OSError:
        commit = ""
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"cpu ({cpu_description()}; {torch.get_num_threads()} threads)",
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit or "unknown",
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def environment_line(env: dict) -> str:
    """The first line of bench.md and latency.md: where the numbers come from."""
    commit = env["commit"][:12] + (" with uncommitted changes" if "uncommitted" in env["commit"] else "")
    return f"_{env['device']}, torch {env['torch']}, commit {commit}, {env['time']}_\n"


def latency_table(res: dict, dtype: str, prefix: int, parameters: int | None = None) -> str:
    """Forward latency against tokens fed (the weights pre-packed where they can be:
    packing.pack_weights), each as a multiple of the 1-token forward and of its floor
    (bench_latency.py); beside it, where timed: the weights as loaded, compiled, int8."""
    lat = {int(T): t for T, t in res["forward_latency_s"].items()}  # JSON keys are strings
    extra = {name: {int(T): t for T, t in res[key].items()} for name, key in
             (("unpacked", "unpacked_latency_s"), ("compiled", "compiled_latency_s"), ("int8", "int8_latency_s"))
             if res.get(key)}
    floor = res.get("floor")
    head = f"**forward latency, {dtype}" + (f", {parameters / 1e6:.0f}M parameters" if parameters else "")
    lines = [head + f"** (cache of {prefix} tokens)"]
    if floor:
        lines[0] += (f"; floor = max(bytes / {floor['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, "
                     f"FLOPs / {floor['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s), both measured in this run")
    cols = ["tokens fed", "ms", "x T(1)"] + (["floor ms", "x floor", "bound"] if floor else [])
    for name in extra:
        cols += [f"{name} ms", f"x {name} T(1)"] + ([f"{name} x floor"] if floor else [])
    lines += ["", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for T, t in sorted(lat.items()):
        cells = [str(T), f"{1000 * t:.1f}", f"{t / lat[1]:.2f}"]
        w = floor["widths"].get(T) or floor["widths"].get(str(T)) if floor else None
        if floor:
            cells += [f"{1000 * w['floor_s']:.1f}", f"{t / w['floor_s']:.2f}", w["bound"]]
        for name, curve in extra.items():
            f = (res.get("int8_floor") if name == "int8" else None) or floor
            fw = f["widths"].get(T) or f["widths"].get(str(T)) if f else None
            cells += [f"{1000 * curve[T]:.1f}", f"{curve[T] / curve[1]:.2f}"] + ([f"{curve[T] / fw['floor_s']:.2f}"] if f else [])
        lines.append("| " + " | ".join(cells) + " |")
    if res.get("int8_floor"):
        lines += ["", "int8's floor reads a byte a weight (its own column of multiples)."]
    if res.get("compile_s"):
        lines += ["", "Compiling, per width: " + ", ".join(f"{T} tokens {s:.1f} s" for T, s in res["compile_s"].items())]
    if res.get("draft_pass_s"):
        d = res["draft_pass_s"]
        lines += ["", f"A draft pass [cur, 5 SATs] with the adapter: {1000 * d['sat_rows_only']:.1f} ms with its changes "
                      f"computed for the SAT rows alone, {1000 * d['every_row_masked']:.1f} ms computed for every row "
                      f"and masked (before); 6 real tokens {1000 * d['real']:.1f} ms."]
    return "\n".join(lines)


def latency_markdown(record: dict) -> str:
    """The tables of a --latency-only record: every size timed, then the projection."""
    lines = []
    for dtype, res in record["results"].items():
        lines += ["", latency_table(res, dtype, record["prefix"], res["parameters"])]
        if "projection" in res:
            source = record["projected_from"]
            lines += [f"\n**projection, {dtype}**: tokens per forward from {source['path']} "
                      f"(model {source['model']}) x T(1) / T(tokens fed)\n",
                      "| prompts | measured with | method | tok/fwd | tokens fed | T(fed)/T(1) | projected speedup |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {p['set']} | {p['dtype']} | {p['method']} | {p['tokens_per_forward']:.2f} | {p['tokens_fed']} | "
                      f"{p['cost_ratio']:.2f} | {p['projected_speedup']:.2f}x |" for p in res["projection"]]
    return "\n".join(lines)


def plot_learning_curve(jsonl: str, path: str):
    """Accepted drafts per iteration against minutes of training, one line per named run
    and prompt set, from the rows of `bench.py --acceptance --label RUN` (and any others
    with "run" and "minutes"). Returns the figure (None without matplotlib or rows)."""
    import json
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)", file=sys.stderr)
        return
    with open(jsonl) as f:
        rows = [r for r in map(json.loads, filter(str.strip, f)) if "run" in r and "minutes" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 7), layout="constrained")
    for run in dict.fromkeys(r["run"] for r in rows):
        points = sorted((r for r in rows if r["run"] == run), key=lambda r: r["minutes"])
        for prompts, style in (("heldout", "o-"), ("humaneval", "s--")):
            ax.plot([r["minutes"] for r in points], [r[prompts] for r in points], style, label=f"{run}, {prompts}")
    ax.set(xlabel="minutes of training (this CPU)", ylabel="accepted drafts / iteration (k = 5)",
           title="SAT training: greedy two-step acceptance, float32")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=7)  # below the axes: it hides no point
    fig.savefig(path, dpi=120)
    print(f"plot: {path}", file=sys.stderr)
    return fig


def progress(text: str):
    """One status line on stderr (a slow model takes minutes a prompt): rewritten in place on
    a terminal, one line each in a log file."""
    if sys.stderr.isatty():
        print(f"\r  {text:<60}", end="" if text else "\r", file=sys.stderr, flush=True)
    elif text:
        print(f"  {text}", file=sys.stderr, flush=True)
