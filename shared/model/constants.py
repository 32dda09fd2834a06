"""Numbers used by more than one module of the model and training code (one home for each).

Changing one changes what trained weights compute: they are fixed by the published architectures.
"""

from __future__ import annotations

# ImageNet normalisation of the pretrained encoders' inputs (SegFormer MiT) and of VGG-19's
# (the perceptual loss), per RGB channel, for images in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Negative slope of every LeakyReLU (EG3D / StyleGAN2 convention), in the plane heads, the
# appearance upsampler and the super-resolution.
LEAKY_SLOPE = 0.2
