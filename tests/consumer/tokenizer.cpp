// SPDX-License-Identifier: Apache-2.0
// Downstream use of qprob::tokenizer: links PCRE2, ICU and SentencePiece through the installed package.
#include <qprob/tokenizer/tokenizer.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc > 1) {  // qprob_consumer_tokenizer MODEL_DIR TEXT
    const auto tok = qprob::tokenizer::from_directory(argv[1]);
    for (auto id : tok.encode(argc > 2 ? argv[2] : "Hello world")) {
      std::printf("%d ", id);
    }
    std::printf("\n");
  }
  return 0;
}
