"""Model families. Importing this package registers every family (backbone class, variants,
converter, input kind, presets) and every Task type with `tfbrain.models.registry`.

To add a family: make `tfbrain/models/<family>/` (see docs/architecture.md, "How to add a
family") and import it below; that one line is the only place that lists families.
"""

from tfbrain.models.backbone import Backbone
from tfbrain.models.task import FMRIClassifier, FMRIContrastive, FMRIRegressor, Task
from tfbrain.models.swift import SwiFT, SwiFTBackbone
from tfbrain.models.neurostorm import NeuroSTORM, NeuroSTORMBackbone, NeuroSTORMMAE
from tfbrain.models.brainmt import BrainMT, BrainMTBackbone
from tfbrain.models.bixt import BiXT, BiXTBackbone
from tfbrain.models.registry import create_backbone, families, get_family
from tfbrain.models.flow_encoder import FlowEncoderBackbone, FlowCFMTask, FlowStage1Task
