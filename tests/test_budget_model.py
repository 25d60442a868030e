"""The analytical budget against the literal numbers of docs/budget-model.md and seeds/001.

Every value is compared as printed (same number of decimals), so a change in any formula, unit
convention or GPU constant shows up as a failing cell.  These are the tables of zartbot,
"DeepSeek-V3/R1 推理效率分析" (2025-03): every model call here asks for its convention by name
(``zartbot-2025``); the default ``complete`` convention is tested in tests/test_budget_complete.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import functools

from traceview import budget as B
from traceview.budget import (
    GPUSpec,
    ModelConfig,
    OpCost,
    get_gpu,
    list_models,
    load_gpus,
    load_model,
    max_decode_batch,
    mla_absorbed_flops,
    mla_flops,
    total_ms,
)
from traceview.budget.flops import dense_mlp_flops, expert_flops, mla_params, expert_params
from traceview.cli.budget import budget
from traceview.errors import TraceError, UsageError


def _article(fn):
    """``fn`` under the article's convention unless a call names another."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        return fn(*args, **{"convention": "zartbot-2025", **kwargs})
    return call


attention_costs, compute_decode, compute_prefill, dense_mlp_cost, expert_cost, alltoall_cost, kv_load_cost = map(
    _article, (B.attention_costs, B.compute_decode, B.compute_prefill, B.dense_mlp_cost, B.expert_cost,
               B.alltoall_cost, B.kv_load_cost))
op_costs = _article(B.op_costs)
ARTICLE = ["--convention", "zartbot-2025"]


def p(value: float, decimals: int) -> str:
    """A value as the reference prints it."""
    return f"{value:.{decimals}f}"


@pytest.fixture(scope="module")
def v3() -> ModelConfig:
    return load_model("deepseek-v3")


# --- reference tables (docs/budget-model.md) ------------------------------------------------
# prefill, TP4 DP8, 4 nodes: MLA TP1, MLA TP4, DenseMLP, Shared, Routed, Dispatch, Combine,
# Sum(Overlap), Sum, TPS(Overlap), TPS
PREFILL_TP4 = {
    "H800": ("5.265", "1.669", "3.156", "0.088", "0.701", "0.529", "1.057", "167.802", "259.803", "52240.1", "33741.0"),
    "H20": ("33.035", "8.435", "19.801", "0.550", "4.400", "0.529", "1.057", "934.839", "1026.840", "9377.0", "8536.9"),
}
# seeds/001 section 2, TP8 DP4 (same columns)
PREFILL_TP8 = {
    "H800": ("5.265", "1.011", "3.156", "0.044", "0.351", "0.264", "0.529", "106.754", "152.754", "41057.0", "28693.1"),
    "H20": ("33.035", "4.306", "19.801", "0.275", "2.200", "0.264", "0.529", "551.784", "597.784", "7943.3", "7332.1"),
}

# decode: (gpu, tp, bs) -> TPOT(Overlap), TPOT, TimeBudget
DECODE = [
    ("H800", 1, 32, "9.858", "17.023", "0.015"),
    ("H800", 1, 64, "19.716", "34.045", "0.029"),
    ("H800", 1, 128, "39.431", "68.090", "0.058"),
    ("H20", 4, 32, "35.367", "42.532", "0.281"),
    ("H20-3e", 8, 32, "29.613", "36.778", "0.182"),
    ("H20-3e", 8, 64, "49.005", "63.334", "0.188"),
]

