"""A user's own architecture, as one writes it: a small VGG-style CNN with GELU and max pooling.

Used by README "Your own architecture" (``--arch my_vgg:vgg_gelu`` with ``PYTHONPATH=examples``)
and by the end-to-end test of user architectures. Nothing here knows about netspace_fast: the
factory returns an ordinary ``nn.Module`` (trained form, BatchNorm included), whose state dicts
load strictly into the traced architecture.
"""

from torch import nn


def vgg_gelu(dataset: str = "digits") -> nn.Module:
    """3x32x32 images (the digits / CIFAR-10 / Fashion-MNIST geometry of netspace_fast), 10 classes."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 8), *block(8, 16), *block(16, 16), nn.Flatten(), nn.Dropout(0.1),
                         nn.Linear(16 * 4 * 4, 32), nn.GELU(), nn.Linear(32, 10))
