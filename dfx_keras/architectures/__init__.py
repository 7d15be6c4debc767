"""torchvision's ImageNet architectures as Keras functional models, layer for layer.

Each Keras layer that holds weights is named after the torchvision module it reproduces
(``features.denseblock1.denselayer1.conv1``, ``layer4.2.bn3``, ``encoder.layers.encoder_layer_0.ln_1``),
so a torchvision state dict maps onto the model by name (``dfx_keras.torchvision_weights``).
Normalisation layers use torchvision's settings: BatchNorm momentum 0.1 in PyTorch's convention
(0.9 in Keras') and epsilon 1e-5; the ViT's LayerNorm epsilon 1e-6.
"""