# seeds/001 section 3.6, the full decode table: label, bs, DenseMLA, DenseMLP, SparseMLA, Combine,
# SharedExpert, RoutedExpert, Dispatch, TPOT(Overlap), TPOT, TPS_O, TPS, Total_O, Total
DECODE_FULL = [
    ("H800(TP1)", 32, "0.135 0.019 0.135 0.082 0.003 0.024 0.041 9.858 17.023 101.442 58.746 3246.137 1879.856"),
    ("H800(TP1)", 64, "0.270 0.038 0.270 0.165 0.006 0.048 0.082 19.716 34.045 50.721 29.373 3246.137 1879.856"),
    ("H800(TP1)", 128, "0.540 0.075 0.540 0.329 0.012 0.096 0.165 39.431 68.090 25.360 14.686 3246.137 1879.856"),
    ("H800(TP4)", 256, "1.081 0.151 0.781 0.659 0.024 0.191 0.329 61.497 118.815 16.261 8.416 4162.779 2154.610"),
    ("H20(TP4)", 32, "0.753 0.126 0.384 0.082 0.020 0.160 0.041 35.367 42.532 28.275 23.512 904.803 752.383"),
    ("H20(TP4)", 64, "1.506 0.252 0.592 0.165 0.040 0.320 0.082 60.511 74.841 16.526 13.362 1057.653 855.149"),
    ("H20(TP4)", 128, "3.011 0.504 1.008 0.329 0.080 0.640 0.165 110.800 139.459 9.025 7.171 1155.230 917.831"),
    ("H20(TP4)", 256, "6.023 1.008 1.840 0.659 0.160 1.280 0.329 211.379 268.696 4.731 3.722 1211.098 952.749"),
    ("H20-3e(TP8)", 32, "0.745 0.126 0.285 0.082 0.020 0.160 0.041 29.613 36.778 33.768 27.190 1080.591 870.082"),
    ("H20-3e(TP8)", 64, "1.490 0.252 0.395 0.165 0.040 0.320 0.082 49.005 63.334 20.406 15.789 1306.001 1010.516"),
    ("H20-3e(TP8)", 128, "2.979 0.504 0.613 0.329 0.080 0.640 0.165 87.787 116.446 11.391 8.588 1458.077 1099.225"),
    ("H20-3e(TP8)", 256, "5.959 1.008 1.050 0.659 0.160 1.280 0.329 165.351 222.669 6.048 4.491 1548.218 1149.688"),
]

# seeds/001 section 3.3, decode MLA (absorbed): gpu, bs, TP1, TP4, TP8, LoadKV_FP8, LoadKV_FP16
DECODE_MLA = [
    ("H800", 32, "0.109 0.380 0.366 0.026 0.053"),
    ("H800", 64, "0.217 0.407 0.380 0.053 0.106"),
    ("H800", 128, "0.435 0.461 0.407 0.106 0.211"),
    ("H800", 256, "0.869 0.570 0.461 0.211 0.423"),
    ("H20", 32, "0.726 0.358 0.267 0.026 0.053"),
    ("H20", 64, "1.453 0.539 0.358 0.053 0.106"),
    ("H20", 128, "2.906 0.903 0.539 0.106 0.211"),
    ("H20", 256, "5.811 1.629 0.903 0.211 0.423"),
]
# and without absorption: TP1, TP4, TP8
DECODE_MLA_STANDARD = [
    ("H800", 32, "3.528 1.234 0.793"),
    ("H800", 256, "28.222 7.408 3.880"),
    ("H20", 32, "23.586 6.073 3.124"),
    ("H20", 256, "188.686 47.348 23.762"),
]


# --- FLOP counts -----------------------------------------------------------------------------
def test_mla_one_token_one_key(v3: ModelConfig) -> None:
    f = mla_flops(v3, 1, 1, 0)
    assert (p(f.total, 4), p(f.gemm, 4), p(f.attention, 4)) == ("0.3743", "0.1393", "0.2350")
    # the seed's exact output: (0.37429248000000004, 0.139329536, 0.234962944)
    assert f.gemm == pytest.approx(0.139329536, rel=1e-12)
    assert f.attention == pytest.approx(0.234962944, rel=1e-12)


