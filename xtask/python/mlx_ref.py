"""mlx-lm side of mlx-ft's reference comparisons, run by `cargo xtask` in the
reference venv (.ft/venv-mlx, see xtask/src/python.rs).

Subcommands (each prints JSON on stdout):

  blas                      which BLAS MLX reached and fp32 1024^3 matmul GFLOP/s
  logits MODEL_DIR OUT      logits of fixed prompts, written as the parity fixture
  encode MODEL_DIR          the chat prompt of `cargo xtask bench generate`, as ids
  generate MODEL_DIR IDS    greedy mlx_lm.stream_generate timings on the given ids
                            (one JSON line per run)
  adapters MODEL_DIR DATA_DIR OUT_DIR
                            trains three adapters with `mlx_lm lora` (LoRA with
                            mlx_lm's default targets, DoRA, LoRA on a base that
                            `mlx_lm convert -q` quantized) and writes each with
                            mlx_lm's logits under it (the ft-lora fixture)
  lora CONFIG_YAML          `mlx_lm lora --config CONFIG_YAML` as is, plus one
                            "MLX_REF_TRAIN {json}" / "MLX_REF_VAL {json}" line
                            per report of its trainer
"""

import argparse
import json
import sys
import time

import mlx.core as mx
import mlx.utils

# Logits slices kept per position: the first HEAD vocabulary entries, STRIDED
# entries spread over the whole vocabulary, and the TOP_K largest.
HEAD = 64
STRIDED = 64
TOP_K = 5

# Fixture prompts: (name, how to tokenize, content). "text" is encoded as is;
# "chat" goes through the model's chat template with a generation prompt.
FIXTURE_PROMPTS = [
    ("text-short", "text", "The quick brown fox jumps over the lazy dog, twice."),
    (
        "chat-default-system",
        "chat",
        [{"role": "user", "content": "What is the capital of France?"}],
    ),
    (
        "chat-multi-turn",
        "chat",
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a prime between 10 and 20."},
            {"role": "assistant", "content": "13 is a prime number between 10 and 20."},
            {
                "role": "user",
                "content": "And which planet is closest to the Sun?",
            },
        ],
    ),
]

# The prompt of `cargo xtask bench generate` (~128 tokens under SmolLM2's template).
BENCH_MESSAGES = [
    {
        "role": "system",
        "content": "You are a careful technical writer. You explain ideas plainly, "
        "with short paragraphs and concrete examples.",
    },
    {
        "role": "user",
        "content": "I am fine-tuning a small language model on my laptop with LoRA. "
        "Explain what a low-rank adapter is, why it needs far less memory than "
        "full fine-tuning, how the rank and the scale of the adapter change "
        "training, and what I should watch in the training and validation loss "
        "to know that the adapter is learning the task rather than memorizing "
        "my examples. Finish with three practical tips for choosing the learning "
        "rate, the number of iterations and the batch size.",
    },
]


def load(model_dir):
    from mlx_lm import load as mlx_lm_load

    return mlx_lm_load(model_dir)


def chat_ids(tokenizer, messages):
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def loaded_blas_libraries():
    """BLAS/LAPACK files mapped into this process (Linux: /proc/self/maps;
    macOS: the images dyld loaded, where MLX uses Accelerate)."""
    if sys.platform == "darwin":
        import ctypes

        dyld = ctypes.CDLL(None)
        dyld._dyld_image_count.restype = ctypes.c_uint32
        dyld._dyld_get_image_name.restype = ctypes.c_char_p
        dyld._dyld_get_image_name.argtypes = [ctypes.c_uint32]
        names = (
            dyld._dyld_get_image_name(i).decode()
            for i in range(dyld._dyld_image_count())
        )
        return sorted(
            {n for n in names if "blas" in n.lower() or "lapack" in n.lower() or "Accelerate" in n}
        )
    with open("/proc/self/maps") as maps:
        return sorted(
            {
                line.split()[-1]
                for line in maps
                if ("blas" in line or "lapack" in line) and "/" in line
            }
        )


def cmd_blas(_args):
    n = 1024
    a = mx.random.normal((n, n), dtype=mx.float32)
    b = mx.random.normal((n, n), dtype=mx.float32)
    mx.eval(a, b)
    for _ in range(3):
        mx.eval(a @ b)
    reps = 20
    start = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ b)
    seconds = (time.perf_counter() - start) / reps
    libraries = loaded_blas_libraries()
    print(
        json.dumps(
            {
                "mlx_version": mx.__version__,
                "matmul_1024_gflops": 2 * n**3 / seconds / 1e9,
                "blas_libraries": libraries,
                "openblas_loaded": any("scipy_openblas" in lib for lib in libraries),
            }
        )
    )


