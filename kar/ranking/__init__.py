"""ReLLa (Lin et al., WWW 2024): semantic behaviour retrieval and an LLM ranker.

- :func:`kar.models.inputs.retrieved_sequences`: a user's history items most similar to the
  target item (cosine of item text vectors), point-in-time, in time order; the behaviour
  sequence of the CTR backbones with ``training.history_selection: retrieved``.
- :mod:`kar.ranking.item_vectors`: those item text vectors, from the project's embedder.
- :mod:`kar.ranking.prompt`: "the user's history ... will the user like <target>? yes / no".
- :mod:`kar.ranking.llm_ranker`: P(yes) from the answer-token logits (transformers) or
  log-probabilities (an OpenAI-compatible server).
- :mod:`kar.ranking.evaluate`: AUC on a sampled test set, recent-K vs retrieved-K history
  (``kar rank``, :mod:`kar.ranking.cli`).
"""
