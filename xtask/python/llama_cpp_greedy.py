"""llama.cpp side of `cargo xtask check-gguf`, run in .ft/venv-llama-cpp
(llama-cpp-python, see xtask/src/check_gguf.rs).

    llama_cpp_greedy.py MODEL.gguf PROMPT MAX_TOKENS

Tokenizes PROMPT with the file's own tokenizer (BOS only if the file says
so, special tokens not parsed: a raw prompt), then decodes greedily
(temperature 0, top-k 1, no repetition penalty) until MAX_TOKENS tokens or
an end-of-generation token (kept, as `ft generate` keeps its stop token).
Prints one JSON object: prompt_ids, tokens, text, llama_cpp_version.
"""

import json
import sys

import llama_cpp
from llama_cpp import Llama


def main():
    path, prompt, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    llm = Llama(
        model_path=path,
        n_ctx=512,
        n_threads=2,
        seed=0,
        logits_all=False,
        verbose=False,
    )
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=False)
    tokens = []
    for token in llm.generate(
        prompt_ids,
        temp=0.0,
        top_k=1,
        top_p=1.0,
        min_p=0.0,
        repeat_penalty=1.0,
        reset=True,
    ):
        tokens.append(token)
        if len(tokens) >= max_tokens or llama_cpp.llama_token_is_eog(llm._model.vocab, token):
            break
    print(
        json.dumps(
            {
                "prompt_ids": prompt_ids,
                "tokens": tokens,
                "text": llm.detokenize(tokens).decode("utf-8", errors="replace"),
                "llama_cpp_version": llama_cpp.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
