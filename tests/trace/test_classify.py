"""The classification tables, rule by rule (each rule: names it must take, names it must leave)."""

from __future__ import annotations

import pytest

from dpprof.trace import classify as C

GPU_CASES = [
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication"),
    ("ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)", "communication"),
    ("void ncclKernel_Broadcast_RING_LL_Sum_int8_t(ncclDevComm*, unsigned long, ncclWork*)", "communication"),
    ("ncclDevKernel_Broadcast_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication"),
    ("rccl_AllReduce_kernel", "communication"),
    ("Memcpy HtoD (Pinned -> Device)", "memcpy_HtoD"),
    ("hipMemcpyHtoDAsync", "memcpy_HtoD"),
    ("Memcpy DtoH (Device -> Pinned)", "memcpy_DtoH"),
    ("Memcpy DtoD (Device -> Device)", "memcpy_DtoD"),
    ("Memcpy PtoP (Device -> Device)", "memcpy_PtoP"),
    ("hipMemcpyPeerAsync", "memcpy_PtoP"),
    ("Memset (Device)", "memset"),
    ("hipMemsetAsync", "memset"),
    ("Memcpy (Unknown)", "memcpy_other"),
]
COMPUTE = [
    "sm80_xmma_fprop_implicit_gemm_f32f32_f32f32_f32_nchwkcrs_nchw_tilesize128x32x8_stage3_cudnn",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>(int, ...)",
    "void at::native::(anonymous namespace)::CatArrayBatchedCopy_vectorized<...>(char*, ...)",
    "void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 512, true, 1>(...)",
    "my_custom_kernel_using_ncclish_name",  # "nccl" not at the start of the (unqualified) name
]


@pytest.mark.parametrize(("name", "cls"), GPU_CASES)
def test_gpu_rule(name: str, cls: str) -> None:
    assert C.GPU_CLASSES[C.classify_gpu_name(name)] == cls


@pytest.mark.parametrize("name", COMPUTE)
def test_gpu_compute_default(name: str) -> None:
    assert C.classify_gpu_name(name) == C.G_COMPUTE
    assert C.classify_gpu_name(name, default=-1) == -1


CPU_CASES = [
    ("ProfilerStep#3", "step"),
    ("enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__", "data_loading"),
    ("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", "data_loading"),
    ("DataParallel.forward", "dp_forward"),
    ("Scatter", "dp_scatter"),
    ("GatherBackward", "dp_scatter"),
    ("Broadcast", "dp_broadcast"),
    ("Gather", "dp_gather"),
    ("BroadcastBackward", "dp_reduce"),
    ("ReduceAddCoalesced", "dp_reduce"),
    ("dpprof::dp_scatter", "dp_scatter"),
    ("dpprof::dp_replicate", "dp_broadcast"),
    ("dpprof::dp_parallel_apply", "dp_parallel_apply"),
    ("dpprof::dp_gather", "dp_gather"),
    ("DistributedDataParallel.forward", "ddp_forward"),
    ("nccl:all_reduce", "collective"),
    ("gloo:all_reduce", "collective"),
    ("gloo:broadcast", "collective"),
    ("c10d::allreduce_", "collective"),
    ("c10d::broadcast_", "collective"),
    ("record_param_comms", "param_comms"),
    ("torch::distributed::reducer::mul_out", "ddp_reducer"),
    ("torch.distributed.ddp.reducer::copy_bucket_to_grad", "ddp_reducer"),
    ("Optimizer.step#SGD.step", "optimizer"),
    ("Optimizer.zero_grad#SGD.zero_grad", "optimizer"),
    # FSDP2 (fully_shard) and FSDP1 record_function names, as torch 2.14.1 writes them on the CPU.
    ("FSDP::all_gather (0)", "fsdp"),
    ("FSDP::post_backward_reduce", "fsdp"),
    ("FSDP::all_gather_copy_out", "fsdp"),
    ("FullyShardedDataParallel.forward", "fsdp"),
    ("FullyShardedDataParallel._pre_backward_hook", "fsdp"),
    ("cudaStreamSynchronize", "sync"),
    ("cudaDeviceSynchronize", "sync"),
    ("cudaEventSynchronize", "sync"),
    ("hipStreamSynchronize", "sync"),
    ("cuStreamSynchronize", "sync"),
    ("cudaMemcpy", "sync"),
]
ORDINARY = ["aten::conv2d", "autograd::engine::evaluate_function: GatherBackward", "aten::scatter",
            "ProfilerStep", "Scatterer", "cudaLaunchKernel", "MyGather", "cudaMemcpyAsync", "cudaStreamWaitEvent",
            "MyFSDP::thing", "aten::_local_scalar_dense"]


KINDS = [
    ("allreduce", "all_reduce"), ("_allgather_base", "all_gather"),
    ("allgather_into_tensor_coalesced", "all_gather"), ("reduce_scatter_tensor_coalesced", "reduce_scatter"),
    ("_reduce_scatter_base", "reduce_scatter"), ("broadcast", "broadcast"), ("reduce", "reduce"),
    ("alltoall_base", "all_to_all"), ("c10d::allreduce_", "all_reduce"), ("c10d::_reduce_scatter_base_", "reduce_scatter"),
    ("gloo:all_reduce", "all_reduce"), ("gloo:broadcast", "broadcast"), ("nccl:all_gather", "all_gather"),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "all_reduce"),
    ("ncclKernel_AllGather_RING_LL_Sum_int8(ncclWorkElem)", "all_gather"),
    ("ncclDevKernel_ReduceScatter_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "reduce_scatter"),
    ("ncclDevKernel_Broadcast_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "broadcast"),
    ("ncclDevKernel_Reduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "reduce"),
    ("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", "send_recv"),
    ("rcclKernel_AllReduce_RING_LL_Sum_float", "all_reduce"),
]


@pytest.mark.parametrize(("name", "kind"), KINDS)
def test_collective_kind(name: str, kind: str) -> None:
    assert C.collective_kind(name) == kind


@pytest.mark.parametrize("name", ["wait", "", None, "aten::mm", "nccl:coalesced"])
def test_not_a_collective_kind(name: str | None) -> None:
    assert C.collective_kind(name) is None


@pytest.mark.parametrize(("name", "cls"), CPU_CASES)
def test_cpu_rule(name: str, cls: str) -> None:
    assert C.CPU_CLASSES[C.classify_cpu_name(name)] == cls


@pytest.mark.parametrize("name", ORDINARY)
def test_cpu_ordinary(name: str) -> None:
    assert C.classify_cpu_name(name) == C.C_OP


def test_every_rule_is_exercised() -> None:
    gpu_hit = {cls for _, cls in GPU_CASES}
    cpu_hit = {cls for _, cls in CPU_CASES}
    assert {cls for cls, _ in C.GPU_RULES} <= gpu_hit
    assert {cls for cls, _ in C.CPU_RULES} <= cpu_hit


def test_classify_names_and_step_number() -> None:
    gpu, cpu = C.classify_names(["ProfilerStep#12", "Memset (Device)", "aten::mm"])
    assert gpu == [-1, C.G_MEMSET, -1]
    assert cpu == [C.C_STEP, C.C_OP, C.C_OP]
    assert C.step_number("ProfilerStep#12") == 12
    assert C.step_number("aten::mm") is None