def test_mla_absorbed_one_token(v3: ModelConfig) -> None:
    f = mla_absorbed_flops(v3, 1, 1, 0)
    assert f.total == pytest.approx(1.196572672, rel=1e-12)
    assert f.gemm == pytest.approx(0.256770048, rel=1e-12)
    assert f.attention == pytest.approx(0.939802624, rel=1e-12)
    # seeds/001: absorbed / standard = 3.197 for one token, 3.3028 for prefill of 4989, 0.015 decode
    assert p(f.total / mla_flops(v3, 1, 1).total, 3) == "3.197"
    # the seed prints 3.3028 for 3.302898...: truncated, not rounded
    assert 3.3028 <= mla_absorbed_flops(v3, 4989, 4989).total / mla_flops(v3, 4989, 4989).total < 3.3029
    assert p(mla_absorbed_flops(v3, 1, 4989, 1).total / mla_flops(v3, 1, 4989, 1).total, 3) == "0.015"


def test_mlp_and_expert_flops(v3: ModelConfig) -> None:
    assert p(dense_mlp_flops(v3, 1) * 1000, 2) == "792.72"  # 3 x 7168 x 18432 x 2 (seed: ~792.82 with biases)
    assert p(expert_flops(v3, 1) * 1000, 2) == "88.08"  # seed: 44.05 MMac ~ 88.1 MFLOPs
    assert p(mla_params(v3, bias=True) / 1e6, 2) == "187.17"
    assert p(mla_params(v3, absorbed=True) / 1e6, 6) == "598.147072"
    assert p(expert_params(v3, bias=True) / 1e6, 2) == "44.05"


# --- prefill ---------------------------------------------------------------------------------
def _prefill_row(r) -> tuple[str, ...]:
    return (
        p(r.attn_tp1_ms, 3), p(r.attn_tp_ms, 3), p(r.dense_mlp_ms, 3), p(r.shared_expert_ms, 3),
        p(r.routed_experts_ms, 3), p(r.dispatch_ms, 3), p(r.combine_ms, 3), p(r.sum_overlap_ms, 3),
        p(r.sum_ms, 3), p(r.tps_overlap, 1), p(r.tps, 1),
    )


@pytest.mark.parametrize("gpu", sorted(PREFILL_TP4))
def test_prefill_reference_table(v3: ModelConfig, gpu: str) -> None:
    r = compute_prefill(v3, get_gpu(gpu), seq_len=4383, kv_cache_rate=0.563, tp=4, dp=8)
    assert _prefill_row(r) == PREFILL_TP4[gpu]
    assert (r.num_nodes, r.dispatch_nodes, r.n_dense_layers, r.n_moe_layers) == (4, 4, 3, 58)
    assert r.comm_sm == {"H800": 24, "H20": 10}[gpu]


@pytest.mark.parametrize("gpu", sorted(PREFILL_TP8))
def test_prefill_tp8_dp4(v3: ModelConfig, gpu: str) -> None:
    r = compute_prefill(v3, get_gpu(gpu), tp=8, dp=4)  # defaults: seq_len 4383, kv hit 0.563
    assert _prefill_row(r) == PREFILL_TP8[gpu]


def test_prefill_split_gemm_attention_and_ar(v3: ModelConfig) -> None:
    # seeds/001 section 2.1 printouts
    h800 = compute_prefill(v3, get_gpu("H800"))
    h20 = compute_prefill(v3, get_gpu("H20"))
    assert (p(h800.attn_gemm_ms, 3), p(h800.attn_core_ms, 3), p(h800.allreduce_ms, 3)) == ("0.536", "4.729", "0.352")
    assert (p(h20.attn_gemm_ms, 3), p(h20.attn_core_ms, 3), p(h20.allreduce_ms, 3)) == ("3.364", "29.671", "0.176")


@pytest.mark.parametrize("scaleout, dispatch, combine, total", [
    (50, "0.529", "1.057", "1026.840"), (25, "1.057", "2.115", "1118.841"), (12.5, "2.115", "4.230", "1302.842"),
])
def test_prefill_h20_nic_variants(v3: ModelConfig, scaleout: float, dispatch: str, combine: str, total: str) -> None:
    r = compute_prefill(v3, get_gpu("H20").replace(scaleout_gbps=scaleout))
    assert (p(r.dispatch_ms, 3), p(r.combine_ms, 3), p(r.sum_overlap_ms, 3), p(r.sum_ms, 3)) == (
        dispatch, combine, "934.839", total)


