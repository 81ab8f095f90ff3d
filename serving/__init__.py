"""Serving tfbrain SavedModels: export layout, a local PredictionService server, a gRPC client."""

import os as _os

# Request and response tensors of 35-71 MB: the BFC allocator reuses them instead of
# page-faulting each in afresh (as `import tfbrain` and `import tfrecords_tools` set it);
# read when TF first allocates; an explicit TF_CPU_ALLOCATOR_USE_BFC=false wins.
_os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
