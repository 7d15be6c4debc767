"""The head's PyTorch twin (DESIGN.md 1.3, the reference's layers), timed by bench_head_step.py.

Run with a Python that has torch (a scratch env; this repository does not depend on torch):

    python benchmarks/torch_head_twin.py --feature_dim=1024 --batch_size=32 --steps=20 --warmup=3 [--threads=N] [--bf16]

Prints one line of JSON: {"images_per_s": ..., "images_per_cpu_s": ..., "threads": ...}.
Same layers as models.build_head:
Conv1d(padding=1) -> ReLU -> BatchNorm1d (none after conv5), mean over length, Linear 3;
class-weighted cross-entropy, Adam(lr 1e-4, weight_decay 1e-3: coupled L2 as AdamL2), training mode.
``--bf16``: the forward pass under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (float32
weights and optimizer), the twin of Keras' ``mixed_bfloat16`` policy.
"""

import argparse
import contextlib
import json
import time

import torch
from torch import nn

HEAD_CONVS = ((16, 7, 2), (64, 5, 2), (256, 3, 1), (512, 3, 1), (1024, 3, 1))  # as dfx_keras.models


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        blocks, channels = [], 3
        for i, (filters, kernel, stride) in enumerate(HEAD_CONVS, start=1):
            blocks += [nn.Conv1d(channels, filters, kernel, stride=stride, padding=1), nn.ReLU()]
            if i < len(HEAD_CONVS):
                blocks.append(nn.BatchNorm1d(filters))
            channels = filters
        self.convs = nn.Sequential(*blocks)
        self.logits = nn.Linear(channels, 3)

    def forward(self, x):  # x: (B, 3, D), PyTorch's channels-first layout
        return self.logits(self.convs(x).mean(dim=-1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--feature_dim", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0: torch's default")
    parser.add_argument("--bf16", action="store_true", help="autocast the forward pass to bfloat16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    head = Head().train()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-3)
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    x = torch.rand(args.batch_size, 3, args.feature_dim)
    y = torch.arange(args.batch_size) % 3
    w = torch.ones(args.batch_size)  # class weights per example, as the complete stage feeds them

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = head(x)
        loss = (loss_fn(logits.float(), y) * w).mean()
        loss.backward()
        optimizer.step()
        return loss.item()  # synchronises, as Keras' fit reads its logs

    for _ in range(args.warmup):
        step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    images = args.steps * args.batch_size
    print(json.dumps({"images_per_s": images / (time.perf_counter() - start),
                      "images_per_cpu_s": images / (time.process_time() - cpu), "threads": torch.get_num_threads(), "bf16": args.bf16}))


if __name__ == "__main__":
    main()
