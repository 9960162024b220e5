// SPDX-License-Identifier: Apache-2.0
#pragma once
// lm-evaluation-harness's tokenization of loglikelihood requests (HFLM with a causal model), on top of
// qprob::tokenizer, so that qprob scores exactly the tokens lm-eval scores. docs/scoring.md has the contract
// with worked examples. In lm-eval's terms (lm_eval/api/model.py, lm_eval/models/huggingface.py, 0.4.x):
//
//   loglikelihood(context, continuation):
//     context == ""  : cont = encode(continuation, add_special_tokens=False)
//                      (ctx, cont) = ([prefix], cont) if cont[0] != prefix else (cont[:1], cont[1:])
//                      prefix = prefix_token_id: a custom id, else BOS, else EOS
//     otherwise      : _encode_pair: n = number of trailing whitespace characters of context (str.rstrip);
//                      they move to the front of the continuation; whole = tok_encode(context + continuation),
//                      ctx = tok_encode(context), cont = whole[len(ctx):]
//   tok_encode(s)    : tokenizer.encode(s) with the tokenizer's own special-token rule (add_special_tokens
//                      left at its default, so BOS for Llama tokenizers whose config says add_bos_token),
//                      or add_special_tokens = add_bos_token when lm-eval's add_bos_token argument is given
//                      (true also makes the tokenizer add BOS); but never a second BOS: when s starts with
//                      decode(prefix), special tokens are not added.
//   _loglikelihood_tokens: input = (ctx + cont)[-(max_length + 1):][:-1]; the last len(cont) logit rows
//                      score cont (reference/forward.hpp, loglikelihood()).
//
// Note that cont = whole[len(ctx):] is a split by COUNT, as lm-eval does: when the merge of context and
// continuation changes the context's last token, the continuation tokens are still whole's tail.
// Host only; needs the qprob::tokenizer target (PCRE2, ICU, SentencePiece).

#include <qprob/core/error.hpp>
#include <qprob/tokenizer/tokenizer.hpp>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qprob::model {

/// lm-eval's HFLM arguments that change tokenization.
struct encode_options {
  /// lm-eval's add_bos_token: nullopt (default) leaves the tokenizer's own rule; true/false forces
  /// add_special_tokens on every encode of a non-empty context.
  std::optional<bool> add_bos_token;
  /// lm-eval's prefix_token_id (the context of an empty-context request); default BOS, else EOS.
  std::optional<tokenizer::id_type> prefix_token_id;
};

/// The token ids of one request: what the model sees is context followed by continuation.
struct encoded_request {
  std::vector<tokenizer::id_type> context;
  std::vector<tokenizer::id_type> continuation;
  friend bool operator==(const encoded_request&, const encoded_request&) = default;
};

namespace detail {

/// Byte length of the trailing run of characters Python's str.isspace() accepts (what str.rstrip() removes).
/// `text` is valid UTF-8 (the tokenizer checks).
inline std::size_t trailing_whitespace_bytes(std::string_view text) {
  const auto is_space = [](std::uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
  };
  std::size_t end = text.size();
  while (end > 0) {
    std::size_t start = end - 1;  // back up to the lead byte of the last character
    while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) {
      --start;
    }
    const auto* b  = reinterpret_cast<const unsigned char*>(text.data()) + start;
    const auto len = end - start;
    std::uint32_t cp = len == 1 ? b[0]
                       : len == 2 ? ((b[0] & 0x1Fu) << 6) | (b[1] & 0x3Fu)
                       : len == 3 ? ((b[0] & 0x0Fu) << 12) | ((b[1] & 0x3Fu) << 6) | (b[2] & 0x3Fu)
                                  : ((b[0] & 0x07u) << 18) | ((b[1] & 0x3Fu) << 12) | ((b[2] & 0x3Fu) << 6) | (b[3] & 0x3Fu);
    if (!is_space(cp)) {
      break;
    }
    end = start;
  }
  return text.size() - end;
}

}  // namespace detail

/// lm-eval's prefix_token_id: options.prefix_token_id, else BOS, else EOS.
/// @throws invalid_argument when the tokenizer has neither.
inline tokenizer::id_type prefix_token_id(const tokenizer& tok, const encode_options& options = {}) {
  if (options.prefix_token_id) {
    return *options.prefix_token_id;
  }
  if (const auto b = tok.bos_id()) {
    return *b;
  }
  if (const auto e = tok.eos_id()) {
    return *e;
  }
  throw invalid_argument("prefix_token_id: the tokenizer has neither a BOS nor an EOS token; set encode_options::prefix_token_id");
}

