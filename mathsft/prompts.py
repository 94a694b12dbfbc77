"""The one prompt module: training data, teacher sampling and evaluation all build messages here."""

from __future__ import annotations

# Each template is versioned by name; the name is stored with every record so a change is visible.
TEMPLATES = {
    # The DeepScaleR / Qwen2.5-Math instruction: reason, then a boxed final answer math-verify can find.
    "boxed_cot_v1": "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
}


def build_messages(problem: str, prompt_template: str) -> list[dict[str, str]]:
    """Chat messages for one problem under the named prompt template."""
    if prompt_template not in TEMPLATES:
        raise KeyError(f"unknown prompt template {prompt_template!r}; known: {', '.join(sorted(TEMPLATES))}")
    return [{"role": "user", "content": TEMPLATES[prompt_template].format(problem=problem)}]
