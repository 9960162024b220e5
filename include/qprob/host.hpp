// SPDX-License-Identifier: Apache-2.0
#pragma once
// Umbrella of the headers that compile with a plain C++20 host compiler and need no CUDA headers: precision
// policies, numeric types, tensor views, errors, packing and the double-precision references.

#include <qprob/core/config.hpp>
#include <qprob/core/dtype.hpp>
#include <qprob/core/error.hpp>
#include <qprob/core/math.hpp>
#include <qprob/core/numeric.hpp>
#include <qprob/core/tensor_view.hpp>
#include <qprob/policy/name.hpp>
#include <qprob/policy/precision.hpp>
#include <qprob/policy/presets.hpp>
#include <qprob/policy/tuning.hpp>
#include <qprob/quant/pack.hpp>
#include <qprob/reference/rtn.hpp>
#include <qprob/version.hpp>
