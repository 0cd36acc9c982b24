"""Judges: predict from two unfinished traces whether they will reach the same final answer.

Kinds (params `judge.variants.<name>.kind`): `sbert_cosine` (the paper's SentenceBERT baseline) and
`encoder` (a trained head on sentence-encoder embeddings). Heavy modules are imported only when used.
"""

JUDGE_KINDS = ("sbert_cosine", "encoder")
