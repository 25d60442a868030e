"""MoE configs by their Hugging Face keys (issue 15): DeepSeek, Qwen2/3-MoE, Mixtral, GPT-OSS,
Llama-4; unknown MoE-looking keys are refused, not modeled as dense."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from traceview.budget import compute_decode, get_gpu, load_model, model_from_hf
from traceview.cli.budget import budget
from traceview.errors import TraceError

# as downloaded (Qwen/Qwen3-235B-A22B config.json, the keys that matter plus unrelated ones)
QWEN3_MOE_HF = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 4096,
    "intermediate_size": 12288, "moe_intermediate_size": 1536, "num_hidden_layers": 94, "num_attention_heads": 64,
    "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True, "router_aux_loss_coef": 0.001,
    "output_router_logits": False, "rope_theta": 1000000.0, "vocab_size": 151936, "torch_dtype": "bfloat16",
}
MIXTRAL_HF = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8,
    "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02, "output_router_logits": False, "sliding_window": None,
    "vocab_size": 32000,
}
H200 = get_gpu("H200")
BW = 4800 * 0.85 * 1e9 / 1e3  # effective HBM bytes per ms: 4.08e9
SCALEOUT = 50 * 0.85 * 1e9 / 1e3  # effective scale-out bytes per ms: 4.25e7
FP8 = 1979 * 0.85  # effective FP8 GFLOP per ms (decode: no SMs reserved)


def test_shipped_configs_equal_their_hf_config_json():
    assert load_model("qwen3-moe") == model_from_hf(QWEN3_MOE_HF)
    assert load_model("mixtral-8x7b") == model_from_hf(MIXTRAL_HF)


def test_qwen3_moe_decode_rows_hand_checked():
    """Qwen3-235B-A22B decode, batch 32 per GPU, 8 experts per GPU, FP8 GEMMs, H200.

    routed rows = 32 x 8 = 256; experts hit = 8 x (1 - (7/8)^256) = 8.0 (to 1e-13)
    FLOPs = 3 x 256 x 4096 x 1536 x 2 = 9,663,676,416
    bytes = 8 x 3 x 4096 x 1536 (FP8 weights) = 150,994,944
          + 256 x (4096 + 2 x 2 x 1536 + 1536 + 2 x 4096) (in fp8, gate/up out bf16, down in fp8, out bf16)
          = 256 x 19,968 = 5,111,808   -> 156,106,752 bytes
    time = max(9.664 / 1682.15 / 0.7, 156,106,752 / 4.08e9) = max(0.00821, 0.03826) ms: memory-bound
    dispatch = 32 x 4096 x 8 = 1,048,576 bytes / 4.25e7 = 0.02467 ms; combine twice that
    no shared expert; 94 MoE layers, 0 dense."""
    m = load_model("qwen3-moe")
    r = compute_decode(m, H200, batch=32, kv_len=4096, tp=1, experts_per_gpu=8)
    ops = {op.name: op for op in r.ops}
    routed = ops["routed_experts"]
    assert routed.gflop == pytest.approx(9_663_676_416 / 1e9)
    assert routed.bytes == pytest.approx(150_994_944 + 5_111_808)
    assert routed.ms == pytest.approx(156_106_752 / BW) and routed.resource == "hbm"
    assert r.routed_experts_ms == routed.ms
    assert ops["dispatch"].bytes == 1_048_576 and r.dispatch_ms == pytest.approx(1_048_576 / SCALEOUT)
    assert ops["combine"].bytes == 2 * 1_048_576 and r.combine_ms == pytest.approx(2 * 1_048_576 / SCALEOUT)
    assert r.shared_expert_ms == 0 and ops["shared_expert"].gflop == 0
    assert (r.n_dense_layers, r.n_moe_layers) == (0, 94)


def test_mixtral_decode_rows_hand_checked():
    """Mixtral-8x7B decode, batch 64 per GPU, 2 experts per GPU (EP4), FP8, H200.

    routed rows = 64 x 2 = 128; experts hit = 2 x (1 - (1/2)^128) = 2
    FLOPs = 3 x 128 x 4096 x 14336 x 2 = 45,097,156,608 -> 45.097 / 1682.15 / 0.7 = 0.03830 ms
    bytes = 2 x 3 x 4096 x 14336 = 352,321,536 + 128 x (4096 + 4 x 14336 + 14336 + 8192)
          = 128 x 83,968 = 10,747,904 -> 363,069,440 / 4.08e9 = 0.08899 ms: memory-bound
    dispatch = 64 x 4096 x 2 = 524,288 bytes / 4.25e7 = 0.01234 ms; 32 MoE layers."""
    m = load_model("mixtral-8x7b")
    r = compute_decode(m, H200, batch=64, kv_len=4096, tp=1, experts_per_gpu=2)
    ops = {op.name: op for op in r.ops}
    assert ops["routed_experts"].gflop == pytest.approx(45_097_156_608 / 1e9)
    assert ops["routed_experts"].bytes == pytest.approx(352_321_536 + 10_747_904)
    assert r.routed_experts_ms == pytest.approx(363_069_440 / BW)
    assert 45.097156608 / FP8 / 0.7 < r.routed_experts_ms
    assert r.dispatch_ms == pytest.approx(524_288 / SCALEOUT) and r.combine_ms == pytest.approx(2 * 524_288 / SCALEOUT)
    assert (r.n_dense_layers, r.n_moe_layers, m.n_routed_experts, m.moe_inter_dim) == (0, 32, 8, 14336)


@pytest.mark.parametrize("cfg, expect", [
    # Qwen3-MoE with dense layers: every 2nd layer sparse, layer 1 forced dense -> MoE layers 3, 5, 7
    ({**QWEN3_MOE_HF, "num_hidden_layers": 8, "decoder_sparse_step": 2, "mlp_only_layers": [1]}, (5, 3, 0)),
    # Qwen2-MoE: a shared expert of its own width
    ({"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16,
      "num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
      "shared_expert_intermediate_size": 5632}, (0, 24, 5632)),
    # DeepSeek-V2-Lite: q_lora_rank null, first layer dense
    ({"hidden_size": 2048, "intermediate_size": 10944, "num_hidden_layers": 27, "num_attention_heads": 16,
      "q_lora_rank": None, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
      "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6, "moe_intermediate_size": 1408,
      "first_k_dense_replace": 1, "moe_layer_freq": 1, "topk_method": "greedy", "scoring_func": "softmax"},
     (1, 26, 2816)),
    # GPT-OSS: experts_per_token, experts as wide as intermediate_size
    ({"hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 24, "num_attention_heads": 64,
      "num_key_value_heads": 8, "head_dim": 64, "num_local_experts": 32, "experts_per_token": 4,
      "swiglu_limit": 7.0}, (0, 24, 0)),
    # Llama-4 (multimodal wrapper): text_config, explicit moe_layers, dense layers use intermediate_size_mlp
    ({"model_type": "llama4", "text_config": {
        "hidden_size": 5120, "intermediate_size": 8192, "intermediate_size_mlp": 16384, "num_hidden_layers": 4,
        "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128, "num_local_experts": 128,
        "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "moe_layers": [1, 3]}}, (2, 2, 8192)),
])
def test_moe_layer_patterns(cfg, expect):
    m = model_from_hf(cfg)
    assert m.is_moe
    assert (m.n_dense_layers, m.n_moe_layers, m.shared_inter_dim) == expect


def test_llama4_dense_layers_use_the_wide_mlp():
    m = load_model("llama-4-scout")
    assert (m.inter_dim, m.moe_inter_dim, m.n_shared_experts, m.n_activated_experts) == (16384, 8192, 1, 1)


@pytest.mark.parametrize("extra", [{"num_selects": 4}, {"moe_num_experts": 16}, {"num_shared_experts": 1}])
def test_unknown_moe_keys_are_refused_naming_them(extra):
    with pytest.raises(TraceError) as e:
        model_from_hf({**MIXTRAL_HF, **extra}, source="config.json")
    assert next(iter(extra)) in str(e.value) and "dense" in str(e.value)


def test_cli_refuses_unknown_moe_config_in_one_line(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24,
                               "num_attention_heads": 16, "num_experts": 16, "num_selects": 4}))
    r = CliRunner().invoke(budget, ["--model", str(cfg)])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "num_selects" in r.stderr


@pytest.mark.parametrize("name", ["qwen3-moe", "mixtral-8x7b", "gpt-oss-120b", "qwen2-moe", "llama-4-scout"])
def test_cli_moe_models_get_expert_and_all_to_all_rows(name):
    for phase in ("prefill", "decode"):
        r = CliRunner().invoke(budget, ["--model", name, "--gpu", "H200", "--phase", phase, "--format", "json"])
        assert r.exit_code == 0, r.output
        ops = {op["name"]: op for op in json.loads(r.stdout)["results"][0]["ops"]}
        assert {"routed_experts", "dispatch", "combine"} <= set(ops)
        assert ops["routed_experts"]["gflop"] > 0
    r = CliRunner().invoke(budget, ["--model", name, "--gpu", "H200", "--phase", "decode", "--batch", "32"])
    assert "RoutedExpert" in r.stdout and "Dispatch" in r.stdout and "Combine" in r.stdout