def position_slice(row, position):
    row = row.astype(mx.float32)
    vocab = row.shape[0]
    stride = max(1, vocab // STRIDED)
    top = mx.argsort(-row)[:TOP_K]
    return {
        "position": position,
        "head": row[:HEAD].tolist(),
        "stride": stride,
        "strided": row[::stride][:STRIDED].tolist(),
        "top_ids": top.tolist(),
        "top_values": row[top].tolist(),
    }


def cmd_logits(args):
    import mlx_lm

    model, tokenizer = load(args.model_dir)
    prompts = fixture_logits(model, tokenizer)
    fixture = {
        "about": "Logits of mlx_lm on the fp32 export of the default model "
        "(`ft convert --dtype float32 --dequantize`); written by "
        "`cargo xtask fixtures logits`, checked by crates/ft-model/tests/mlx_lm_parity.rs.",
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm.__version__,
        "vocab_size": int(model.args.vocab_size),
        "prompts": prompts,
    }
    with open(args.out, "w") as out:
        json.dump(fixture, out, indent=1)
        out.write("\n")
    print(json.dumps({"written": args.out, "prompts": [len(p["ids"]) for p in prompts]}))


def cmd_encode(args):
    _, tokenizer = load(args.model_dir)
    print(json.dumps({"ids": chat_ids(tokenizer, BENCH_MESSAGES)}))


def cmd_generate(args):
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(args.model_dir)
    ids = [int(i) for i in args.ids.split(",")]
    # Exactly max_tokens tokens on both sides: no end-of-sequence stop.
    tokenizer.eos_token_ids = []
    sampler = make_sampler(temp=0.0)
    for run in range(args.warmup + args.repeats):
        last = None
        tokens = []
        for response in stream_generate(
            model, tokenizer, mx.array(ids), max_tokens=args.max_tokens, sampler=sampler
        ):
            tokens.append(int(response.token))
            last = response
        if run < args.warmup:
            continue
        # mlx_lm's generation_tps counts every generated token over the time
        # after the first one; decode_seconds is that time, compared as is.
        decode_seconds = last.generation_tokens / last.generation_tps
        print(
            json.dumps(
                {
                    "prompt_tokens": last.prompt_tokens,
                    "prompt_tps": last.prompt_tps,
                    "generation_tokens": last.generation_tokens,
                    "generation_tps": last.generation_tps,
                    "decode_seconds": decode_seconds,
                    "decode_tps": (last.generation_tokens - 1) / decode_seconds,
                    "peak_memory_gb": last.peak_memory,
                    "tokens": tokens,
                }
            ),
            flush=True,
        )


def cmd_lora(args):
    # mlx_lm 0.32.2 prints its training reports as a rich table without the
    # peak memory, and its run() replaces any callback passed to it with
    # get_reporting_callbacks(...): route that to ours, then run mlx_lm's own
    # `lora` entry point, so CLI and YAML handling are exactly mlx_lm's.
    import mlx_lm.lora as lora
    from mlx_lm.tuner.callbacks import TrainingCallback

    class Report(TrainingCallback):
        def on_train_loss_report(self, train_info):
            print("MLX_REF_TRAIN " + json.dumps(train_info), flush=True)

        def on_val_loss_report(self, val_info):
            print("MLX_REF_VAL " + json.dumps(val_info), flush=True)

    lora.get_reporting_callbacks = lambda *_args, **_kwargs: Report()
    sys.argv = ["mlx_lm.lora", "--config", args.config]
    lora.main()


# The adapter fixtures: (name, extra `mlx_lm lora` options, quantized base).
# Everything else is mlx_lm's default (rank 8, scale 20, 16 layers, no
# `keys`: every linear layer of a block); a short run at a learning rate high
# enough that the adapter moves the logits far more than the tolerance.
ADAPTER_VARIANTS = [
    ("lora", [], False),
    ("dora", ["--fine-tune-type", "dora"], False),
    ("lora-4bit-base", [], True),
]
ADAPTER_TRAIN_OPTIONS = [
    "--iters", "12", "--batch-size", "2", "--learning-rate", "2e-3",
    "--val-batches", "1", "--steps-per-report", "4", "--steps-per-eval", "100",
    "--seed", "7", "--max-seq-length", "256",
]


def fixture_logits(model, tokenizer):
    prompts = []
    for name, kind, content in FIXTURE_PROMPTS:
        if kind == "text":
            ids = [int(i) for i in tokenizer.encode(content, add_special_tokens=False)]
        else:
            ids = chat_ids(tokenizer, content)
        logits = model(mx.array([ids]))[0].astype(mx.float32)
        mx.eval(logits)
        length = len(ids)
        positions = sorted({0, length // 2, length - 1})
        prompts.append(
            {
                "name": name,
                "ids": ids,
                "positions": [position_slice(logits[p], p) for p in positions],
            }
        )
    return prompts


def cmd_adapters(args):
    import os
    import shutil
    import subprocess

    import mlx_lm
    from mlx_lm import load as mlx_lm_load

    os.makedirs(args.out_dir, exist_ok=True)
    quantized_dir = os.path.join(args.out_dir, "work", "base-4bit")
    for name, options, quantized in ADAPTER_VARIANTS:
        base = args.model_dir
        if quantized:
            base = quantized_dir
            if os.path.exists(base):
                shutil.rmtree(base)
            subprocess.run(
                [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", args.model_dir,
                 "--mlx-path", base, "-q"],
                check=True,
            )
        work = os.path.join(args.out_dir, "work", name)
        if os.path.exists(work):
            shutil.rmtree(work)
        subprocess.run(
            [sys.executable, "-m", "mlx_lm", "lora", "--model", base, "--train",
             "--data", args.data_dir, "--adapter-path", work]
            + ADAPTER_TRAIN_OPTIONS + options,
            check=True,
        )
        target = os.path.join(args.out_dir, name)
        os.makedirs(target, exist_ok=True)
        for file in ("adapters.safetensors", "adapter_config.json"):
            shutil.copyfile(os.path.join(work, file), os.path.join(target, file))
        model, tokenizer = mlx_lm_load(base, adapter_path=target)
        model.eval()
        fixture = {
            "about": f"Logits of mlx_lm with the adapter `{name}` it trained "
            "(`mlx_lm lora`, options in xtask/python/mlx_ref.py); written by "
            "`cargo xtask fixtures mlx-lm-adapters`, checked by "
            "crates/ft-lora/tests/mlx_lm_adapters.rs.",
            "mlx_version": mx.__version__,
            "mlx_lm_version": mlx_lm.__version__,
            "lora_options": ADAPTER_TRAIN_OPTIONS + options,
            "quantized_base": quantized,
            "prompts": fixture_logits(model, tokenizer),
        }
        if quantized:
            # Sums of the quantized base's arrays, to check that ft quantizes
            # the same weights the same way.
            weights = dict(mlx.utils.tree_flatten(model.parameters()))
            fixture["base_checksums"] = {
                key: float(weights[key].astype(mx.float32).sum().item())
                for key in sorted(weights)
                if ("layers.0." in key or "embed_tokens" in key)
                and (key.endswith(".scales") or key.endswith(".biases"))
            }
        with open(os.path.join(target, "logits.json"), "w") as out:
            json.dump(fixture, out, indent=1)
        print(json.dumps({"variant": name, "dir": target}), flush=True)
    shutil.rmtree(os.path.join(args.out_dir, "work"))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("blas").set_defaults(func=cmd_blas)
    logits = sub.add_parser("logits")
    logits.add_argument("model_dir")
    logits.add_argument("out")
    logits.set_defaults(func=cmd_logits)
    encode = sub.add_parser("encode")
    encode.add_argument("model_dir")
    encode.set_defaults(func=cmd_encode)
    generate = sub.add_parser("generate")
    generate.add_argument("model_dir")
    generate.add_argument("ids", help="comma-separated prompt token ids")
    generate.add_argument("--max-tokens", type=int, default=128)
    generate.add_argument("--repeats", type=int, default=3)
    generate.add_argument("--warmup", type=int, default=1)
    generate.set_defaults(func=cmd_generate)
    adapters = sub.add_parser("adapters")
    adapters.add_argument("model_dir")
    adapters.add_argument("data_dir")
    adapters.add_argument("out_dir")
    adapters.set_defaults(func=cmd_adapters)
    lora = sub.add_parser("lora")
    lora.add_argument("config")
    lora.set_defaults(func=cmd_lora)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
