// SPDX-License-Identifier: Apache-2.0
#pragma once
// Compiler and target configuration shared by host and device code: function-space qualifiers, unrolling,
// and the macros that tell which side of an nvcc compilation we are on. Core layer; includes nothing.

#if defined(__CUDACC__)
#  define QPROB_HOST_DEVICE __host__ __device__
#  define QPROB_DEVICE      __device__
#  define QPROB_FORCEINLINE __forceinline__
#else
#  define QPROB_HOST_DEVICE
#  define QPROB_DEVICE
#  define QPROB_FORCEINLINE inline
#endif

// True while nvcc compiles device code (any architecture).
#if defined(__CUDA_ARCH__)
#  define QPROB_DEVICE_COMPILATION 1
#else
#  define QPROB_DEVICE_COMPILATION 0
#endif

#if defined(__CUDA_ARCH__) || defined(__clang__)
#  define QPROB_UNROLL _Pragma("unroll")
#else
#  define QPROB_UNROLL
#endif

// Hopper-only instructions (wgmma, setmaxnreg) are compiled only for the sm_90a feature set; code that needs
// them tests this and traps otherwise, so a wrong -arch fails loudly instead of silently taking a slow path.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#  define QPROB_SM90A 1
#else
#  define QPROB_SM90A 0
#endif
