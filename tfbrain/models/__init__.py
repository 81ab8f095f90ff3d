"""Model families. Importing this package registers every family's classes and presets."""

from tfbrain.models.backbone import Backbone