/// lm-eval's tok_encode(s) with add_special_tokens left unset.
inline std::vector<tokenizer::id_type> lm_eval_tok_encode(const tokenizer& tok, std::string_view s,
                                                          const encode_options& options = {}) {
  const std::vector<tokenizer::id_type> prefix{prefix_token_id(tok, options)};
  if (s.starts_with(tok.decode(prefix))) {
    return tok.encode(s, false);  // has_bos_prefix: the text already carries the BOS string
  }
  if (!options.add_bos_token) {
    return tok.encode(s, true);  // the tokenizer's own rule (tokenizer_config.json add_bos_token, template)
  }
  auto ids = tok.encode(s, *options.add_bos_token);
  // lm-eval also hands add_bos_token=True to AutoTokenizer.from_pretrained, which makes a tokenizer that
  // would not add BOS by its config add it; qprob cannot rebuild the tokenizer, so it prepends BOS itself.
  if (*options.add_bos_token && tok.bos_id() && (ids.empty() || ids.front() != *tok.bos_id())) {
    ids.insert(ids.begin(), *tok.bos_id());
  }
  return ids;
}

/// Token ids of one loglikelihood request exactly as lm-eval builds them (see the header comment).
/// @throws invalid_argument when the result cannot be scored: an empty continuation, or an empty context
///         (a whitespace-only context with a tokenizer that adds no BOS), which lm-eval asserts against.
inline encoded_request encode_request(const tokenizer& tok, std::string_view context, std::string_view continuation,
                                      const encode_options& options = {}) {
  encoded_request r;
  if (context.empty()) {
    auto cont         = tok.encode(continuation, false);
    const auto prefix = prefix_token_id(tok, options);
    QPROB_CHECK(!cont.empty(), "encode_request: the continuation encodes to no token");
    if (cont.front() != prefix) {
      r.context = {prefix};
      r.continuation = std::move(cont);
    } else {
      r.context.assign(cont.begin(), cont.begin() + 1);
      r.continuation.assign(cont.begin() + 1, cont.end());
    }
  } else {
    const auto n = detail::trailing_whitespace_bytes(context);
    std::string ctx(context.substr(0, context.size() - n));
    std::string cont = std::string(context.substr(context.size() - n)) + std::string(continuation);
    const auto whole = lm_eval_tok_encode(tok, ctx + cont, options);
    r.context        = lm_eval_tok_encode(tok, ctx, options);
    const auto split = std::min(r.context.size(), whole.size());
    r.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(split), whole.end());
  }
  QPROB_CHECK(!r.context.empty(), "encode_request: the context encodes to no token (context \"",
              std::string(context), "\"); lm-eval asserts len(context_enc) > 0");
  QPROB_CHECK(!r.continuation.empty(), "encode_request: the continuation encodes to no token (continuation \"",
              std::string(continuation), "\")");
  return r;
}

/// The model input of a request as lm-eval's _loglikelihood_tokens builds it.
struct model_input {
  std::vector<tokenizer::id_type> tokens;  ///< (context + continuation)[-(max_length + 1):][:-1]
  std::int64_t continuation_rows = 0;      ///< the last this-many rows of the logits score the continuation
};

/// @throws invalid_argument when the continuation is longer than max_length (lm-eval asserts it).
inline model_input lm_eval_model_input(const encoded_request& r, std::int64_t max_length) {
  QPROB_CHECK(max_length > 0, "lm_eval_model_input: max_length=", max_length);
  QPROB_CHECK_LE(static_cast<std::int64_t>(r.continuation.size()), max_length, "continuation longer than max_length");
  std::vector<tokenizer::id_type> all = r.context;
  all.insert(all.end(), r.continuation.begin(), r.continuation.end());
  const auto total = static_cast<std::int64_t>(all.size());
  const auto begin = std::max<std::int64_t>(0, total - (max_length + 1));
  model_input in;
  in.tokens.assign(all.begin() + begin, all.end() - 1);
  in.continuation_rows = static_cast<std::int64_t>(r.continuation.size());
  return in;
}

}  // namespace qprob::model
