"""Semantic-preserving prompt rewriters (POS, arXiv 2311.00949): enrich a prompt with detail, keep its meaning.

The paper rewrites prompts with ChatGPT (SCVideo appendix, Figure 6: "the new sentences are improved by giving
more modifying words"); its abstract calls it "reference-guided rewriting". Our interpretation: the reference is
the caption of the video the optimal-noise approximator retrieved for the prompt, passed to `rewrite` when
retrieval is on. Three implementations (config group `rewriter`):

- `NoRewriter` (`rewriter=none`): the prompt unchanged; hybrid-semantics denoising is then skipped.
- `TemplateRewriter` (`rewriter=template`): offline; appends detail phrases chosen by keyword rules. It only
  appends, so the original prompt is always the rewritten prompt's beginning.
- `ChatCompletionsRewriter` (`rewriter=chat`, `chat_rewriter.py`): an OpenAI-compatible HTTP endpoint.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9']+")


class PromptRewriter(ABC):
    """Rewrites a prompt into a richer one with the same meaning."""

    @abstractmethod
    def rewrite(self, prompt: str, reference: str | None = None) -> str:
        """The rewritten prompt; `reference` is a related caption (the retrieved video's) or None."""

    def rewrite_all(
        self, prompts: Sequence[str], references: Sequence[str | None] | None = None
    ) -> list[str]:
        """Rewrite each prompt with its reference (None for all when `references` is None)."""
        if references is None:
            references = [None] * len(prompts)
        if len(references) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(references)} references")
        return [
            self.rewrite(prompt, reference) for prompt, reference in zip(prompts, references, strict=True)
        ]


class NoRewriter(PromptRewriter):
    """The prompt as it is."""

    def rewrite(self, prompt: str, reference: str | None = None) -> str:
        return prompt

    def __repr__(self) -> str:
        return "NoRewriter()"


@dataclass(frozen=True)
class DetailRule:
    """Append `detail` when any of `keywords` occurs as a word of the prompt (case-insensitive)."""

    keywords: tuple[str, ...]
    detail: str


class TemplateRewriter(PromptRewriter):
    """Offline rewriting by rules: `prompt, detail_1, ..., detail_n, suffix_1, ...`.

    Details come from the rules whose keywords occur in the prompt (in rule order, each at most once, none that the
    prompt already contains), then the `suffix` phrases. The reference caption is not used: rules cannot tell
    which of its words are safe to borrow.

    Args:
        rules: `[{keywords: [...], detail: "..."}]` (conf/rewriter/template.yaml).
        suffix: phrases appended to every prompt (e.g. quality words).
        separator: joins the prompt and the phrases.
        max_words: the rewritten prompt is cut back to whole phrases within this many words (CLIP reads 77 tokens).
    """

    def __init__(
        self,
        rules: Sequence[Mapping[str, object]] = (),
        suffix: Sequence[str] = (),
        separator: str = ", ",
        max_words: int = 60,
    ) -> None:
        self.rules = [self._rule(index, rule) for index, rule in enumerate(rules)]
        self.suffix = [str(phrase) for phrase in suffix]
        self.separator = separator
        self.max_words = max_words

    @staticmethod
    def _rule(index: int, rule: Mapping[str, object]) -> DetailRule:
        keywords, detail = rule.get("keywords"), rule.get("detail")
        if not keywords or not isinstance(detail, str) or not detail:
            raise ValueError(
                f"rewriter.rules[{index}] must have non-empty 'keywords' (a list of words) and 'detail' (a "
                f"phrase), got {dict(rule)}"
            )
        return DetailRule(tuple(str(word).lower() for word in keywords), detail)

    def rewrite(self, prompt: str, reference: str | None = None) -> str:
        words = set(_WORD.findall(prompt.lower()))
        phrases = [rule.detail for rule in self.rules if words & set(rule.keywords)] + self.suffix
        kept: list[str] = []
        word_count = len(prompt.split())
        for phrase in dict.fromkeys(phrases):
            if phrase.lower() in prompt.lower():
                continue
            if word_count + len(phrase.split()) > self.max_words:
                break
            kept.append(phrase)
            word_count += len(phrase.split())
        return self.separator.join([prompt.strip(), *kept])

    def __repr__(self) -> str:
        return f"TemplateRewriter({len(self.rules)} rules, suffix={self.suffix})"
