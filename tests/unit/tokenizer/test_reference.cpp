// SPDX-License-Identifier: Apache-2.0
// Every line of every reference_encodings.jsonl under shared/tokenizers: ids with and without special tokens
// and the decoded text must match the reference library exactly.

#include "reference_check.hpp"

using qprob::test::check_reference_folder;

TEST_CASE("gpt2 tokenizer.json matches tokenizers 0.23.2 on every reference line") {
  check_reference_folder("gpt2", qprob::tokenizer_format::tokenizer_json);
}

TEST_CASE("gpt2 vocab.json and merges.txt match the same reference lines") {
  check_reference_folder("gpt2", qprob::tokenizer_format::vocab_merges);
}

TEST_CASE("gpt-neox-20b tokenizer.json (NFC, ByteLevel, added whitespace tokens) matches every reference line") {
  check_reference_folder("gpt-neox-20b");
}

TEST_CASE("llama2-32k legacy layout (Prepend and Replace normalizer, byte_fallback) matches every reference line") {
  check_reference_folder("llama2-32k-legacy");
}

TEST_CASE("llama2-32k Metaspace layout (prepend_scheme always) matches every reference line") {
  check_reference_folder("llama2-32k-metaspace");
}

TEST_CASE("stories260K legacy layout matches every reference line") {
  check_reference_folder("stories260K-legacy");
}

TEST_CASE("stories260K Metaspace layout matches every reference line") {
  check_reference_folder("stories260K-metaspace");
}

TEST_CASE("llama2-32k tokenizer.model matches SentencePiece on every reference line") {
  check_reference_folder("llama2-32k-sentencepiece");
}

TEST_CASE("stories260K tokenizer.model matches SentencePiece on every reference line") {
  check_reference_folder("stories260K-sentencepiece");
}
