"""Kernel classes on real names: own-name parsing, the taxonomy table, coverage and roles on
every real trace, and dispatch/combine that do not depend on how the run was profiled."""

from __future__ import annotations

from collections import Counter

import polars as pl
import pytest

from conftest import PROJECT_FIXTURES, all_shared_traces, analysis_of, needs_shared, shared, trace_id
from traceview.classify import classify, default_rules, demangle, display_name, function_name, own_name
from traceview.load import load

GPU_EXTRA = PROJECT_FIXTURES / "gpu-extra"
REAL_TRACES = (all_shared_traces() + sorted(GPU_EXTRA.glob("*.json.gz")) + sorted(PROJECT_FIXTURES.glob("*.json.gz"))
               + sorted((PROJECT_FIXTURES / "captures").glob("*.json.gz")))
#: classes that say nothing specific: a trace's time in them counts as not classified
VAGUE = ("unclassified", "compute.other")

# --- the kernel's own name --------------------------------------------------------------

def _mangled_grouped_mm() -> str:
    """torch._grouped_mm's CUTLASS kernel as the H200 capture writes it: mangled (fixtures/)."""
    k = analysis_of(str(PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz")).kernels
    names = k["name"].cast(pl.Utf8).unique().to_list()
    return next(n for n in names if n.startswith("_ZN7cutlass13device_kernelIN2at4cuda6detail25enable_3x_kernel_for_sm9x"))


def test_demangled_and_own_names_of_real_signatures():
    # ROCm (TraceLens SGLang trace): mangled, with the DF16b bfloat16 extension
    rms = "_ZN5aiter24add_rmsnorm_quant_kernelIDF16bDF16bLi64ELi8ELb0ELb0ELb1ELi1EEEvPT0_PT_PfS4_S4_S4_diiiiiiib"
    assert demangle(rms).startswith("void aiter::add_rmsnorm_quant_kernel<std::bfloat16_t, std::bfloat16_t, 64, 8,")
    assert own_name(rms) == "aiter::add_rmsnorm_quant_kernel"
    assert function_name(rms).startswith("aiter::add_rmsnorm_quant_kernel<std::bfloat16_t") and "(" not in function_name(rms)
    # ck_tile::kentry<N, Kernel<...>> wraps the real kernel
    ck = ("_ZN7ck_tile6kentryILi1ENS_12Rmsnorm2dFwdINS_27Rmsnorm2dFwdPipelineOnePassINS_27Rmsnorm2dFwdPipeline"
          "ProblemIDF16bDF16bfDF16bDF16bDF16bffNS_19Generic2dBlockShapeINS_8sequenceIJLi1ELi3072EEEENS5_IJLi1ELi128"
          "EEEENS5_IJLi1ELi8EEEEEENS_18Rmsnorm2dFwdTraitsILb1ELb0ELb0ELb0ELNS_21Rmsnorm2dFusedAddEnumE1ELNS_23Rmsnorm"
          "2dFusedQuantEnumE0ELNS_22Rmsnorm2dSensitiveEnumE0EEEEENS_33Rmsnorm2dFwdPipelineDefaultPolicyEEENS_17Default"
          "2DEpilogueINS_24Default2DEpilogueProblemIfDF16bLb0ELb1ELb0EEEvEEEEJNSM_5KargsEEEEvDpT1_")  # vLLM MI300 trace
    assert own_name(ck) == "ck_tile::Rmsnorm2dFwd"
    # cutlass::device_kernel<enable_3x_kernel_for_sm9x<GemmUniversal<...>>>: two wrappers deep, and
    # grouped only by its GroupProblemShape template argument
    assert own_name(_mangled_grouped_mm()) == "cutlass::gemm::kernel::GemmUniversal"
    assert default_rules().classify_name(_mangled_grouped_mm(), "kernel") == "gemm.grouped"
    # FA3 as vLLM's profiling guide shows it; DeepSeek's grouped GEMM (train.json)
    assert own_name("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<"
                    "flash::CollectiveMainloopFwdSm90<2, cute::tuple<cute::C<1>>>, true> > >(Params)") == "flash::FlashAttnFwdSm90"
    assert own_name("void cutlass::device_kernel<dpsk::grouped_gemm::cuda::m_grouped_fp8_ptp128c::GemmKernel>"
                    "(dpsk::grouped_gemm::cuda::m_grouped_fp8_ptp128c::GemmKernel::Params)") == \
        "dpsk::grouped_gemm::cuda::m_grouped_fp8_ptp128c::GemmKernel"
    # a return type with templates and spaces (b200 trace), anonymous namespaces, no signature at all
    assert own_name("std::enable_if<(((8)>(0)))&&vllm::_typeConvert<c10::BFloat16>::exists, void>::type "
                    "vllm::fused_add_rms_norm_kernel<c10::BFloat16, 8>(c10::BFloat16*, long, c10::BFloat16*, "
                    "c10::BFloat16 const*, float, int, int)") == "vllm::fused_add_rms_norm_kernel"
    assert own_name("void at::native::(anonymous namespace)::cunn_SoftMaxForwardReg<float, float, float, "
                    "at::native::(anonymous namespace)::SoftMaxForwardEpilogue, long, 4>(float*, float const*, long)") \
        == "at::native::(anonymous namespace)::cunn_SoftMaxForwardReg"
    assert own_name("cuda::aux_fi_impl(long const*, float*, int, int, int, int)") == "cuda::aux_fi_impl"
    assert own_name("Memcpy DtoD (Device -> Device)") == "Memcpy DtoD (Device -> Device)"
    assert own_name("nvjet_sm90_tst_320x128_64x3_1x2_h_bz_coopB_TNT") == "nvjet_sm90_tst_320x128_64x3_1x2_h_bz_coopB_TNT"


def test_display_name_is_demangled_without_parameters():
    mangled = _mangled_grouped_mm()
    assert display_name(mangled).startswith(
        "cutlass::device_kernel<at::cuda::detail::enable_3x_kernel_for_sm9x<cutlass::gemm::kernel::GemmUniversal<")
    assert display_name("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)") == "ncclDevKernel_SendRecv"
    from traceview.report.text import short_kernel_name  # the tables' and HTML's name goes through it
    assert short_kernel_name(mangled, 40).startswith("cutlass::device_kernel<")


# --- the taxonomy, name by name ----------------------------------------------------------

#: (kernel name as a trace or a library writes it, class).  Sources: the traces under
#: ../shared/fixtures and fixtures/ (names copied from them), ../shared/docs/kernel-names.md
#: and field-notes.md §3.6 (library sources), and the cases of issue 13.
EXPECTED = [
    # DeepEP normal / low-latency, DeepSeek internal EP, pplx, TRT-LLM
    ("void deep_ep::intranode::notify_dispatch<8>(int const*, int*, int, int const*, int*, int)", "moe.dispatch"),
    ("void deep_ep::intranode::dispatch<8, 768, 6144>(int4*, float*, int*, long*)", "moe.dispatch"),
    ("void deep_ep::intranode::cached_notify_dispatch<8>(int const*, int, void**, int**, int)", "moe.dispatch"),
    ("void deep_ep::intranode::combine<__nv_bfloat16, 8, 768>(__nv_bfloat16*, float*)", "moe.combine"),
    ("void deep_ep::intranode::cached_notify_combine<8>(void**, int*, int, int, int, int**, int, int)", "moe.combine"),
    ("void deep_ep::internode::cached_notify(int, int, int, int, int, int*)", "moe.combine"),
    ("void deep_ep::internode_ll::dispatch<true, 3, 10, 7168>(void*, float*, int*, long*, int*, void*)", "moe.dispatch"),
    ("void deep_ep::internode_ll::dispatch<(bool)1, (bool)1, (int)6144>(void *, void *, int *, long *)", "moe.dispatch"),
    ("void deep_ep::internode_ll::combine<(bool)0, (int)6144, (int)11, (int)4>(void *, void *)", "moe.combine"),
    ("void deep_ep::internode_ll::dispatch_opt1_hidden6144<1, false, 1, false, false, 6144, false, false>(void*)", "moe.dispatch"),
    ("void deep_ep::layout::get_dispatch_layout<256, 32, 8>(long const*, int*, int*, int*, bool*, int, int, int, int)", "moe.routing"),
    ("void deep_ep::internode_ll::clean_low_latency_buffer<32>(int*, int, int*, int)", "moe.routing"),
    ("void dpsk::ep::internode::notify_dispatch<false, 8>(int const*, long*, int)", "moe.dispatch"),
    ("void dpsk::ep::internode::cached_notify<false>(int, int, int, int, int*, int)", "moe.combine"),
    ("void dpsk::ep::cuda::get_dispatch_layout<256, 32, 8>(long const*, int*, int*, int*, bool*, int, int, int, int)", "moe.routing"),
    ("void (anonymous namespace)::dispatchKernel<10u, true, true>(int, unsigned long)", "moe.dispatch"),
    ("void (anonymous namespace)::combineKernel<__nv_bfloat16, __nv_bfloat16>(int, unsigned long)", "moe.combine"),
    ("void barrier_on_stream_kernel_threadgroup<(threadgroup_t)1>(int, int)", "comm.other"),
    # collectives, NCCL and not
    ("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", "comm.send_recv"),
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "comm.all_reduce"),
    ("ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)", "comm.all_reduce"),
    ("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "comm.all_gather"),
    ("void (anonymous namespace)::multimem_all_reduce_kernel<c10::BFloat16, 16>(c10::BFloat16*, unsigned long)", "comm.all_reduce"),
    ("void vllm::cross_device_reduce_1stage<__nv_bfloat16, 8>(vllm::RankData*, vllm::RankSignals, int)", "comm.all_reduce"),
    ("void two_shot_all_reduce_kernel_inplace<c10::BFloat16, 8>(c10::BFloat16**, unsigned long)", "comm.all_reduce"),
    ("dlslime::intranode_alltoall_kernel(void*, int)", "comm.all_to_all"),
    # Inductor: named by what it fuses; an all_reduce inside a pointwise name is not a collective
    ("triton_poi_fused_add_all_reduce_0", "elementwise"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1", "norm"),
    ("triton_per_fused__softmax_amax_exp_sub_sum_3", "reduce"),
    ("triton_poi_fused__to_copy_add_sigmoid_unsqueeze_0", "elementwise"),
    ("triton_poi_fused_mul_silu_2", "activation"),
    ("triton_tem_fused_mm_4", "gemm.dense"),
    # attention: FlashMLA, FlashInfer, FA2/FA3, cuDNN, ROCm, Triton
    ("void flash_fwd_splitkv_mla_kernel<Flash_fwd_kernel_traits_mla<576, 64, 64, 8>, flash::SharedStorageMLA>(Flash_fwd_mla_params)", "attention.mla"),
    ("void flash_fwd_mla_combine_kernel<cutlass::bfloat16_t, float, 512, 32>(Flash_fwd_mla_params)", "attention.mla"),
    ("get_mla_metadata_kernel(Mla_metadata_params)", "attention.mla"),
    ("void flashinfer::mla::BatchMLAPagedAttentionKernel<flashinfer::mla::KernelTraits<true, 2u>, Params>(Params)", "attention.mla"),
    ("fmhaSm100fKernel_QkvBfloat16OBfloat16HQk576HV512HVPerCta256PagedKvDenseP64MultiCtasKvVarSeqQ8Kv128", "attention.mla"),
    ("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<flash::CollectiveMainloopFwdSm90<2>, true> > >(Params)", "attention"),
    ("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdCombine<cute::tuple<cute::C<8>>, 7, 256, 1> > >(Params)", "attention"),
    ("void flash::prepare_varlen_num_blocks_kernel<1, true>(int, int, int, int const*, int*, int*)", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x64_4x1x1_kernel0_0", "attention"),
    ("void paged_attention_ll4mi_QKV_mfma16_kernel<0, __hip_bfloat16, __hip_bfloat16>(__hip_bfloat16 const*)", "attention"),
    ("void paged_attention_ll4mi_reduce_kernel<__hip_bfloat16, __hip_bfloat16, 128, 128, 256, 3, false>(__hip_bfloat16*)", "attention"),
    ("_fwd_kernel", "attention"),
    ("_fwd_grouped_kernel_stage1", "attention"),
    ("kernel_unified_attention_2d", "attention"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<192, 128, 64, 8, false, false, cutlass::bfloat16_t, "
     "Flash_kernel_traits<192, 128, 64, 8, cutlass::bfloat16_t> >, false, true>(pytorch_flash::Flash_fwd_params)", "attention.mla"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t, "
     "Flash_kernel_traits<128, 128, 64, 4, cutlass::bfloat16_t> >, false, true>(pytorch_flash::Flash_fwd_params)", "attention"),
    # GEMMs: grouped by template argument (CUTLASS GroupProblemShape, DeepGEMM GemmType), ROCm
    ("void deep_gemm::fp8_gemm_kernel<4096u, 7168u, 128u, 128u, 128u, 8u, 8u, (deep_gemm::GemmType)1>(float*, int*)", "gemm.grouped"),
    ("void deep_gemm::fp8_gemm_kernel<4096u, 7168u, 128u, 128u, 128u, 8u, 8u, (deep_gemm::GemmType)2>(float*, int*)", "gemm.grouped"),
    ("void deep_gemm::fp8_gemm_kernel<4096u, 7168u, 128u, 128u, 128u, 1u, 8u, (deep_gemm::GemmType)0>(float*, int*)", "gemm.dense"),
    ("fused_moe_kernel", "gemm.grouped"),
    ("Cijk_Alik_Bljk_BBS_BH_Bias_HA_S_SAV_UserArgs_MT128x256x32_MI16x16x1_SN_LDSB1", "gemm.dense"),
    ("void wvSplitK_hf_sml_<__hip_bfloat16, 64, 2, 16, 8, 4, 1>(int, int, int, __hip_bfloat16 const*)", "gemm.dense"),
    ("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_TNN", "gemm.dense"),
    # routing, norm, activation, quant: the argument list never decides
    ("void tensorrt_llm::kernels::quantize_with_block_size<(tensorrt_llm::BlockScaleQuantizationType)2, __nv_bfloat16, "
     "32, true>(int, int, int, int, __nv_bfloat16 const*, float const*, unsigned int*, unsigned int*, "
     "flashinfer::QuantizationSFLayout)", "quant"),
    ("void fbgemm_gpu::batch_index_select_dim0_codegen_forward_small_kernel<float, float, long>(at::PackedTensorAccessor64, "
     "fbgemm_gpu::FixedDivisor, int)", "embedding"),
    ("void at::native::(anonymous namespace)::embedding_backward_feature_kernel<float, float, long>(long const*, float const*)", "embedding"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::FusedOptimizerTensorListMetadata<4>, "
     "at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4, (at::native::ADAM_MODE)1, false>, double>(T1, T2, T3)", "optimizer"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::TensorListMetadata<2>, "
     "at::native::(anonymous namespace)::CopyFunctor<int, long, 2, 1, 1>, at::native::Copy<int, long> >(T1, T2, T3)", "elementwise"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::sigmoid_kernel_cuda(at::TensorIteratorBase&)::{lambda()#2}"
     "::operator()() const::{lambda()#2}::operator()() const::{lambda(float)#1}, std::array<char*, 2ul> >(int, T, std::array<char*, 2ul>)", "activation"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, at::detail::Array<char*, 3> >(int, T, A)", "elementwise"),
    ("_ZN7sgl_hip10activation18act_and_mul_kernelI14__hip_bfloat16TnPFT_RKS3_EXadL_Z4siluIS2_ES3_S5_EEEEvPS3_PS4_i", "activation"),
    ("void moe_fused_gate_kernel<float, 8, 32>(void*, void*, float*, int*, int, int, int, int, int, float)", "moe.routing"),
    ("void per_token_group_quant_8bit_kernel<c10::BFloat16, c10::Float8_e4m3fn, true, true, float>(void const*)", "quant"),
    ("void dpsk::grouped_gemm::cuda::utils::transpose<512, 128, 4, 4>(unsigned char const*, unsigned char*, int, int, int, int)", "elementwise"),
    ("Memcpy PtoP (Device -> Device)", "comm.p2p_copy"),
]


@pytest.mark.parametrize("name,category", EXPECTED, ids=[f"{c}:{n[:48]}" for n, c in EXPECTED])
def test_taxonomy_names_their_class(name, category):
    rules = default_rules()
    kind = "gpu_memcpy" if name.startswith("Memcpy") else "kernel"
    assert rules.classify_name(name, kind) == category


def test_template_rules_say_so():
    """Only the rules marked match = "template" see template arguments."""
    rules = default_rules()
    template_rules = [r for r in rules.rules if r.match == "template"]
    assert {r.category for r in template_rules} == {"attention.mla", "gemm.grouped", "activation", "optimizer"}
    # a generic rule never sees the template arguments: a FixedDivisor/GemmUniversal inside <...> decides nothing
    assert rules.classify_name("void my_lib::unknown_op<fbgemm_gpu::FixedDivisor, cutlass::gemm::GemmUniversal>(int)",
                               "kernel") == "unclassified"


# --- every real trace -------------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("path", REAL_TRACES, ids=trace_id)
def test_specific_class_for_995_per_mille_of_gpu_time(path):
    """>= 99.5 % of every real trace's GPU time is in a specific class (not unclassified, not
    the library catch-all compute.other)."""
    k = analysis_of(str(path)).kernels
    total = float(k["dur"].sum())
    vague = float(k.filter(pl.col("category").cast(pl.Utf8).is_in(VAGUE))["dur"].sum())
    assert total > 0
    assert 1 - vague / total >= 0.995, k.filter(pl.col("category").cast(pl.Utf8).is_in(VAGUE))["name"].unique().to_list()[:5]


#: communication classes each real trace holds (from its MANIFEST / README description):
#: anything else with a comm role, or a comm kernel classed as compute, is a role error
COMM_EXPECTED = {
    "train": {"moe.dispatch", "moe.combine"},
    "decode_serial_rank0": {"moe.dispatch", "moe.combine"}, "decode_serial_rank1": {"moe.dispatch", "moe.combine"},
    "prefill_serial_rank0": {"moe.dispatch", "moe.combine"}, "prefill_serial_rank1": {"moe.dispatch", "moe.combine"},
    "prefill_tbo_rank0": {"moe.dispatch", "moe.combine"}, "prefill_tbo_rank1": {"moe.dispatch", "moe.combine"},
    "decode_tbo_rank0": {"moe.dispatch", "moe.combine"}, "decode_tbo_rank1": {"moe.dispatch", "moe.combine"},
    "prefill_tbo_nolabels_rank0": {"moe.dispatch", "moe.combine"}, "prefill_tbo_nolabels_rank1": {"moe.dispatch", "moe.combine"},
    "prefill_dbo_threads_rank0": {"moe.dispatch", "moe.combine"}, "prefill_dbo_threads_rank1": {"moe.dispatch", "moe.combine"},
    "tp2_dense_rank0": {"comm.all_reduce"}, "tp2_dense_rank1": {"comm.all_reduce"},
    "tp2_dense_decode_rank0": {"comm.all_reduce"}, "tp2_dense_decode_rank1": {"comm.all_reduce"},
    "decode_serial_copyengine": {"comm.p2p_copy"}, "decode_tbo_copyengine": {"comm.p2p_copy"},
    "prefill_tbo_copyengine": {"comm.p2p_copy"},
    "b200__eager_trace": {"comm.all_reduce", "comm.all_gather"},
}
COMM_NAME = r"(?i)nccl|rccl|deep_ep|dpsk::ep|all_?reduce_kernel|multimem|PtoP"
NOT_COMM_NAME = r"get_dispatch_layout|clean_low_latency_buffer"  # local layout work in comm libraries


@needs_shared
@pytest.mark.parametrize("path", REAL_TRACES, ids=trace_id)
def test_no_comm_compute_role_error(path):
    k = analysis_of(str(path)).kernels.with_columns(pl.col("category").cast(pl.Utf8), pl.col("role").cast(pl.Utf8),
                                                    pl.col("name").cast(pl.Utf8))
    comm = set(k.filter(pl.col("role") == "comm")["category"].unique().to_list())
    assert comm == COMM_EXPECTED.get(trace_id(path), set())
    looks_comm = k.filter(pl.col("name").str.contains(COMM_NAME) & ~pl.col("name").str.contains(NOT_COMM_NAME))
    assert (looks_comm["role"] == "comm").all(), looks_comm.filter(pl.col("role") != "comm")["name"].unique().to_list()


# --- the same class whatever the profiler settings ---------------------------------------

def _comm_sequence(path) -> list[str]:
    k = analysis_of(str(path)).kernels
    return k.filter(pl.col("role") == "comm").sort("ts")["category"].cast(pl.Utf8).to_list()


@needs_shared
@pytest.mark.parametrize("rank", [0, 1])
def test_dispatch_combine_without_labels_or_with_worker_threads(rank):
    """The same EP2 prefill profiled with dispatch/combine ranges, with none, and driven by two
    worker threads (c10d's nccl:all_to_all only): no category changes."""
    labelled = _comm_sequence(shared(f"gpu/prefill_tbo_rank{rank}.json.gz"))
    nolabels = _comm_sequence(GPU_EXTRA / f"prefill_tbo_nolabels_rank{rank}.json.gz")
    threads = _comm_sequence(GPU_EXTRA / f"prefill_dbo_threads_rank{rank}.json.gz")
    assert Counter(labelled) == Counter({"moe.dispatch": 24, "moe.combine": 12})
    assert nolabels == labelled  # kernel by kernel, in GPU order
    assert Counter(threads) == Counter(labelled)  # another schedule: same counts
    for path in (GPU_EXTRA / f"prefill_tbo_nolabels_rank{rank}.json.gz", shared(f"gpu/prefill_tbo_rank{rank}.json.gz")):
        cats = set(analysis_of(str(path)).kernels["category"].cast(pl.Utf8).unique().to_list())
        assert "comm.all_to_all" not in cats and "comm.send_recv" not in cats


@needs_shared
@pytest.mark.parametrize("path", [shared("gpu/decode_serial_rank0.json.gz"), shared("gpu/prefill_serial_rank1.json.gz"),
                                  shared("gpu/prefill_tbo_rank0.json.gz"), shared("gpu/tp2_dense_rank0.json.gz"),
                                  GPU_EXTRA / "decode_tbo_rank1.json.gz"], ids=trace_id)
def test_position_agrees_with_the_labels_where_there_are_labels(path):
    """Classify the annotated captures again with the launch-context rules switched off: the
    position rule alone gives every communication kernel the class its annotation gave."""
    trace = load(path)
    no_context = default_rules()
    no_context.context = []
    with_labels = classify(trace).sort("row")
    by_position = classify(trace, no_context).sort("row")
    comm = with_labels["role"] == "comm"
    assert comm.sum() > 0
    assert with_labels.filter(comm)["category"].cast(pl.Utf8).to_list() == \
        by_position.filter(comm)["category"].cast(pl.Utf8).to_list()
