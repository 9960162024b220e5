// SPDX-License-Identifier: Apache-2.0
#pragma once
// Umbrella of the headers that compile with a plain C++20 host compiler and need no CUDA headers: precision
// policies, numeric types, tensor views, errors, packing, readers (safetensors, config.json, task data), the
// metrics and the double-precision references. The tokenizers are separate: <qprob/tokenizer/tokenizer.hpp>,
// target qprob::tokenizer (PCRE2, ICU, SentencePiece).

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
#include <qprob/io/safetensors.hpp>
#include <qprob/metrics/reference.hpp>
#include <qprob/metrics/seed_compat.hpp>
#include <qprob/metrics/stats.hpp>
#include <qprob/metrics/token_divergence.hpp>
#include <qprob/metrics/types.hpp>
#include <qprob/model/config.hpp>
#include <qprob/model/weights.hpp>
#include <qprob/quant/pack.hpp>
#include <qprob/reference/gptq.hpp>
#include <qprob/reference/rtn.hpp>
#include <qprob/tasks/load.hpp>
#include <qprob/version.hpp>
