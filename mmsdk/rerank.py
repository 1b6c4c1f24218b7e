"""The assistant's own decoder as a reranker (`rag.rerank.Reranker`): a passage scores the mean
log-probability of the question's tokens after "Passage: <text>\nQuestion:" (UPR: Sachan et al.
2022, "Improving Passage Retrieval with Zero-Shot Question Generation"). Likelihood needs no
instruction following, so the bundled base model does it as well as an instruction-tuned one.

Each passage is one forward pass through the runtime's prompt path, the LM head run only on the
question's positions. One padded batch of all passages was slower: batches of several sequences
leave the C prompt kernels for torch's (AMD EPYC Zen 3, 1 thread, 4 passages: 6.2 s alone vs 9.2 s
batched)."""
from .scoring import window_logprobs

TEMPLATE = "Passage: {passage}\nQuestion:"


class QueryLikelihood:
    """`reranker(question, passages) -> scores`, higher is more likely to answer it. Passages and
    question are documents' and users' text: tokenized with no control tokens parsed."""

    def __init__(self, asst, *, max_passage_tokens: int = 384):
        self.asst, self.max_passage_tokens = asst, max_passage_tokens

    def __call__(self, question: str, passages: list[str]) -> list[float]:
        tok = self.asst.tokenizer
        q = tok.encode(" " + " ".join(question.split()), add_bos=False, parse_special=False)
        if not q:
            return [0.0] * len(passages)
        scores = []
        for passage in passages:
            head = tok.encode(TEMPLATE.format(passage=passage.strip()), add_bos=False, parse_special=False)
            if len(head) > self.max_passage_tokens:  # keep the passage's start and the "Question:" cue
                cue = tok.encode("\nQuestion:", add_bos=False, parse_special=False)
                head = head[:self.max_passage_tokens - len(cue)] + cue
            ids = [tok.bos_id, *head, *q]
            logprobs, _ = window_logprobs(self.asst.model, ids, first=len(ids) - len(q))
            scores.append(sum(logprobs) / len(logprobs))
        return scores
