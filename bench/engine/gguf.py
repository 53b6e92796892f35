"""Write a llama-architecture GGUF v3 file with seeded random F32 weights.

A real model's shape and layout (llama.cpp loads it, maps it, and generates
tokens from it), at a size that exercises loading: the default is 10 blocks
of n_embd 2048 and n_ff 5632 with an 8,192-token vocabulary, 2.19 GB. No
package beyond the standard library: weights are random bits with their
exponent fixed, so every value is ±[2^-6, 2^-5), small enough that the
activations stay finite through the blocks and greedy decoding picks
varied tokens.

Tensors are stored in the order Hugging Face checkpoints list them (each
block's tensors sorted by their original names), which is also how most
llama GGUFs come: not the order inference touches them (compute_order).

    digest = write(path, seed=1)          # sha256 hex
    ranges = layout()                     # [(name, offset, nbytes), ...]
    python3 gguf.py OUT [--seed N] [--layers N]
"""
import argparse
import hashlib
import os
import random
import struct
import sys

ALIGN = 32
CHUNK = 1 << 20
MAGIC = b"GGUF"
VERSION = 3

# GGUF value types
U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9
GGML_F32 = 0
# llama.cpp token types
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_BYTE = 1, 2, 3, 6

# One little-endian float32 word: keep sign and mantissa, exponent 121 (2^-6).
_KEEP = int.from_bytes(b"\xff\xff\x7f\x80" * (CHUNK // 4), "little")
_EXP = int.from_bytes(b"\x00\x00\x80\x3c" * (CHUNK // 4), "little")

DEFAULT = {"n_embd": 2048, "n_ff": 5632, "n_layer": 10, "n_head": 16, "n_head_kv": 16,
           "n_vocab": 8192, "n_ctx": 2048}

# Per block, in the order inference uses them (llama.cpp's llm_build_llama).
BLOCK_COMPUTE = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
# Per block, in file order: the Hugging Face names sorted (input_layernorm,
# mlp.down/gate/up_proj, post_attention_layernorm, self_attn.k/o/q/v_proj).
BLOCK_FILE = ("attn_norm", "ffn_down", "ffn_gate", "ffn_up", "ffn_norm",
              "attn_k", "attn_output", "attn_q", "attn_v")


def _str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key, vtype, value):
    out = _str(key) + struct.pack("<I", vtype)
    if vtype == STRING:
        return out + _str(value)
    if vtype == ARRAY:
        etype, items = value
        out += struct.pack("<IQ", etype, len(items))
        if etype == STRING:
            return out + b"".join(_str(x) for x in items)
        fmt = {F32: "<%df", I32: "<%di"}[etype]
        return out + struct.pack(fmt % len(items), *items)
    fmt = {U32: "<I", I32: "<i", F32: "<f", BOOL: "<?"}[vtype]
    return out + struct.pack(fmt, value)


def vocab(n):
    """A sentencepiece-style vocabulary: <unk> <s> </s>, the 256 byte tokens
    (llama.cpp needs them for byte fallback), then word pieces."""
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % i for i in range(256)]
    types = [TT_UNKNOWN, TT_CONTROL, TT_CONTROL] + [TT_BYTE] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["\u2581" + c for c in letters] + list(letters)
    i = 0
    while len(tokens) + len(words) < n:
        a, b = letters[i % 26], letters[(i // 26) % 26]
        words.append(("\u2581" if i % 2 else "") + b + a + str(i // 676 or ""))
        i += 1
    tokens += words[:n - len(tokens)]
    types += [TT_NORMAL] * (n - len(types))
    scores = [0.0] * 259 + [-float(len(t)) for t in tokens[259:]]
    return tokens, scores, types


def tensors(p):
    """(name, shape in ggml order) in file order."""
    e, f, v = p["n_embd"], p["n_ff"], p["n_vocab"]
    kv = e * p["n_head_kv"] // p["n_head"]
    shape = {"attn_norm": [e], "ffn_norm": [e], "attn_q": [e, e], "attn_k": [e, kv],
             "attn_v": [e, kv], "attn_output": [e, e], "ffn_gate": [e, f], "ffn_up": [e, f],
             "ffn_down": [f, e]}
    out = [("token_embd.weight", [e, v])]
    for i in range(p["n_layer"]):
        out += [("blk.%d.%s.weight" % (i, t), shape[t]) for t in BLOCK_FILE]
    out += [("output_norm.weight", [e]), ("output.weight", [e, v])]
    return out


def compute_order(names):
    """The tensor names in the order a forward pass reads them."""
    blocks = sorted({int(n.split(".")[1]) for n in names if n.startswith("blk.")})
    order = ["token_embd.weight"]
    for i in blocks:
        order += ["blk.%d.%s.weight" % (i, t) for t in BLOCK_COMPUTE]
    return order + ["output_norm.weight", "output.weight"]


def header(p, infos):
    tokens, scores, types = vocab(p["n_vocab"])
    kvs = [
        _kv("general.architecture", STRING, "llama"),
        _kv("general.name", STRING, "blobfs bench random llama"),
        _kv("general.file_type", U32, 0),
        _kv("general.alignment", U32, ALIGN),
        _kv("llama.context_length", U32, p["n_ctx"]),
        _kv("llama.embedding_length", U32, p["n_embd"]),
        _kv("llama.block_count", U32, p["n_layer"]),
        _kv("llama.feed_forward_length", U32, p["n_ff"]),
        _kv("llama.attention.head_count", U32, p["n_head"]),
        _kv("llama.attention.head_count_kv", U32, p["n_head_kv"]),
        _kv("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        _kv("llama.rope.dimension_count", U32, p["n_embd"] // p["n_head"]),
        _kv("llama.vocab_size", U32, p["n_vocab"]),
        _kv("tokenizer.ggml.model", STRING, "llama"),
        _kv("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        _kv("tokenizer.ggml.scores", ARRAY, (F32, scores)),
        _kv("tokenizer.ggml.token_type", ARRAY, (I32, types)),
        _kv("tokenizer.ggml.bos_token_id", U32, 1),
        _kv("tokenizer.ggml.eos_token_id", U32, 2),
        _kv("tokenizer.ggml.unknown_token_id", U32, 0),
        _kv("tokenizer.ggml.add_bos_token", BOOL, True),
    ]
    out = MAGIC + struct.pack("<IQQ", VERSION, len(infos), len(kvs)) + b"".join(kvs)
    for name, shape, off in infos:
        out += _str(name) + struct.pack("<I", len(shape))
        out += struct.pack("<%dQ" % len(shape), *shape) + struct.pack("<IQ", GGML_F32, off)
    return out + b"\0" * (-len(out) % ALIGN)


def _weights(rng, nbytes):
    """NBYTES of float32 weights ±[2^-6, 2^-5) from RNG, in chunks."""
    while nbytes:
        n = min(CHUNK, nbytes)
        bits = int.from_bytes(rng.randbytes(CHUNK), "little")
        yield ((bits & _KEEP) | _EXP).to_bytes(CHUNK, "little")[:n]
        nbytes -= n


def plan(**params):
    """The header's bytes and [(name, shape, offset, nbytes)] in file order, with
    absolute file offsets."""
    p = dict(DEFAULT, **params)
    infos, off = [], 0
    for name, shape in tensors(p):
        nbytes = 4
        for d in shape:
            nbytes *= d
        infos.append((name, shape, off, nbytes))
        off += nbytes + (-nbytes % ALIGN)
    head = header(p, [(name, shape, toff) for name, shape, toff, _ in infos])
    return head, [(name, shape, len(head) + toff, n) for name, shape, toff, n in infos]


def layout(**params):
    """[(name, offset, nbytes)] of the file write() makes with these parameters."""
    return [(name, off, n) for name, _, off, n in plan(**params)[1]]


def write(path, seed=1, **params):
    """Write the model to PATH; return its sha256 (hex)."""
    head, infos = plan(**params)
    rng = random.Random(seed)
    sha = hashlib.sha256()
    tmp = "%s.part%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        def put(b):
            sha.update(b)
            f.write(b)
        put(head)
        for name, shape, off, nbytes in infos:
            if len(shape) == 1:      # norm weights: ones
                put(struct.pack("<%df" % shape[0], *([1.0] * shape[0])))
            else:
                for piece in _weights(rng, nbytes):
                    put(piece)
            put(b"\0" * (-nbytes % ALIGN))
    os.replace(tmp, path)
    return sha.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--layers", type=int, default=DEFAULT["n_layer"])
    a = ap.parse_args()
    digest = write(a.out, a.seed, n_layer=a.layers)
    print("sha256:%s %d bytes" % (digest, os.path.getsize(a.out)), file=sys.stderr)


if __name__ == "__main__":
    main()
