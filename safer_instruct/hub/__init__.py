"""Hub release: the gated dataset, the model with its card, the comparison Space, and access review.

Each release writes the complete repo folder locally first (``write_*_repo``), then pushes it in a
fixed order: create private (an existing public repo is made private) → gate (dataset) → upload (a model:
its allow-list) → set variables (Space) → visible only if asked.
"""

from safer_instruct.hub.access import AccessPolicy, Decision, decide, handle, list_requests, load_policy, review
from safer_instruct.hub.client import PushPlan, check_release_flags, hub_api, push
from safer_instruct.hub.dataset import write_dataset_repo
from safer_instruct.hub.model import eval_results_for, hub_base_model, write_model_repo
from safer_instruct.hub.publish import Release, publish_dataset, publish_model, publish_space
from safer_instruct.hub.space import space_variables, write_space_repo

__all__ = [
    "AccessPolicy",
    "Decision",
    "PushPlan",
    "Release",
    "check_release_flags",
    "decide",
    "eval_results_for",
    "handle",
    "hub_api",
    "hub_base_model",
    "list_requests",
    "load_policy",
    "publish_dataset",
    "publish_model",
    "publish_space",
    "push",
    "review",
    "space_variables",
    "write_dataset_repo",
    "write_model_repo",
    "write_space_repo",
]
