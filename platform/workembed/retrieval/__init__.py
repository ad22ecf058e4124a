"""What serving, the registry, synthesis, data and evaluation share.

- :mod:`~workembed.retrieval.scoring`: cosine and soft late-interaction scores, blocked top-k,
  ``l2_normalize``;
- :mod:`~workembed.retrieval.embedding` and :mod:`~workembed.retrieval.ray_embedding`: embeddings of target
  spaces and query sets (in this process or by Ray Data actors) and their on-disk cache;
- :mod:`~workembed.retrieval.ranking`: the top ``k`` targets of each query with an encoder;
- :mod:`~workembed.retrieval.skill_extraction`: the ConTeXT-match extraction algorithm (threshold, redundancy
  filter);
- :mod:`~workembed.retrieval.ranking_dataset`: the ranking-dataset folder format;
- :mod:`~workembed.retrieval.benchmarks`, :mod:`~workembed.retrieval.esco_concepts` and
  :mod:`~workembed.retrieval.matching_dataset`: readers of the benchmark, ESCO and matching data;
- :mod:`~workembed.retrieval.leakage`: the keys of benchmark texts no training set may contain.

Evaluation (tasks, metrics, runners, reports) lives in :mod:`workembed.eval`, which builds on these.
"""
