"""Published numbers of the DeepPrune paper (Tu et al., arXiv 2510.08483), shown beside ours, labelled as theirs."""

# Figure 2(a): share of trace pairs whose final answers agree, per reasoning model and pooled.
PAPER_SAME_ANSWER_SHARE = {
    "pooled (paper)": 0.816,
    "Qwen3-4B (paper)": 0.931,
    "DeepSeek-8B (paper)": 0.762,
    "QwQ-32B (paper)": 0.912,
    "GLM-4.5-Air (paper)": 0.945,
}

# Figure 2(b-c): untrained judges, AUROC.
PAPER_BASELINE_AUROC = {"SentenceBERT cosine": 0.58, "Qwen3-4B-Instruct zero-shot": 0.66}

# Table 1: judge training ablation, (AUROC, TNR), averaged over three unseen reasoning models.
PAPER_TABLE1 = {
    "reasoning_words_25": {
        "plain": (0.8326, 0.6647), "focal": (0.8559, 0.7403),
        "oversample": (0.7983, 0.6762), "focal_oversample": (0.8701, 0.8186),
    },
    "tokens_500": {
        "plain": (0.8556, 0.7720), "focal": (0.8360, 0.7327),
        "oversample": (0.7610, 0.5232), "focal_oversample": (0.8608, 0.7698),
    },
}


def paper_row_for(variant_loss: str, oversample: bool) -> str:
    """Table 1's row name for one of our trained variants."""
    if variant_loss == "focal":
        return "focal_oversample" if oversample else "focal"
    return "oversample" if oversample else "plain"

# Online results the paper reports (v1; DESIGN.md section 1): DeepPrune against cons@512 with the trained judge.
PAPER_ONLINE = {
    "token reduction vs cons@512 (DeepSeek-8B, Qwen3-32B, GPT-OSS-20B; AIME24/25, GPQA)": "76.7% to 91.6%",
    "accuracy vs cons@512": "within 3 points",
    "Qwen3-32B, AIME25: cons@512": "2.64e8 tokens, 80.0%",
    "Qwen3-32B, AIME25: DeepPrune": "0.23e8 tokens, 90.0%",
    "tau sweep 0.75 / 0.63 / 0.5 / 0.25 (Table 3, Qwen3-32B)": "tokens barely move",
    "v2 of the paper (abstract): token reduction": "65.73% to 88.50%",
}

# Transfer (arXiv v2, the ACL 2026 Findings version; DESIGN.md section 1): the final judge, trained on
# out-of-distribution data (AIME 2022, AIME 2023, MATH-500) with oversampling, scored on reasoning models it never saw;
# v1's Table 1 figure is in-distribution.
PAPER_TRANSFER = {
    "v2: trained on AIME 2022/2023 and MATH-500, scored on unseen reasoning models (AUROC)": 0.7072,
    "v1 Table 1: in-distribution, 25 reasoning words, focal + oversampling (AUROC)": 0.8701,
}
