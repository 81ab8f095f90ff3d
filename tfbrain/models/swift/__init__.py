"""SwiFT: Swin 4D fMRI Transformer."""

from tfbrain.models.swift.swift_backbone import SwiFTBackbone