def test_prefill_kv_cache_rate(v3: ModelConfig) -> None:
    # seeds/001 section 2.7 prints tps x 576 / MiB (one layer, FP8): 28.7 / 5.2 (overlap), 18.5 / 4.7
    got = []
    for gpu in ("H800", "H20"):
        r = compute_prefill(v3, get_gpu(gpu))
        got += [p(r.kv_cache_mib_s_overlap / v3.n_layers, 1), p(r.kv_cache_mib_s / v3.n_layers, 1)]
    assert got == ["28.7", "18.5", "5.2", "4.7"]


def test_prefill_ops_add_up(v3: ModelConfig) -> None:
    r = compute_prefill(v3, get_gpu("H800"))
    names = [op.name for op in r.ops]
    assert names == ["mla.gemm", "mla.attn", "tp_allreduce", "dense_mlp", "shared_expert", "routed_experts",
                     "dispatch", "combine"]
    by = {op.name: op for op in r.ops}
    assert by["mla.gemm"].ms + by["mla.attn"].ms == pytest.approx(r.attn_tp1_ms)
    assert by["dispatch"].bytes == 3 * 2 * 4383 * 7168
    assert by["combine"].bytes == 2 * by["dispatch"].bytes
    d = r.to_dict()
    assert d["phase"] == "prefill" and json.loads(json.dumps(d))["sum_ms"] == pytest.approx(r.sum_ms)


# --- decode ----------------------------------------------------------------------------------
@pytest.mark.parametrize("gpu, tp, bs, tpot_o, tpot, budget_ms", DECODE)
def test_decode_reference_table(v3: ModelConfig, gpu: str, tp: int, bs: int, tpot_o: str, tpot: str,
                                budget_ms: str) -> None:
    r = compute_decode(v3, get_gpu(gpu), batch=bs, kv_len=4383, tp=tp)
    assert (p(r.tpot_overlap_ms, 3), p(r.tpot_ms, 3), p(r.time_budget_ms, 3)) == (tpot_o, tpot, budget_ms)
    assert r.comm_sm == 0


@pytest.mark.parametrize("label, bs, cells", DECODE_FULL)
def test_decode_full_seed_table(v3: ModelConfig, label: str, bs: int, cells: str) -> None:
    gpu, tp = label[:-1].split("(TP")
    r = compute_decode(v3, get_gpu(gpu), batch=bs, tp=int(tp))
    got = [r.dense_mla_ms, r.dense_mlp_ms, r.sparse_mla_ms, r.combine_ms, r.shared_expert_ms, r.routed_experts_ms,
           r.dispatch_ms, r.tpot_overlap_ms, r.tpot_ms, r.tps_overlap, r.tps, r.total_tps_overlap, r.total_tps]
    assert " ".join(p(v, 3) for v in got) == cells
    assert r.label == label


@pytest.mark.parametrize("gpu, bs, cells", DECODE_MLA)
def test_decode_mla_table(v3: ModelConfig, gpu: str, bs: int, cells: str) -> None:
    r = compute_decode(v3, get_gpu(gpu), batch=bs)
    got = [r.attn_tp1_ms, r.attn_tp4_ms, r.attn_tp8_ms, r.kv_load_ms, r.kv_load_fp16_ms]
    assert " ".join(p(v, 3) for v in got) == cells


@pytest.mark.parametrize("gpu, bs, cells", DECODE_MLA_STANDARD)
def test_decode_mla_standard_table(v3: ModelConfig, gpu: str, bs: int, cells: str) -> None:
    r = compute_decode(v3, get_gpu(gpu), batch=bs, absorbed=False)
    assert " ".join(p(v, 3) for v in (r.attn_tp1_ms, r.attn_tp4_ms, r.attn_tp8_ms)) == cells


