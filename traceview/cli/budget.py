"""``traceview budget``: the analytical prefill/decode budget from the command line.

Thin by design: parse options, call ``traceview.budget``, print a rich table or JSON.  Errors
the user can fix print ``traceview: error: <what>`` on stderr and exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import click

from traceview.budget import (
    DecodeBudget,
    GPUSpec,
    ModelConfig,
    PrefillBudget,
    compute_decode,
    compute_prefill,
    get_gpu,
    list_models,
    load_gpus,
    load_model,
)
from traceview.budget.ops import CONVENTIONS, DEFAULT_CONVENTION
from traceview.errors import TraceError, UsageError

__all__ = ["budget"]


def _fail(msg: str) -> NoReturn:
    click.echo(f"traceview: error: {msg}", err=True)
    sys.exit(2)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"{what} must be comma-separated integers (got {text!r})")
    if not values or any(v <= 0 for v in values):
        _fail(f"{what} must be positive integers (got {text!r})")
    return values


def _parse_tp(text: str | None, default: int | None) -> int | None:
    if text is None:
        return default
    if text.strip().lower() == "auto":
        return None
    try:
        tp = int(text)
    except ValueError:
        _fail(f"--tp must be a positive integer or 'auto' (got {text!r})")
    if tp <= 0:
        _fail(f"--tp must be positive (got {tp})")
    return tp


@click.command("budget")
@click.option("--model", "model_name", default="deepseek-v3", show_default=True, metavar="NAME|PATH",
              help="Shipped model (deepseek-v3, qwen2-7b, ...) or a Hugging Face config.json / .toml path.")
@click.option("--gpu", "gpu_names", default="H800", show_default=True, metavar="NAME[,NAME...]",
              help="GPU name(s), case-insensitive, comma-separated for side-by-side columns.")
@click.option("--phase", type=click.Choice(["prefill", "decode"]), default="prefill", show_default=True)
@click.option("--convention", type=click.Choice(list(CONVENTIONS)), default=DEFAULT_CONVENTION, show_default=True,
              help="complete: every op at max(FLOPs, HBM bytes of weights, KV cache and activations); "
                   "zartbot-2025: the article's FLOP-only model, reproducing its tables.")
@click.option("--experts-per-gpu", type=float, default=2, show_default=True,
              help="Decode, complete convention: routed experts each GPU holds (their weights are read when hit).")
@click.option("--seq-len", type=int, default=4383, show_default=True,
              help="Prefill: tokens per DP group (q_len = kv_len). Decode: KV length per sequence.")
@click.option("--kv-cache-rate", type=float, default=0.563, show_default=True,
              help="Prefill: fraction of the KV down-projection skipped thanks to the prefix cache.")
@click.option("--tp", "tp_text", default=None, metavar="N|auto",
              help="Attention tensor parallelism. Prefill default 4; decode default auto (TP1 unless TP4 is faster).")
@click.option("--dp", type=int, default=8, show_default=True, help="Prefill: data-parallel attention groups (EP = tp x dp).")
@click.option("--batch", "batch_text", default="32,64,128,256", show_default=True, metavar="N[,N...]",
              help="Decode: per-GPU batch size(s).")
@click.option("--nodes", type=float, default=None, help="Prefill: nodes for per-node throughput [default: tp*dp/gpus-per-node].")
@click.option("--dispatch-nodes", type=int, default=None,
              help="Prefill: nodes one token's experts span [default: min(topk_group, nodes)].")
@click.option("--gpus-per-node", type=int, default=8, show_default=True)
@click.option("--comm-sm", type=int, default=None,
              help="SMs reserved for communication [default: the GPU's prefill value; 0 in decode].")
@click.option("--scaleout-gbps", type=float, default=None, help="Override scale-out GB/s per GPU (e.g. 25 for 1.6T NICs).")
@click.option("--nvlink-gbps", type=float, default=None, help="Override NVLink GB/s per GPU (one direction).")
@click.option("--discount", type=float, default=None, help="Override the fraction of peak reached (zartbot's analysis: 0.85).")
@click.option("--gemm-precision", type=click.Choice(["fp8", "bf16"]), default="fp8", show_default=True,
              help="Precision of projection / MLP / expert GEMMs.")
@click.option("--expert-efficiency", type=float, default=None,
              help="Extra efficiency of expert GEMMs [default: 1.0 prefill, 0.7 decode].")
@click.option("--standard-mla", is_flag=True, help="Decode: model MLA without matrix absorption.")
@click.option("--gpu-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML file overriding or adding GPUs (format of traceview/budget/data/gpus.toml).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--list", "list_only", is_flag=True, help="List the known models and GPUs and exit.")
def budget(
    model_name: str,
    gpu_names: str,
    phase: str,
    convention: str,
    experts_per_gpu: float,
    seq_len: int,
    kv_cache_rate: float,
    tp_text: str | None,
    dp: int,
    batch_text: str,
    nodes: float | None,
    dispatch_nodes: int | None,
    gpus_per_node: int,
    comm_sm: int | None,
    scaleout_gbps: float | None,
    nvlink_gbps: float | None,
    discount: float | None,
    gemm_precision: str,
    expert_efficiency: float | None,
    standard_mla: bool,
    gpu_file: Path | None,
    fmt: str,
    list_only: bool,
) -> None:
    """Modeled per-layer times, step totals and throughput of LLM inference (DeepSeek-V3/R1 model
    of zartbot, "DeepSeek-V3/R1 推理效率分析" (2025-03), complete by default: FLOPs and HBM bytes per op).

    \b
    traceview budget --gpu H800,H20 --phase prefill --seq-len 4383 --kv-cache-rate 0.563 --tp 4 --dp 8
    traceview budget --gpu H20-3e --phase decode --batch 32,64 --seq-len 4383 --tp 8
    traceview budget --model path/to/config.json --gpu H200 --format json
    """
    try:
        if list_only:
            _print_list(gpu_file, fmt)
            return
        model = load_model(model_name)
        overrides = {k: v for k, v in (("scaleout_gbps", scaleout_gbps), ("nvlink_gbps", nvlink_gbps),
                                       ("discount", discount)) if v is not None}
        gpus = [get_gpu(n.strip(), gpu_file).replace(**overrides) for n in gpu_names.split(",") if n.strip()]
        if not gpus:
            _fail("--gpu needs at least one GPU name")
        if phase == "prefill":
            tp = _parse_tp(tp_text, 4)
            if tp is None:
                _fail("--tp auto applies to decode only; give a number for prefill")
            results: Sequence[PrefillBudget | DecodeBudget] = [
                compute_prefill(
                    model, g, seq_len=seq_len, kv_cache_rate=kv_cache_rate, tp=tp, dp=dp,
                    gpus_per_node=gpus_per_node, num_nodes=nodes, dispatch_nodes=dispatch_nodes,
                    comm_sm=comm_sm, gemm_precision=gemm_precision,
                    expert_efficiency=1.0 if expert_efficiency is None else expert_efficiency,
                    convention=convention,
                )
                for g in gpus
            ]
        else:
            tp = _parse_tp(tp_text, None)
            batches = _int_list(batch_text, "--batch")
            kw: dict[str, Any] = {}
            if expert_efficiency is not None:
                kw["expert_efficiency"] = expert_efficiency
            results = [
                compute_decode(
                    model, g, batch=b, kv_len=seq_len, tp=tp, comm_sm=comm_sm or 0,
                    absorbed=not standard_mla, gemm_precision=gemm_precision, convention=convention,
                    experts_per_gpu=experts_per_gpu, **kw,
                )
                for g in gpus
                for b in batches
            ]
    except (UsageError, TraceError) as exc:
        _fail(str(exc))

    if fmt == "json":
        doc = {
            "phase": phase,
            "convention": convention,
            "model": model.to_dict(),
            "gpus": [g.to_dict() for g in gpus],
            "results": [r.to_dict() for r in results],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_table(model, gpus, phase, results)


# --- rendering ----------------------------------------------------------------------------


def _ms(v: float) -> str:
    return f"{v:.3f}"


def _rows(model: ModelConfig, phase: str, results: Sequence[Any]) -> list[tuple[str, str, list[str]]]:
    attn = "MLA" if model.is_mla else "Attn"
    nd, nm = str(model.n_dense_layers), str(model.n_moe_layers)
    if phase == "prefill":
        tp = results[0].tp
        spec: list[tuple[str, str, Callable[[Any], str]]] = [
            (f"{attn} TP1", nd, lambda r: _ms(r.attn_tp1_ms)),
            ("DenseMLP", nd, lambda r: _ms(r.dense_mlp_ms)),
        ]
        if model.is_moe:
            spec[1:1] = [(f"{attn} TP{tp}", nm, lambda r: _ms(r.attn_tp_ms))]
            spec += [
                ("Shared", nm, lambda r: _ms(r.shared_expert_ms)),
                ("Routed", nm, lambda r: _ms(r.routed_experts_ms)),
                ("Dispatch", nm, lambda r: _ms(r.dispatch_ms)),
                ("Combine", nm, lambda r: _ms(r.combine_ms)),
            ]
        spec += [
            ("Sum(Overlap) ms", "", lambda r: _ms(r.sum_overlap_ms)),
            ("Sum ms", "", lambda r: _ms(r.sum_ms)),
            ("TPS(Overlap) /node", "", lambda r: f"{r.tps_overlap:.1f}"),
            ("TPS /node", "", lambda r: f"{r.tps:.1f}"),
        ]
    else:
        spec = [
            ("BatchSize", "", lambda r: str(r.batch)),
            (f"{attn} TP1", "", lambda r: _ms(r.attn_tp1_ms)),
            (f"{attn} TP(chosen)", "", lambda r: _ms(r.attn_tp_ms)),
            ("LoadKV_FP8", "", lambda r: _ms(r.kv_load_ms)),
            (f"Dense{attn}", nd, lambda r: _ms(r.dense_mla_ms)),
            ("DenseMLP", nd, lambda r: _ms(r.dense_mlp_ms)),
        ]
        if model.is_moe:
            spec += [
                (f"Sparse{attn}", nm, lambda r: _ms(r.sparse_mla_ms)),
                ("SharedExpert", nm, lambda r: _ms(r.shared_expert_ms)),
                ("RoutedExpert", nm, lambda r: _ms(r.routed_experts_ms)),
                ("Dispatch", nm, lambda r: _ms(r.dispatch_ms)),
                ("Combine", nm, lambda r: _ms(r.combine_ms)),
            ]
        spec += [
            ("TPOT(Overlap) ms", "", lambda r: _ms(r.tpot_overlap_ms)),
            ("TPOT ms", "", lambda r: _ms(r.tpot_ms)),
            ("TPS(Overlap) /seq", "", lambda r: _ms(r.tps_overlap)),
            ("TPS /seq", "", lambda r: _ms(r.tps)),
            ("Total(Overlap) /GPU", "", lambda r: _ms(r.total_tps_overlap)),
            ("Total /GPU", "", lambda r: _ms(r.total_tps)),
        ]
        if model.is_moe:
            spec.append(("TimeBudget ms", "", lambda r: _ms(r.time_budget_ms)))
    return [(label, layers, [fn(r) for r in results]) for label, layers, fn in spec]


def _print_table(model: ModelConfig, gpus: list[GPUSpec], phase: str, results: Sequence[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    if phase == "prefill":
        r0 = results[0]
        title = (f"{model.name} prefill: seq_len {r0.seq_len}, KV hit {r0.kv_cache_rate:g}, TP{r0.tp} x DP{r0.dp}, "
                 f"{r0.num_nodes:g} node(s)" + (f", dispatch over {r0.dispatch_nodes} node(s)" if model.is_moe else ""))
        headers = [f"{r.gpu} (comm_sm {r.comm_sm})" for r in results]
    else:
        title = f"{model.name} decode: kv_len {results[0].kv_len}, per-GPU batch"
        headers = [f"{r.gpu}(TP{r.tp})" for r in results]
    table = Table()
    table.add_column("ms / layer" if phase == "prefill" else "per layer / step", no_wrap=True)
    table.add_column("Layers", justify="right", no_wrap=True)
    for h in headers:
        table.add_column(h, justify="right", no_wrap=True)
    for label, layers, cells in _rows(model, phase, results):
        table.add_row(label, layers, *cells)
    width = max(100, 26 + 8 + sum(max(len(h), 10) + 3 for h in headers))
    console = Console(width=width if not sys.stdout.isatty() else None, highlight=False)
    console.print(title + f" ({results[0].convention} convention)", soft_wrap=True)
    console.print(table)
    if phase == "decode" and results[0].convention == "zartbot-2025":  # the article's model: what it leaves out
        console.print("note: as in zartbot's analysis, decode counts FLOPs and the KV-cache read, not reading the weights "
                      "from HBM; at small batches that read bounds a step (the default convention, complete, counts it).",
                      soft_wrap=True)


def _print_list(gpu_file: Path | None, fmt: str) -> None:
    models = list_models()
    gpus = load_gpus(gpu_file)
    if fmt == "json":
        click.echo(json.dumps({"models": models, "gpus": {n: g.to_dict() for n, g in gpus.items()}}, indent=2))
        return
    click.echo("models:")
    for name, desc in models.items():
        click.echo(f"  {name:<18} {desc}")
    click.echo("gpus:")
    for name, g in gpus.items():
        fp8 = f"{g.fp8_tflops:g}" if g.fp8_tflops is not None else "-"
        click.echo(f"  {name:<10} sm {g.sm:>3}  bf16 {g.bf16_tflops:>6g}  fp8 {fp8:>6}  HBM {g.hbm_gb:g} GB "
                   f"{g.hbm_gbps:g} GB/s  NVLink {g.nvlink_gbps:g}  scale-out {g.scaleout_gbps:g}")
