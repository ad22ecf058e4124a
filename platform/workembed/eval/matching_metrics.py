"""Project → profile retrieval metrics of the Malt retriever paper (Jouanneau et al., "Skill matching at
scale: freelancer-project alignment for efficient multilingual candidate retrieval", 2024).

The format: projects and profiles are :class:`Item` s (id, category, skill set, text), interactions are
labelled (project, profile) pairs (+1 a fit, −1 a mismatch), and a retrieval result maps each project id to
its ranked profile ids (best first, e.g. :meth:`workembed.retrieval.ranking.Ranking.as_dict`). For a project
``p`` with positives ``Pos_p``, negatives ``Neg_p``, skills ``S_p`` and top-K profiles ``T_K(p)`` (the first
``min(K, len(ranking))`` ids):

- valid score recall, single @K: ``1[T_K(p) ∩ Pos_p ≠ ∅]``;
- valid score recall, all @K: ``|T_K(p) ∩ Pos_p| / |Pos_p|``;
  both averaged over the ranked projects with ``Pos_p ≠ ∅``;
- category overlap @K: ``mean_{r ∈ T_K(p)} compatible(cat_p, cat_r)``; ``compatible`` may answer None
  (undefined: the pair is left out; a project with no defined pair is left out);
- skill overlap @K (coverage): ``mean_{r ∈ T_K(p)} |S_p ∩ S_r| / |S_p|``, over projects with ``S_p ≠ ∅``
  (the share of the project's skills a retrieved profile has, the quantity the positive labels threshold);
- retrieved positives / negatives @K: ``|T_K(p) ∩ Pos_p|`` and ``|T_K(p) ∩ Neg_p|``, averaged over all
  ranked projects.

Every metric is computed per project and averaged over the projects it is defined for; the ``n_*`` keys of
:func:`matching_metrics` say how many that is.

:func:`~workembed.retrieval.matching_dataset.matching_dataset` builds this format from the matching data
(``upwork_projects.csv``, ``resumes.csv``) with the rules of :mod:`workembed.data.matching`, and nothing else
is derived:

- project skills: the listed Upwork skills, normalised as the mention rule compares them (lower-cased,
  except skills of ≤ 2 characters, which stay as written);
- profile skills: the project skills (over all projects) that the resume mentions under the word-boundary
  rule, computed with :func:`~workembed.data.matching.mention_counts`, so ``|S_p ∩ S_r|`` equals
  ``mention_counts(projects, profiles)[p, r]``;
- categories: the Upwork project category and the resume category; :func:`category_compatible` reads
  :data:`~workembed.data.matching.COMPATIBLE` (None for project categories outside it: anyone may fit);
- interactions: the skill-derived edges of :func:`~workembed.data.matching.skill_edges`, which are exactly
  the project → resume edges of :func:`~workembed.data.matching.build_matching_edges` (its LLM-scored
  pairs start from an ``offer-`` text, not a project): +1 when ≥ 3 and ≥ 30 % of the project's skills are
  mentioned (20 best per project), −1 for 5 drawn resumes mentioning none of them and outside the
  compatible categories. Both labels are heuristic (skill mentions, categories), not hiring outcomes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from workembed.data.matching import COMPATIBLE
from workembed.errors import DatasetError
from workembed.retrieval.matching_dataset import Interaction, Item

Compatible = Callable[[str, str], bool | None]
DEFAULT_KS: tuple[int, ...] = (10, 100)


# -------------------------------------------------------------------------------- per project


def valid_recall_single(ranking: Sequence[str], positives: set[str], k: int) -> float:
    """1 if the top ``k`` hold a positive, else 0."""
    return float(any(profile in positives for profile in ranking[:k]))


def valid_recall_all(ranking: Sequence[str], positives: set[str], k: int) -> float:
    """|top_k ∩ Pos| / |Pos|."""
    if not positives:
        raise ValueError("the project has no positive: its recall is undefined")
    return len(set(ranking[:k]) & positives) / len(positives)


def category_overlap(
    ranking: Sequence[str], category: str, categories: Mapping[str, str], compatible: Compatible, k: int
) -> float | None:
    """Mean of ``compatible(category, category of r)`` over the top ``k`` (undefined pairs left out); None
    when no pair is defined."""
    flags = [compatible(category, categories[profile]) for profile in ranking[:k]]
    defined = [flag for flag in flags if flag is not None]
    return sum(map(bool, defined)) / len(defined) if defined else None


def skill_overlap(
    ranking: Sequence[str], skills: frozenset[str], profile_skills: Mapping[str, frozenset[str]], k: int
) -> float | None:
    """Mean of |S_p ∩ S_r| / |S_p| over the top ``k``; None without project skills or retrieved profiles."""
    top = ranking[:k]
    if not skills or not top:
        return None
    return sum(len(skills & profile_skills[profile]) for profile in top) / (len(skills) * len(top))


def retrieved_count(ranking: Sequence[str], labelled: set[str], k: int) -> int:
    """|top_k ∩ labelled|."""
    return sum(profile in labelled for profile in ranking[:k])


def category_compatible(project_category: str, profile_category: str) -> bool | None:
    """Whether the resume category may fit the Upwork category (:data:`COMPATIBLE`); None when the project
    category is not in the map."""
    fitting = COMPATIBLE.get(project_category)
    return None if fitting is None else profile_category in fitting


# ----------------------------------------------------------------------------------- averages


def matching_metrics(
    projects: Sequence[Item],
    profiles: Sequence[Item],
    interactions: Sequence[Interaction],
    rankings: Mapping[str, Sequence[str]],
    compatible: Compatible = category_compatible,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Every metric at every ``K`` of ``ks``, averaged over the ranked projects it is defined for.

    Keys: ``valid_recall_single@K``, ``valid_recall_all@K``, ``category_overlap@K``, ``skill_overlap@K``,
    ``positives@K``, ``negatives@K`` and the counts ``n_projects`` (ranked), ``n_with_positive``,
    ``n_with_category``, ``n_with_skills``. A mean over no project is NaN.
    """
    project_of = {item.id: item for item in projects}
    categories = {item.id: item.category for item in profiles}
    profile_skills = {item.id: item.skills for item in profiles}
    positives, negatives = _labelled(interactions)
    unknown = [pid for pid in rankings if pid not in project_of]
    if unknown:
        raise ValueError(f"{len(unknown)} ranked projects are not in projects, e.g. {unknown[0]}")
    strangers = {rid for ranking in rankings.values() for rid in ranking if rid not in categories}
    if strangers:
        raise ValueError(f"{len(strangers)} ranked profiles are not in profiles, e.g. {min(strangers)}")
    values: dict[str, list[float]] = {}
    for pid, ranking in rankings.items():
        project, pos, neg = project_of[pid], positives.get(pid, set()), negatives.get(pid, set())
        category = project.category
        for k in ks:
            row: dict[str, float | None] = {
                f"valid_recall_single@{k}": valid_recall_single(ranking, pos, k) if pos else None,
                f"valid_recall_all@{k}": valid_recall_all(ranking, pos, k) if pos else None,
                f"category_overlap@{k}": category_overlap(ranking, category, categories, compatible, k),
                f"skill_overlap@{k}": skill_overlap(ranking, project.skills, profile_skills, k),
                f"positives@{k}": retrieved_count(ranking, pos, k),
                f"negatives@{k}": retrieved_count(ranking, neg, k),
            }
            for name, value in row.items():
                values.setdefault(name, [])
                if value is not None:
                    values[name].append(value)
    means = {name: float(np.mean(found)) if found else float("nan") for name, found in values.items()}
    k = ks[0] if ks else 1
    return {
        **means,
        "n_projects": len(rankings),
        "n_with_positive": sum(bool(positives.get(pid)) for pid in rankings),
        "n_with_category": len(values.get(f"category_overlap@{k}", [])),
        "n_with_skills": len(values.get(f"skill_overlap@{k}", [])),
    }


def random_rankings(
    project_ids: Sequence[str], profile_ids: Sequence[str], k: int = 100, seed: int = 0
) -> dict[str, list[str]]:
    """A uniformly random top ``k`` per project (a baseline), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    size = min(k, len(profile_ids))
    return {pid: [profile_ids[j] for j in rng.permutation(len(profile_ids))[:size]] for pid in project_ids}


def _labelled(interactions: Sequence[Interaction]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``{project_id: positive profile ids}`` and ``{project_id: negative profile ids}``."""
    positives: dict[str, set[str]] = {}
    negatives: dict[str, set[str]] = {}
    for edge in interactions:
        if edge.label not in (1, -1):
            raise DatasetError(f"label must be +1 or -1, got {edge.label}")
        (positives if edge.label > 0 else negatives).setdefault(edge.project_id, set()).add(edge.profile_id)
    return positives, negatives