def test_decode_auto_tp_is_the_seeds_rule(v3: ModelConfig) -> None:
    chosen = {(g, bs): compute_decode(v3, get_gpu(g), batch=bs).tp for g in ("H800", "H20") for bs in (32, 64, 128, 256)}
    assert chosen == {("H800", 32): 1, ("H800", 64): 1, ("H800", 128): 1, ("H800", 256): 4,
                      ("H20", 32): 4, ("H20", 64): 4, ("H20", 128): 4, ("H20", 256): 4}


@pytest.mark.parametrize("gpu, scaleout, bs, expected", [
    ("H20", 25, 32, "0.157"), ("H20", 12.5, 32, "-0.090"),
    ("H20-3e", 25, 32, "0.058"), ("H20-3e", 25, 64, "-0.059"),
    ("H20-3e", 12.5, 32, "-0.189"), ("H20-3e", 12.5, 64, "-0.553"),
])
def test_decode_time_budget_nic_variants(v3: ModelConfig, gpu: str, scaleout: float, bs: int, expected: str) -> None:
    tp = 4 if gpu == "H20" else 8
    r = compute_decode(v3, get_gpu(gpu).replace(scaleout_gbps=scaleout), batch=bs, tp=tp)
    assert p(r.time_budget_ms, 3) == expected


@pytest.mark.parametrize("tp, gpu, absorbed, kv_bytes, expected", [
    (1, "H800", False, 1, (289, 276, 248, 194)),
    (1, "H800", True, 1, (156, 142, 115, 60)),
    (1, "H20-3e", True, 2, (228, 221, 207, 180)),
    (4, "H800", False, 1, (84, 80, 74, 60)),
    (4, "H20-3e", True, 1, (150, 147, 140, 127)),
    (8, "H20", False, 1, (53, 51, 48, 41)),
])
def test_max_decode_batch_seed_tables(v3: ModelConfig, tp: int, gpu: str, absorbed: bool, kv_bytes: int,
                                      expected: tuple[int, ...]) -> None:
    # seeds/001 section 3.2: EP320/EP144/EP72/EP34 = 2/3/5/9 experts per GPU, decode_len 1210
    got = tuple(
        round(max_decode_batch(v3, get_gpu(gpu), tp=tp, experts_per_gpu=e, absorbed=absorbed,
                               kv_bytes_per_value=kv_bytes, other_params_gb=2.91))
        for e in (2, 3, 5, 9)
    )
    assert got == expected


# --- per-op helpers --------------------------------------------------------------------------
def test_op_helpers_match_phase_budgets(v3: ModelConfig) -> None:
    h800 = get_gpu("H800").with_comm_sm(0)
    r = compute_decode(v3, h800, batch=32, tp=1)
    ops = op_costs(v3, h800, q_len=1, kv_len=4383, batch=32, kv_cache_rate=1.0, absorbed=True, load_kv=True,
                   expert_efficiency=0.7)
    by = {op.name: op for op in ops}
    assert by["mla.gemm"].ms + by["mla.attn"].ms == pytest.approx(r.attn_tp1_ms)
    assert by["kv_load"].ms == pytest.approx(r.kv_load_ms)
    assert by["shared_expert"].ms == pytest.approx(r.shared_expert_ms)
    assert by["routed_experts"].ms == pytest.approx(r.routed_experts_ms)
    assert by["dispatch"].ms == pytest.approx(r.dispatch_ms)
    assert by["combine"].ms == pytest.approx(r.combine_ms)
    assert total_ms(ops) == pytest.approx(r.sparse_mla_ms + r.shared_expert_ms + r.routed_experts_ms
                                          + r.dispatch_ms + r.combine_ms)
    assert all(isinstance(op, OpCost) and op.to_dict()["name"] == op.name for op in ops)


