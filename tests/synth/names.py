"""Op, annotation and kernel names as they appear in the real H200 traces (tests/data/h200/) and, for the
multi-GPU NCCL kernels no fixture has, as NCCL 2.28 names them (``ncclDevKernel_*``)."""

from __future__ import annotations

PROFILER_STEP = "ProfilerStep#{}"
DATALOADER_NEXT = "enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__"
ZERO_GRAD = "Optimizer.zero_grad#SGD.zero_grad"
OPTIMIZER_STEP = "Optimizer.step#SGD.step"
DP_FORWARD = "DataParallel.forward"
DDP_FORWARD = "DistributedDataParallel.forward"
EVALUATE = "autograd::engine::evaluate_function: {}"

CONV_FWD = ("sm90_xmma_fprop_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize64x64x32_warpgroupsize1x1x1"
            "_g1_execute_segment_k_off_kernel__5x_cudnn")
BN_FWD = ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 128, true, 1, true>(cudnnTensorStruct, "
          "float const*, cudnnTensorStruct, float*, float const*, float const*, float, float, float*, float*, "
          "float*, float*, float, float)")
MAXPOOL_FWD = ("void at::native::(anonymous namespace)::max_pool_forward_nchw<float, int>(int, float const*, "
               "long, long, long, int, int, int, int, int, int, int, int, int, int, float*, long*)")
CONV_DGRAD = ("sm80_xmma_dgrad_implicit_gemm_tf32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize64x32x64_stage5_warpsize"
              "2x2x1_g1_tensor16x8x8_execute_kernel__5x_cudnn")
CONV_WGRAD = ("sm90_xmma_wgrad_indexed_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize128x128x32_"
              "warpgroupsize1x1x1_g1_execute_segment_k_off_kernel__5x_cudnn")
BN_BWD = ("void cudnn::bn_bw_1C11_kernel_new<float, float, float2, 128, true, 1>(float, float, float, float, "
          "cudnnTensorStruct, float const*, cudnnTensorStruct, float const*, cudnnTensorStruct, float*, "
          "float const*, float*, float*, float const*, float const*, float)")
CAT = ("void at::native::(anonymous namespace)::CatArrayBatchedCopy_alignedK_contig<at::native::(anonymous "
       "namespace)::OpaqueType<4u>, unsigned int, 1, 128, 1, 16>(at::native::(anonymous namespace)::OpaqueType"
       "<4u>*, at::native::(anonymous namespace)::CatArrInputTensorMetadata<at::native::(anonymous namespace)::"
       "OpaqueType<4u>, unsigned int, 128, 1>, at::native::(anonymous namespace)::TensorSizeStride<unsigned "
       "int, 4u>, int, unsigned int)")
FOREACH_MUL = ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous "
               "namespace)::TensorListMetadata<1>, at::native::(anonymous namespace)::BinaryOpScalarFunctor"
               "<float, 1, 1, 0>, std::multiplies<float>, float>(at::native::(anonymous namespace)::"
               "TensorListMetadata<1>, at::native::(anonymous namespace)::BinaryOpScalarFunctor<float, 1, 1, "
               "0>, std::multiplies<float>, float)")
FILL = ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*, "
        "1ul> >(int, at::native::FillFunctor<float>, std::array<char*, 1ul>)")
NLL_BWD = ("void at::native::(anonymous namespace)::nll_loss_backward_reduce_cuda_kernel_2d<float, long>(float*, "
           "float const*, long const*, float const*, float const*, bool, int, int, long, long)")
LOSS_FWD = ("void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d<float, float, long>("
            "float*, float*, float const*, long const*, float const*, bool, long, long, long, long)")

FWD_KERNELS = (CONV_FWD, BN_FWD, CONV_FWD, BN_FWD, MAXPOOL_FWD, CONV_FWD)
BWD_KERNELS = (CONV_DGRAD, CONV_WGRAD, BN_BWD, CONV_DGRAD, CONV_WGRAD, BN_BWD, CONV_DGRAD, CONV_WGRAD)
BWD_OPS = ("ConvolutionBackward0", "ConvolutionBackward0", "CudnnBatchNormBackward0", "ConvolutionBackward0",
           "ConvolutionBackward0", "CudnnBatchNormBackward0", "ConvolutionBackward0", "ConvolutionBackward0")
FWD_OPS = ("aten::cudnn_convolution", "aten::cudnn_batch_norm", "aten::cudnn_convolution",
           "aten::cudnn_batch_norm", "aten::max_pool2d_with_indices", "aten::cudnn_convolution")

NCCL_BROADCAST = "ncclDevKernel_Broadcast_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
NCCL_REDUCE = "ncclDevKernel_Reduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
NCCL_ALLREDUCE = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
