"""Layer shapes of the networks the bench measures (activation tensors as N, C, H, W).

ResNet-50 (torchvision, 224x224 input) and VGG-16 at a batch that fills an 80 GB GPU's
work queue without running out of memory for the largest (fwd + bwd) case; the `tiny`
set is for CPU runs (CI), where only correctness of the harness matters.
"""
RESNET50_BATCH = 256
VGG16_BATCH = 64

# Activation maps after each distinct BN/ReLU of ResNet-50: (name, C, H, W)
RESNET50_ACT = [
    ("stem", 64, 112, 112),
    ("l1.mid", 64, 56, 56), ("l1.out", 256, 56, 56),
    ("l2.mid", 128, 28, 28), ("l2.out", 512, 28, 28),
    ("l3.mid", 256, 14, 14), ("l3.out", 1024, 14, 14),
    ("l4.mid", 512, 7, 7), ("l4.out", 2048, 7, 7),
]

# VGG-16 activation maps (after each conv's ReLU), distinct sizes
VGG16_ACT = [
    ("b1", 64, 224, 224), ("b2", 128, 112, 112), ("b3", 256, 56, 56),
    ("b4", 512, 28, 28), ("b5", 512, 14, 14),
]

# ResNet-50 convolutions: (name, C_in, H, W, C_out, kernel, stride, padding)
RESNET50_CONV = [
    ("conv1", 3, 224, 224, 64, 7, 2, 3),
    ("l1.1x1a", 64, 56, 56, 64, 1, 1, 0), ("l1.3x3", 64, 56, 56, 64, 3, 1, 1),
    ("l1.1x1b", 64, 56, 56, 256, 1, 1, 0), ("l1.down", 256, 56, 56, 64, 1, 1, 0),
    ("l2.3x3s2", 128, 56, 56, 128, 3, 2, 1), ("l2.3x3", 128, 28, 28, 128, 3, 1, 1),
    ("l2.1x1b", 128, 28, 28, 512, 1, 1, 0), ("l2.1x1a", 512, 28, 28, 128, 1, 1, 0),
    ("l3.3x3", 256, 14, 14, 256, 3, 1, 1), ("l3.1x1b", 256, 14, 14, 1024, 1, 1, 0),
    ("l3.1x1a", 1024, 14, 14, 256, 1, 1, 0),
    ("l4.3x3", 512, 7, 7, 512, 3, 1, 1), ("l4.1x1b", 512, 7, 7, 2048, 1, 1, 0),
    ("l4.1x1a", 2048, 7, 7, 512, 1, 1, 0),
]

# VGG-16 convolutions (3x3, stride 1, padding 1): (name, C_in, H, W, C_out, 3, 1, 1)
VGG16_CONV = [
    ("b1.1", 3, 224, 224, 64, 3, 1, 1), ("b1.2", 64, 224, 224, 64, 3, 1, 1),
    ("b2.1", 64, 112, 112, 128, 3, 1, 1), ("b2.2", 128, 112, 112, 128, 3, 1, 1),
    ("b3.1", 128, 56, 56, 256, 3, 1, 1), ("b3.2", 256, 56, 56, 256, 3, 1, 1),
    ("b4.1", 256, 28, 28, 512, 3, 1, 1), ("b4.2", 512, 28, 28, 512, 3, 1, 1),
    ("b5.2", 512, 14, 14, 512, 3, 1, 1),
]

TINY_ACT = [("t1", 5, 9, 7), ("t2", 13, 6, 5)]
TINY_BATCH = 3


def activation_maps(shapes: str):
    """[(layer name, (N, C, H, W))] for a shape set."""
    if shapes == "resnet50":
        return [(f"resnet50.{n}", (RESNET50_BATCH, c, h, w)) for n, c, h, w in RESNET50_ACT]
    if shapes == "vgg16":
        return [(f"vgg16.{n}", (VGG16_BATCH, c, h, w)) for n, c, h, w in VGG16_ACT]
    if shapes == "tiny":
        return [(f"tiny.{n}", (TINY_BATCH, c, h, w)) for n, c, h, w in TINY_ACT]
    raise ValueError(f"unknown shape set {shapes!r}")
