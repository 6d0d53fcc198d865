"""A MobileNet-style depthwise-separable CNN for 3x32x32 images, 10 classes (24 k parameters): the
user architecture of the general engine's benchmarks (benchmarks/engine/test_bench_user_arch.py on
CPU, benchmarks/engine/gpu_bench_batched_forward.py scenario (iii) on a GPU)."""

from torch import nn


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def depthwise_separable() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         *_block(16, 32, 2), *_block(32, 64, 2), *_block(64, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
