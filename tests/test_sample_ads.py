"""The built-in sample ads: deterministic, grounded in the taxonomy's occupation–skill relations."""

from workembed.sample_ads import sample_ads, write_sample_ads
from workembed.taxonomy import load_esco


def test_sample_ads_name_related_skills_and_carry_two_bad_rows(tmp_path):
    taxonomy = load_esco("builtin")
    ads = sample_ads(taxonomy, n_ads=30, seed=3)
    assert len(ads) == 32
    assert ads == sample_ads(taxonomy, n_ads=30, seed=3)
    assert ads != sample_ads(taxonomy, n_ads=30, seed=4)
    related = {(r.occupation_uri, r.skill_uri) for r in taxonomy.relations}
    labels = {uri: skill.preferred_label for uri, skill in taxonomy.skills.items()}
    for ad in ads[:30]:
        occupation = taxonomy.occupations[ad["occupation_uri"]]
        assert ad["title"] in (occupation.preferred_label, *occupation.alt_labels)
        requirements = ad["description"].splitlines()[1:-1]
        assert 3 <= len(requirements) <= 5
        for sentence in requirements:  # each names a skill related to the ad's occupation
            assert any(
                labels[skill] in sentence
                for (occ, skill) in related
                if occ == occupation.uri and skill in labels
            ), sentence
    assert ads[30]["description"].strip() == ""
    assert {k: v for k, v in ads[31].items() if k != "id"} == {k: v for k, v in ads[0].items() if k != "id"}
    path = write_sample_ads(tmp_path / "ads.jsonl", taxonomy, n_ads=30, seed=3)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 32


def test_extraction_sample_labels_each_sentence_with_the_skill_it_names(tmp_path):
    from workembed.retrieval.ranking_dataset import read_dataset
    from workembed.sample_ads import write_extraction_sample

    taxonomy = load_esco("builtin")
    dataset = read_dataset(write_extraction_sample(tmp_path / "extraction", taxonomy, n_sentences=40))
    assert len(dataset.queries) == 40 and len(dataset.corpus) == len(taxonomy.skills)
    for qid, sentence in dataset.queries.items():
        (skill,) = dataset.positives(qid)
        assert taxonomy.skills[skill].preferred_label in sentence
