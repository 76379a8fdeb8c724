"""Reference for test_bert_torch: the BERT model of tfuse rebuilt from PyTorch modules in
float64 (nn.TransformerEncoderLayer is post-LN with packed Q, K, V projections, as in tfuse).

Usage: bert_torch_ref.py INPUT OUTPUT

INPUT is little-endian and written by test_bert_torch.c. It contains int32 V, T, d, L, h, f,
B, then float64 ln_eps, the float32 parameters in tfuse's buffer order, and int32 ids (B, T),
lengths (B) and labels (B, T). OUTPUT: float64 logits (B, T, V) at every position, the mean masked cross-entropy,
and its gradient laid out like the parameters.
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F


def param_shapes(V, T, d, L, f):
    return [("tok_emb", (V, d)), ("pos_emb", (T, d)), ("emb_ln_g", (d,)), ("emb_ln_b", (d,)),
            ("qkv_w", (L, 3 * d, d)), ("qkv_b", (L, 3 * d)), ("proj_w", (L, d, d)),
            ("proj_b", (L, d)), ("ln1_g", (L, d)), ("ln1_b", (L, d)), ("fc1_w", (L, f, d)),
            ("fc1_b", (L, f)), ("fc2_w", (L, d, f)), ("fc2_b", (L, d)), ("ln2_g", (L, d)),
            ("ln2_b", (L, d)), ("head_w", (d, d)), ("head_b", (d,)), ("head_ln_g", (d,)),
            ("head_ln_b", (d,)), ("decoder_b", (V,))]


def main(inp, out):
    raw = open(inp, "rb").read()
    V, T, d, L, h, f, B = np.frombuffer(raw, "<i4", 7, 0)
    eps = float(np.frombuffer(raw, "<f8", 1, 28)[0])
    off = 36
    shapes = param_shapes(V, T, d, L, f)
    count = sum(int(np.prod(s)) for _, s in shapes)
    flat = np.frombuffer(raw, "<f4", count, off).astype(np.float64)
    off += 4 * count
    ids = np.frombuffer(raw, "<i4", B * T, off).reshape(B, T).astype(np.int64)
    off += 4 * B * T
    lengths = np.frombuffer(raw, "<i4", B, off).astype(np.int64)
    off += 4 * B
    labels = np.frombuffer(raw, "<i4", B * T, off).reshape(B, T).astype(np.int64)

    p, k = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        p[name] = torch.tensor(flat[k:k + n].reshape(shape), requires_grad=True)
        k += n

    layers = []
    for l in range(L):
        layer = torch.nn.TransformerEncoderLayer(d, h, f, dropout=0.0, activation="gelu",
                                                 layer_norm_eps=eps, batch_first=True,
                                                 norm_first=False).double()
        with torch.no_grad():
            layer.self_attn.in_proj_weight.copy_(p["qkv_w"][l])
            layer.self_attn.in_proj_bias.copy_(p["qkv_b"][l])
            layer.self_attn.out_proj.weight.copy_(p["proj_w"][l])
            layer.self_attn.out_proj.bias.copy_(p["proj_b"][l])
            layer.linear1.weight.copy_(p["fc1_w"][l])
            layer.linear1.bias.copy_(p["fc1_b"][l])
            layer.linear2.weight.copy_(p["fc2_w"][l])
            layer.linear2.bias.copy_(p["fc2_b"][l])
            layer.norm1.weight.copy_(p["ln1_g"][l])
            layer.norm1.bias.copy_(p["ln1_b"][l])
            layer.norm2.weight.copy_(p["ln2_g"][l])
            layer.norm2.bias.copy_(p["ln2_b"][l])
        layer.train()
        layers.append(layer)

    pad = torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]
    x = F.embedding(torch.tensor(ids), p["tok_emb"]) + p["pos_emb"][None]
    x = F.layer_norm(x, (d,), p["emb_ln_g"], p["emb_ln_b"], eps)
    for layer in layers:
        x = layer(x, src_key_padding_mask=pad)
    z = F.gelu(F.linear(x, p["head_w"], p["head_b"]))
    z = F.layer_norm(z, (d,), p["head_ln_g"], p["head_ln_b"], eps)
    logits = F.linear(z, p["tok_emb"], p["decoder_b"])
    loss = F.cross_entropy(logits.reshape(-1, V), torch.tensor(labels).reshape(-1),
                           ignore_index=-1)
    loss.backward()

    # layer parameters are copies, so collect their gradients into the stacked tensors
    grads = {name: p[name].grad if p[name].grad is not None else torch.zeros_like(p[name])
             for name, _ in shapes}
    per_layer = [("qkv_w", "self_attn.in_proj_weight"), ("qkv_b", "self_attn.in_proj_bias"),
                 ("proj_w", "self_attn.out_proj.weight"), ("proj_b", "self_attn.out_proj.bias"),
                 ("fc1_w", "linear1.weight"), ("fc1_b", "linear1.bias"),
                 ("fc2_w", "linear2.weight"), ("fc2_b", "linear2.bias"),
                 ("ln1_g", "norm1.weight"), ("ln1_b", "norm1.bias"),
                 ("ln2_g", "norm2.weight"), ("ln2_b", "norm2.bias")]
    for l, layer in enumerate(layers):
        named = dict(layer.named_parameters())
        for name, module_name in per_layer:
            grads[name] = grads[name].clone()
            grads[name][l] = named[module_name].grad
    flat_grad = torch.cat([grads[name].reshape(-1) for name, _ in shapes])

    with open(out, "wb") as fh:
        fh.write(logits.detach().numpy().astype("<f8").tobytes())
        fh.write(np.array([loss.item()], "<f8").tobytes())
        fh.write(flat_grad.numpy().astype("<f8").tobytes())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: bert_torch_ref.py INPUT OUTPUT")
    main(sys.argv[1], sys.argv[2])
