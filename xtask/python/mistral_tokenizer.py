"""Mistral-7B-Instruct-v0.3's tokenizer, from Mistral's own package.

PyPI `mistral-common` ships Mistral's v3 SentencePiece model
(`mistral_common/data/mistral_instruct_tokenizer_240323.model.v3`). This
script turns it into a Hugging Face `tokenizer.json` (transformers'
SentencePiece conversion, as the Hub repository's file was made) and checks
the result against mistral-common's own encoder, token for token, on texts
that exercise spaces, digits, bytes, unicode and the control tokens.

    python mistral_tokenizer.py OUT_DIR   # writes tokenizer.json, tokenizer_config.json
"""

import json
import pathlib
import sys

import mistral_common
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from tokenizers import AddedToken, Tokenizer, processors
from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

MODEL_FILE = "mistral_instruct_tokenizer_240323.model.v3"

SAMPLES = [
    "Hello world!",
    "  leading spaces and trailing  ",
    "Numbers: 12345 and 3.14159, dates 2026-12-02.",
    "Unicode: naïve café, 東京, emoji 🙂, ümlaut",
    "Tabs\tand\nnewlines\n\nand code: fn main() { println!(\"hi\"); }",
    "What is the capital of France? Answer in one word.",
    "JSON {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
]


def model_path():
    path = pathlib.Path(mistral_common.__file__).parent / "data" / MODEL_FILE
    if not path.is_file():
        sys.exit(f"mistral-common {mistral_common.__version__} has no {path}")
    return path


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    source = model_path()
    model_pb2 = import_protobuf()
    proto = model_pb2.ModelProto()
    proto.ParseFromString(source.read_bytes())
    pieces = [piece.piece for piece in proto.pieces]
    # transformers' conversion that follows the SentencePiece model's own
    # settings (normalizer, BPE merges ranked by piece score, byte fallback).
    vocab = {piece: index for index, piece in enumerate(pieces)}
    tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, merges=None, legacy=True)
    # Control pieces ([INST], [/INST], [TOOL_CALLS], ...) are special tokens.
    control = [
        AddedToken(piece.piece, special=True, normalized=False)
        for piece in proto.pieces
        if piece.type in (2, 3)  # UNKNOWN, CONTROL
    ]
    tokenizer.add_special_tokens(control)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "legacy": True,
        "model_max_length": 32768,
        "tokenizer_class": "LlamaTokenizer",
        "source": f"built by xtask/python/mistral_tokenizer.py from mistral-common "
        f"{mistral_common.__version__}'s {MODEL_FILE}",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))

    reference = MistralTokenizer.v3().instruct_tokenizer.tokenizer
    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    mismatches = []
    for text in SAMPLES:
        expected = reference.encode(text, bos=True, eos=False)
        got = ours.encode(text, add_special_tokens=True).ids
        if expected != got:
            mismatches.append({"text": text, "mistral_common": expected, "tokenizer_json": got})
    for name in ("[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]"):
        expected = reference.get_special_token(name)
        if ours.token_to_id(name) != expected:
            mismatches.append({"control_token": name, "mistral_common": expected, "tokenizer_json": ours.token_to_id(name)})
    vocab = ours.get_vocab_size(with_added_tokens=True)
    result = {
        "mistral_common": mistral_common.__version__,
        "source": str(source),
        "vocab_size": vocab,
        "samples": len(SAMPLES),
        "mismatches": mismatches,
        "hello_world": ours.encode("Hello world!", add_special_tokens=True).ids,
    }
    print(json.dumps(result))
    if mismatches or vocab != reference.n_words:
        sys.exit(f"tokenizer.json differs from mistral-common's encoder (vocab {vocab} vs {reference.n_words})")


if __name__ == "__main__":
    main()