def test_op_helpers_explicit_shapes(v3: ModelConfig) -> None:
    h200 = get_gpu("H200").with_comm_sm(0)
    # MLA of 4096 tokens over 4096 keys: GFLOP / effective TFLOP/s
    gemm, attn = attention_costs(v3, h200, 4096, 4096, gemm_precision="bf16")
    f = mla_flops(v3, 4096, 4096)
    rate = 989.5 * 0.85
    assert gemm.gflop == pytest.approx(f.gemm) and gemm.ms == pytest.approx(f.gemm / rate)
    assert attn.ms == pytest.approx(f.attention / rate) and attn.precision == "bf16"
    # routed experts over N token-expert rows
    rows = 2 * 4096 * 8 // 2
    op = expert_cost(v3, h200, rows, precision="bf16")
    assert op.ms == pytest.approx(3 * rows * 7168 * 2048 * 2 / 1e9 / rate)
    # an all-to-all of B bytes over NVLink: MiB / (GB/s x 0.85)
    a2a = alltoall_cost(h200, 3_686_400, link="nvlink")
    assert a2a.ms == pytest.approx(3_686_400 / 2**20 / (450 * 0.85)) and a2a.resource == "nvlink"
    assert dense_mlp_cost(v3, h200, 10).gflop == pytest.approx(dense_mlp_flops(v3, 10))
    assert kv_load_cost(v3, h200, 4096, 128).bytes == 4096 * 576 * 128


def test_gpu_effective_rates() -> None:
    h800 = get_gpu("h800")
    assert h800.fp8_rate() == pytest.approx(1583.2 * 0.85 * 108 / 132)
    assert h800.bf16_rate(comm_sm=0) == pytest.approx(791.6 * 0.85)
    assert h800.nvlink_rate() == pytest.approx(170) and h800.scaleout_rate() == pytest.approx(42.5)
    assert h800.hbm_rate() == pytest.approx(3350 * 0.85)
    a100 = get_gpu("A100")
    assert a100.fp8_tflops is None and a100.flops_rate("fp8") == a100.flops_rate("bf16")


# --- configs ---------------------------------------------------------------------------------
DEEPSEEK_V3_HF = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "first_k_dense_replace": 3,
    "hidden_act": "silu",
    "hidden_size": 7168,
    "initializer_range": 0.02,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 8,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "tie_word_embeddings": False,
    "topk_group": 4,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.3",
    "use_cache": True,
    "v_head_dim": 128,
    "vocab_size": 129280,
}


def test_hf_config_equals_shipped(tmp_path: Path, v3: ModelConfig) -> None:
    cfg = tmp_path / "DeepSeek-V3" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps(DEEPSEEK_V3_HF))
    loaded = load_model(str(cfg))
    assert loaded == v3
    assert loaded.name == "DeepSeek-V3"
    assert (loaded.n_moe_layers, loaded.kv_values_per_token, loaded.is_mla, loaded.is_moe) == (58, 576, True, True)
    # ... and the budget from it is the same
    assert compute_prefill(loaded, get_gpu("H800")).sum_ms == compute_prefill(v3, get_gpu("H800")).sum_ms


def test_shipped_models_and_aliases() -> None:
    assert {"deepseek-v3", "deepseek-v3-mini", "qwen2-7b", "baichuan-7b"} <= set(list_models())
    assert load_model("DeepSeek-R1") == load_model("deepseek_v3")
    q = load_model("qwen2-7b")
    assert (q.dim, q.inter_dim, q.vocab_size, q.n_heads, q.n_kv_heads, q.head_dim) == (3584, 18944, 152064, 28, 4, 128)
    assert not q.is_mla and not q.is_moe and q.n_dense_layers == q.n_layers == 28
    b = load_model("Baichuan-7B")
    assert (b.dim, b.inter_dim, b.vocab_size, b.n_heads, b.n_kv_heads) == (4096, 11008, 64000, 32, 32)
    mini = load_model("deepseek-v3-mini")  # the GPU fixtures' model: 1 dense + 3 MoE layers
    assert (mini.n_layers, mini.n_dense_layers, mini.n_moe_layers) == (4, 1, 3)


