"""Backbones (ResNet, ResNet-IBN-a, ViT built in; the zoo's other families via timm) and the self-distillation
head, in plain torch."""

from cion_dist.models.factory import backbone_names, build_backbone, load_backbone_weights, read_state_dict

__all__ = ["backbone_names", "build_backbone", "load_backbone_weights", "read_state_dict"]
