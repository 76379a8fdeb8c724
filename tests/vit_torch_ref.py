"""Independent reference for test_vit_torch: the same pre-LN ViT built from PyTorch modules
(Conv2d patch embedding, LayerNorm, MultiheadAttention, GELU, Linear) in float64.

Usage: vit_torch_ref.py INPUT OUTPUT

INPUT (little-endian, written by test_vit_torch.c): 8 int32 (image_size, channels, patch, d,
layers, heads, mlp, classes), int32 batch, float64 ln_eps, int64 num_params, num_params
float32 parameters in tfuse's layout, batch*channels*image_size^2 float32 images, batch int32
labels.

OUTPUT: records, each a 32-byte NUL-padded name, an int64 count and count float64 values.
The records are logits, loss, one gradient per parameter tensor named as in vit_param_name,
the activations x0, ln1, qkv, att, atty, res1, ln2, fc1, res2 (all layers) and lnf, and
adamw_params, all parameters after the AdamW steps of adamw_steps.
"""
import struct
import sys

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as exc:
    sys.stderr.write(f"vit_torch_ref.py: cannot import NumPy or torch ({exc}); install them "
                     f"for {sys.executable} (Debian: python3-numpy, python3-torch)\n")
    sys.exit(3)


class Block(nn.Module):
    def __init__(self, d, heads, mlp, eps):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.fc1 = nn.Linear(d, mlp)
        self.fc2 = nn.Linear(mlp, d)

    def forward(self, x, record):
        ln1 = self.ln1(x)
        y, att = self.attn(ln1, ln1, ln1, need_weights=True, average_attn_weights=False)
        res1 = x + y
        ln2 = self.ln2(res1)
        fc1 = self.fc1(ln2)
        res2 = res1 + self.fc2(F.gelu(fc1))
        # Q, K, V and the concatenated head outputs, recomputed from the module's weights
        # for comparison with tfuse's stored activations.
        qkv = F.linear(ln1, self.attn.in_proj_weight, self.attn.in_proj_bias)
        b, t, d = x.shape
        h = self.attn.num_heads
        v = qkv[:, :, 2 * d:].reshape(b, t, h, d // h).transpose(1, 2)
        atty = (att @ v).transpose(1, 2).reshape(b, t, d)
        for name, value in (("ln1", ln1), ("qkv", qkv), ("att", att), ("atty", atty),
                            ("res1", res1), ("ln2", ln2), ("fc1", fc1), ("res2", res2)):
            record.setdefault(name, []).append(value.detach())
        return res2


class ViT(nn.Module):
    def __init__(self, cfg, eps):
        super().__init__()
        size, channels, patch, d, layers, heads, mlp, classes = cfg
        tokens = (size // patch) ** 2 + 1
        self.embed = nn.Conv2d(channels, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(d))
        self.pos = nn.Parameter(torch.zeros(tokens, d))
        self.blocks = nn.ModuleList(Block(d, heads, mlp, eps) for _ in range(layers))
        self.lnf = nn.LayerNorm(d, eps=eps)
        self.head = nn.Linear(d, classes)

    def forward(self, images, record):
        x = self.embed(images).flatten(2).transpose(1, 2)
        cls = self.cls.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos
        record["x0"] = [x.detach()]
        for block in self.blocks:
            x = block(x, record)
        lnf = self.lnf(x[:, 0])
        record["lnf"] = [lnf.detach()]
        return self.head(lnf)

    def tensors(self):
        """Parameters in tfuse's order, each as (name, list of per-layer torch tensors)."""
        b = self.blocks
        return [
            ("patch_w", [self.embed.weight]),
            ("patch_b", [self.embed.bias]),
            ("cls", [self.cls]),
            ("pos", [self.pos]),
            ("ln1_g", [x.ln1.weight for x in b]),
            ("ln1_b", [x.ln1.bias for x in b]),
            ("qkv_w", [x.attn.in_proj_weight for x in b]),
            ("qkv_b", [x.attn.in_proj_bias for x in b]),
            ("proj_w", [x.attn.out_proj.weight for x in b]),
            ("proj_b", [x.attn.out_proj.bias for x in b]),
            ("ln2_g", [x.ln2.weight for x in b]),
            ("ln2_b", [x.ln2.bias for x in b]),
            ("fc1_w", [x.fc1.weight for x in b]),
            ("fc1_b", [x.fc1.bias for x in b]),
            ("fc2_w", [x.fc2.weight for x in b]),
            ("fc2_b", [x.fc2.bias for x in b]),
            ("lnf_g", [self.lnf.weight]),
            ("lnf_b", [self.lnf.bias]),
            ("head_w", [self.head.weight]),
            ("head_b", [self.head.bias]),
        ]


def read_input(path):
    with open(path, "rb") as f:
        data = f.read()
    cfg = struct.unpack_from("<8i", data, 0)
    (batch,) = struct.unpack_from("<i", data, 32)
    (eps,) = struct.unpack_from("<d", data, 36)
    (num_params,) = struct.unpack_from("<q", data, 44)
    offset = 52
    params = np.frombuffer(data, "<f4", num_params, offset)
    offset += 4 * num_params
    size, channels = cfg[0], cfg[1]
    count = batch * channels * size * size
    images = np.frombuffer(data, "<f4", count, offset).reshape(batch, channels, size, size)
    offset += 4 * count
    labels = np.frombuffer(data, "<i4", batch, offset)
    if offset + 4 * batch != len(data):
        raise SystemExit(f"vit_torch_ref.py: {path} has {len(data)} bytes, expected "
                         f"{offset + 4 * batch}")
    return cfg, batch, eps, params, images, labels


# Training steps after the gradient check, repeated by test_vit_torch.c with vit_adamw.
ADAMW_STEPS, ADAMW_LR, ADAMW_BETAS, ADAMW_EPS, ADAMW_DECAY = 3, 1e-2, (0.9, 0.999), 1e-4, 0.1
DECAYED = {"patch_w", "qkv_w", "proj_w", "fc1_w", "fc2_w", "head_w"}


def adamw_steps(model, images, labels):
    """Runs ADAMW_STEPS steps of torch.optim.AdamW on the batch, the first with the gradients
    already computed, with weight decay on the matrices only. Returns the parameters flat in
    tfuse's order."""
    tensors = model.tensors()
    groups = [
        {"params": [p for n, ps in tensors if n in DECAYED for p in ps],
         "weight_decay": ADAMW_DECAY},
        {"params": [p for n, ps in tensors if n not in DECAYED for p in ps], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=ADAMW_LR, betas=ADAMW_BETAS, eps=ADAMW_EPS)
    x = torch.from_numpy(images.astype(np.float64))
    y = torch.from_numpy(labels.astype(np.int64))
    for step in range(ADAMW_STEPS):
        if step > 0:
            opt.zero_grad()
            F.cross_entropy(model(x, {}), y).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for _, ps in tensors for p in ps])


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: vit_torch_ref.py INPUT OUTPUT")
    cfg, batch, eps, params, images, labels = read_input(sys.argv[1])
    torch.manual_seed(0)
    model = ViT(cfg, eps).double()

    # Load tfuse's flat parameter buffer tensor by tensor.
    offset = 0
    with torch.no_grad():
        for _, parts in model.tensors():
            for p in parts:
                n = p.numel()
                p.copy_(torch.from_numpy(params[offset:offset + n].astype(np.float64))
                        .reshape(p.shape))
                offset += n
    if offset != len(params):
        raise SystemExit(f"vit_torch_ref.py: model has {offset} parameters, file {len(params)}")

    record = {}
    logits = model(torch.from_numpy(images.astype(np.float64)), record)
    loss = F.cross_entropy(logits, torch.from_numpy(labels.astype(np.int64)))
    loss.backward()

    out = [("logits", logits.detach()), ("loss", loss.detach().reshape(1))]
    for name, parts in model.tensors():
        out.append((name, torch.cat([p.grad.reshape(-1) for p in parts])))
    for name in ("x0", "ln1", "qkv", "att", "atty", "res1", "ln2", "fc1", "res2", "lnf"):
        out.append((name, torch.cat([v.reshape(-1) for v in record[name]])))
    out.append(("adamw_params", adamw_steps(model, images, labels)))
    with open(sys.argv[2], "wb") as f:
        for name, value in out:
            array = value.numpy().astype("<f8").reshape(-1)
            f.write(name.encode().ljust(32, b"\0"))
            f.write(struct.pack("<q", array.size))
            f.write(array.tobytes())


if __name__ == "__main__":
    main()