def test_dense_gqa_model_budget() -> None:
    q = load_model("qwen2-7b")
    a10 = get_gpu("A10")
    r = compute_prefill(q, a10, seq_len=1024, kv_cache_rate=0, tp=1, dp=1)
    assert r.n_moe_layers == 0 and r.dispatch_ms == 0 and r.sum_ms == r.sum_overlap_ms
    assert r.sum_ms == pytest.approx(28 * (r.attn_tp1_ms + r.dense_mlp_ms))
    d = compute_decode(q, a10, batch=4, kv_len=1024, tp=1)
    assert d.kv_load_ms == pytest.approx(1024 * 2 * 4 * 128 * 4 / 2**30 / (600 * 0.85) * 1000)


def test_bad_model_inputs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown model 'gpt-9'"):
        load_model("gpt-9")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(TraceError, match="invalid JSON"):
        load_model(str(bad))
    bad.write_text(json.dumps({"hidden_size": 10}))
    with pytest.raises(TraceError, match="missing field"):
        load_model(str(bad))
    with pytest.raises(TraceError, match="cannot read"):
        load_model(str(tmp_path / "absent.json"))


GPU_FILE = """
[H800]
comm_sm = 20

[MyGPU]
aliases = ["mine"]
sm = 100
comm_sm = 0
bf16_tflops = 500
fp8_tflops = 1000
hbm_gb = 64
hbm_gbps = 2000
nvlink_gbps = 300
scaleout_gbps = 25
source = "test"
"""


def test_gpu_override_file(tmp_path: Path) -> None:
    f = tmp_path / "gpus.toml"
    f.write_text(GPU_FILE)
    h800 = get_gpu("H800", f)
    assert h800.comm_sm == 20 and h800.replace(comm_sm=24) == get_gpu("H800")
    mine = get_gpu("MINE", f)
    assert isinstance(mine, GPUSpec) and mine.name == "MyGPU" and mine.discount == 0.85
    assert set(load_gpus(f)) == set(load_gpus()) | {"MyGPU"}
    assert get_gpu("h20_3E").name == "H20-3e"
    with pytest.raises(UsageError, match="unknown GPU"):
        get_gpu("MyGPU")
    f.write_text("[Half]\nsm = 10\n")
    with pytest.raises(TraceError, match="missing field"):
        load_gpus(f)
    f.write_text("[H800]\ncomm_sms = 3\n")
    with pytest.raises(TraceError, match="unknown field"):
        load_gpus(f)
    f.write_text("[H800\n")
    with pytest.raises(TraceError, match="invalid TOML"):
        load_gpus(f)


def test_shipped_gpu_table() -> None:
    gpus = load_gpus()
    assert {"H800", "H20", "H20-3e", "H100", "H200", "A100", "A10", "B200"} <= set(gpus)
    seed = {n: (g.sm, g.bf16_tflops, g.fp8_tflops, g.hbm_gb, g.hbm_gbps, g.nvlink_gbps, g.scaleout_gbps, g.discount)
            for n, g in gpus.items() if n in ("H800", "H20", "H20-3e")}
    assert seed == {
        "H800": (132, 791.6, 1583.2, 80, 3350, 200, 50, 0.85),
        "H20": (78, 118.4, 236.8, 96, 3350, 400, 50, 0.85),
        "H20-3e": (78, 118.4, 236.8, 141, 4800, 400, 50, 0.85),
    }
    assert (gpus["H800"].comm_sm, gpus["H20"].comm_sm) == (24, 10)
    assert all(g.source for g in gpus.values())


# --- properties ------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(tokens=st.integers(1, 100_000), k=st.integers(1, 16))
def test_expert_time_is_linear_in_rows(tokens: int, k: int) -> None:
    m, g = load_model("deepseek-v3"), get_gpu("H800")
    one = expert_cost(m, g, tokens).ms
    assert expert_cost(m, g, tokens * k).ms == pytest.approx(one * k)


