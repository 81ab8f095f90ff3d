"""Model families. Importing this package registers every family's classes and presets."""

from tfbrain.models.backbone import Backbone
from tfbrain.models.task import FMRIClassifier, FMRIContrastive, FMRIRegressor
from tfbrain.models.swift import SwiFT, SwiFTBackbone
from tfbrain.models.neurostorm import NeuroSTORM, NeuroSTORMBackbone, NeuroSTORMMAE
