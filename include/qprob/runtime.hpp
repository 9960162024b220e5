// SPDX-License-Identifier: Apache-2.0
#pragma once
// Umbrella for host code compiled by a plain C++ compiler that drives the GPU through the CUDA runtime and the
// prebuilt instantiations of qprob::kernels (link it; preset policies only). Needs the CUDA headers, not nvcc.

#include <qprob/host.hpp>

#include <qprob/core/cublas.hpp>
#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device.hpp>
#include <qprob/core/device_buffer.hpp>
#include <qprob/core/launch.hpp>
#include <qprob/core/stream.hpp>
#include <qprob/io/upload.hpp>
#include <qprob/quant/gptq.hpp>
#include <qprob/quant/rtn.hpp>