@settings(max_examples=50, deadline=None)
@given(q=st.integers(1, 8192), kv=st.integers(1, 8192), r1=st.floats(0, 1), r2=st.floats(0, 1))
def test_kv_cache_hits_only_reduce_gemm(q: int, kv: int, r1: float, r2: float) -> None:
    m = load_model("deepseek-v3")
    lo, hi = sorted((r1, r2))
    a, b = mla_flops(m, q, kv, lo), mla_flops(m, q, kv, hi)
    assert b.gemm <= a.gemm + 1e-12 and b.attention == a.attention


# --- CLI -------------------------------------------------------------------------------------
PREFILL_ARGS = ["--model", "deepseek-v3", "--gpu", "H800,H20", "--phase", "prefill", "--seq-len", "4383",
                "--kv-cache-rate", "0.563", "--tp", "4", "--dp", "8", *ARTICLE]


def test_cli_prefill_table() -> None:
    res = CliRunner().invoke(budget, PREFILL_ARGS)
    assert res.exit_code == 0, res.output
    for gpu, cells in PREFILL_TP4.items():
        for cell in cells:
            assert cell in res.output
    assert "MLA TP4" in res.output and "H800" in res.output


def test_cli_decode_json() -> None:
    res = CliRunner().invoke(budget, ["--model", "deepseek-v3", "--gpu", "H20-3e", "--phase", "decode",
                                      "--batch", "32,64", "--seq-len", "4383", "--tp", "8", "--format", "json", *ARTICLE])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["phase"] == "decode" and doc["model"]["name"] == "deepseek-v3"
    got = [(r["batch"], p(r["tpot_overlap_ms"], 3), p(r["tpot_ms"], 3), p(r["time_budget_ms"], 3))
           for r in doc["results"]]
    assert got == [(32, "29.613", "36.778", "0.182"), (64, "49.005", "63.334", "0.188")]
    assert {op["name"] for op in doc["results"][0]["ops"]} >= {"mla.gemm", "kv_load", "dispatch"}


def test_cli_decode_table_and_hf_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(DEEPSEEK_V3_HF))
    res = CliRunner().invoke(budget, ["--model", str(cfg), "--gpu", "H800", "--phase", "decode", "--batch", "32",
                                      "--tp", "1", *ARTICLE])
    assert res.exit_code == 0, res.output
    assert "9.858" in res.output and "17.023" in res.output and "0.015" in res.output


def test_cli_gpu_file(tmp_path: Path) -> None:
    f = tmp_path / "gpus.toml"
    f.write_text(GPU_FILE)
    res = CliRunner().invoke(budget, ["--gpu", "mine", "--gpu-file", str(f), "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["gpus"][0]["name"] == "MyGPU" and doc["results"][0]["comm_sm"] == 0


def test_cli_scaleout_override() -> None:
    res = CliRunner().invoke(budget, ["--gpu", "H20", "--scaleout-gbps", "12.5", "--format", "json", *ARTICLE])
    assert res.exit_code == 0, res.output
    assert p(json.loads(res.stdout)["results"][0]["sum_ms"], 3) == "1302.842"


@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-model"], "traceview: error: unknown model 'no-such-model'"),
    (["--gpu", "Z9000"], "traceview: error: unknown GPU 'Z9000'"),
    (["--model", "/nonexistent/config.json"], "traceview: error: /nonexistent/config.json: cannot read"),
    (["--phase", "decode", "--batch", "8,x"], "traceview: error: --batch must be"),
    (["--tp", "0"], "traceview: error: --tp must be positive"),
    (["--kv-cache-rate", "1.5"], "traceview: error: kv_cache_rate must be within 0..1"),
])
def test_cli_errors_exit_2_one_line(args: list[str], message: str) -> None:
    res = CliRunner().invoke(budget, args)
    assert res.exit_code == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr
    assert "Traceback" not in res.output


def test_cli_list() -> None:
    res = CliRunner().invoke(budget, ["--list"])
    assert res.exit_code == 0
    assert "deepseek-v3" in res.output and "H20-3e" in res.output and "B200" in res.output
