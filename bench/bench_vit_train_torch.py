"""PyTorch baseline for bench_vit_train: the same pre-LN ViT (28x28x1 images, patch 7, d 64,
4 layers, 4 heads, MLP 256, 10 classes) in float32, timed over forward, backward and one
AdamW step per batch of random inputs.

Usage: bench_vit_train_torch.py THREADS [STEPS] [BATCH] [REPEATS]
Prints one line per repeat and the medians of images per second and per CPU second.
"""
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, mlp):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=1e-12)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d, eps=1e-12)
        self.fc1 = nn.Linear(d, mlp)
        self.fc2 = nn.Linear(mlp, d)

    def forward(self, x):
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    def __init__(self, size=28, channels=1, patch=7, d=64, layers=4, heads=4, mlp=256,
                 classes=10):
        super().__init__()
        self.embed = nn.Conv2d(channels, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads, mlp) for _ in range(layers))
        self.lnf = nn.LayerNorm(d, eps=1e-12)
        self.head = nn.Linear(d, classes)

    def forward(self, images):
        x = self.embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.lnf(x[:, 0]))


def main():
    if len(sys.argv) < 2:
        raise SystemExit("usage: bench_vit_train_torch.py THREADS [STEPS] [BATCH] [REPEATS]")
    threads = int(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ViT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    images = torch.randn(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(3):
        step()
    rates, cpu_rates = [], []
    for r in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            loss = step()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        rates.append(steps * batch / seconds)
        cpu_rates.append(steps * batch / cpu)
        print(f"torch repeat {r}: {rates[-1]:.1f} images/s, {cpu_rates[-1]:.1f} images per CPU "
              f"second ({1e3 * seconds / steps:.2f} ms/step, loss {loss:.4f})")
    print(f"torch median: {statistics.median(rates):.1f} images/s, "
          f"{statistics.median(cpu_rates):.1f} images per CPU second, batch {batch}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
