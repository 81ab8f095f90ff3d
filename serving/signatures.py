"""The SavedModel surface shared by `tfbrain export` (which writes it) and `serving`
(which serves and calls it). Both import these names from here and nowhere else.

Signatures of an exported tfbrain model:
  serving_default        float32 inputs; the Task's serving outputs
  serving_default_fp16   float16 inputs (half the payload), cast to float32 inside
  embed / embed_fp16     {"embedding": (B, C')}: the backbone's pooled output
Inputs carry the model's own input names: one `fmri` `(B, D, H, W, T, C)` for the fMRI
families; a model with several inputs (feature streams) has one named input per stream.
"""

FMRI_INPUT = "fmri"
DEFAULT_SIGNATURE = "serving_default"
EMBED_SIGNATURE = "embed"
FP16_SUFFIX = "_fp16"
EMBEDDING_OUTPUT = "embedding"
WARMUP_FILE = "tf_serving_warmup_requests"
EXPORT_METADATA_FILE = "tfbrain_export.json"
MODELS_CONFIG_FILE = "models.config"
BATCHING_FILE = "batching_parameters.txt"


def fp16_name(signature_name: str) -> str:
    """The float16 twin of a signature name."""
    return signature_name if signature_name.endswith(FP16_SUFFIX) else signature_name + FP16_SUFFIX
