"""UMIT-style instruction templates (arXiv 2503.15892): the task and language are special tokens, the
instruction is natural text in the requested language. Training samples a template per example so the
decoder does not overfit one phrasing; inference uses the first one (it is written into the manifest, so
the runtime needs nothing from ``models/``).
"""

from __future__ import annotations

from typing import Any

TEMPLATES: dict[str, dict[str, list[str]]] = {
    "report": {
        "en": [
            "Describe the findings of this image.",
            "Write the findings section of the report for this image.",
            "Please write a radiology report for this image.",
        ],
        "zh": [
            "请描述这张图像的所见。",
            "请为这张图像撰写影像报告。",
            "根据给定的图像，写出检查所见。",
        ],
    },
    "vqa": {
        "en": [
            "Given this image, please answer the question: {question}",
            "Answer briefly based on the image: {question}",
            "{question}",
        ],
        "zh": [
            "根据给定的图像，请简洁回答问题：{question}",
            "请根据图像简要回答：{question}",
            "{question}",
        ],
    },
}


# The structured findings go in front of the instruction as text (VILA-M3 pattern, "structured first"): the
# decoder then answers from the heads' findings instead of re-deriving them from pixels. The text is the
# runtime's deterministic rendering of the findings (``dicom_agent.inference.render.impression``).
CONTEXT: dict[str, str] = {
    "en": "Findings: {findings} {instruction}",
    "zh": "所见：{findings}{instruction}",
}


def instruction(task: str, lang: str, question: str | None = None, variant: int = 0) -> str:
    """The instruction text of ``task`` in ``lang`` (variant 0 is the one used at inference)."""
    options = TEMPLATES[task][lang]
    return options[variant % len(options)].format(question=question or "")


def with_context(text: str, lang: str, findings: str | None) -> str:
    """The instruction preceded by the findings text (unchanged when there is none)."""
    return text if findings is None else CONTEXT[lang].format(findings=findings, instruction=text)


def inference_templates(context: bool = False) -> dict[str, dict[str, str]]:
    """The templates the runtime formats (``{question}`` placeholder for VQA); ``context`` (for a decoder trained
    with the findings text) wraps an instruction with ``{findings}``."""
    out = {task: {lang: opts[0] for lang, opts in by_lang.items()} for task, by_lang in TEMPLATES.items()}
    if context:
        out["context"] = dict(CONTEXT)
    return out


def prompts_of(recipe: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``prompts`` for a training recipe: the templates, and ``context_uptake`` when its findings
    text stated PET SUVmax (the runtime then writes it into the prompt too; older decoders never saw it), and
    ``context_answer_forms`` when it worded each answer as its question asks it (``render.context_text``)."""
    out: dict[str, Any] = dict(inference_templates(bool(recipe.get("context", False))))
    if recipe.get("context") and recipe.get("context_uptake"):
        out["context_uptake"] = True
    if recipe.get("context") and recipe.get("context_answer_forms"):
        out["context_answer_forms"] = True
    return out
