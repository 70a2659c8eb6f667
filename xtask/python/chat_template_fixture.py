"""Renders committed conversations with a GGUF model's chat template the way
Hugging Face transformers does, for ft-data's chat-template parity test.

Usage: python chat_template_fixture.py MODEL.gguf CONVERSATIONS.json OUT.json

The template, BOS and EOS come from the GGUF metadata (read with MLX);
rendering is transformers' own `render_jinja_template` (the function behind
`apply_chat_template`: a sandboxed Jinja environment with trim_blocks and
lstrip_blocks), with the special tokens passed as `apply_chat_template`
passes them. Run by `cargo xtask fixtures chat-template`.
"""

import json
import os
import sys

import mlx.core as mx
import transformers
from transformers.utils.chat_template_utils import render_jinja_template


def main() -> None:
    gguf, conversations_path, out_path = sys.argv[1:4]
    _, meta = mx.load(gguf, return_metadata=True)
    template = meta["tokenizer.chat_template"]
    tokens = meta["tokenizer.ggml.tokens"]
    bos = tokens[int(meta["tokenizer.ggml.bos_token_id"].item())]
    eos = tokens[int(meta["tokenizer.ggml.eos_token_id"].item())]
    with open(conversations_path, encoding="utf-8") as f:
        conversations = json.load(f)
    cases = []
    for case in conversations:
        rendered, _ = render_jinja_template(
            conversations=[case["messages"]],
            chat_template=template,
            add_generation_prompt=case["add_generation_prompt"],
            bos_token=bos,
            eos_token=eos,
        )
        cases.append({**case, "expected": rendered[0]})
    fixture = {
        "generated_by": "cargo xtask fixtures chat-template "
        f"(transformers {transformers.__version__} render_jinja_template)",
        "model": os.path.basename(gguf),
        "template": template,
        "bos_token": bos,
        "eos_token": eos,
        "cases": cases,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{out_path}: {len(cases)} conversations")


if __name__ == "__main__":
    main()
