"""The upstream task heads (SwiFT's `clf_mlp`, `clf_mlp_v2`, `emb_mlp`; NeuroSTORM's v1 heads
reuse them) -> tfbrain Task models. One place for every family whose heads follow SwiFT's.

Upstream head state dicts, prefix stripped: clf_mlp `head.*`; clf_mlp_v2 `hidden.*` +
`head.*`; emb_mlp `fc1.weight` + `bn1.*`. Regression reuses clf_mlp's keys, so the task is
ambiguous from keys alone and can be forced.
"""

import numpy as np

from tfbrain.conversion.porter import StateDictPorter


def infer_head(head_state_dict: dict) -> dict:
    """Which task head an upstream head state dict holds, and its size."""
    keys = set(head_state_dict)
    if "fc1.weight" in keys:
        return {"task": "contrastive",
                "embedding_dim": int(np.shape(head_state_dict["fc1.weight"])[0])}
    if "head.weight" in keys:
        return {"task": "classification",
                "head": "v2" if "hidden.weight" in keys else "v1",
                "num_classes": int(np.shape(head_state_dict["head.weight"])[0])}
    raise ValueError(f"cannot tell the head type from upstream keys {sorted(keys)}")


def port_head(porter: StateDictPorter, task) -> None:
    """Queue a task model's head variables from an upstream head state dict."""
    if task.task_type in ("classification", "regression"):
        if task.head == "v2":
            porter.dense(task.get_layer("hidden"), "hidden")
        porter.dense(task.get_layer("head"), "head")
    elif task.task_type == "contrastive":
        porter.dense(task.get_layer("fc1"), "fc1")
        porter.norm(task.get_layer("bn1"), "bn1")
    else:
        raise ValueError(f"no upstream head layout for task type {task.task_type!r}")


def attach_upstream_head(backbone, head_state_dict: dict, task: str | None = None):
    """Wrap `backbone` in the Task its upstream head describes and load the head's weights.

    Args:
        backbone: a tfbrain backbone with converted weights.
        head_state_dict: the head's torch-named arrays, prefix stripped.
        task: "classification" | "regression" | "contrastive" forces the task (regression
            reuses clf_mlp's keys); None infers it.
    """
    from tfbrain.models.registry import get_task_class

    head = infer_head(head_state_dict)
    task = task or head["task"]
    if task == "contrastive":
        model = get_task_class(task)(backbone, embedding_dim=head["embedding_dim"])
    elif task == "classification":
        model = get_task_class(task)(backbone, num_classes=head["num_classes"], head=head["head"])
    elif task == "regression":
        model = get_task_class(task)(backbone, num_outputs=head["num_classes"], head=head["head"])
    else:
        raise ValueError(f"unknown task {task!r}; expected classification, regression or "
                         "contrastive")
    porter = StateDictPorter(head_state_dict, f"{type(model).__name__} head")
    port_head(porter, model)
    porter.finish()
    return model
