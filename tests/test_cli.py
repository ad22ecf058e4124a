import json

import pytest

from workembed.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_esco_stats_on_official_export(capsys, data_dir):
    code, out, _ = run(capsys, "esco", "stats", "--esco", str(data_dir / "esco" / "v1.1.1"))
    assert code == 0
    stats = json.loads(out)
    assert (stats["skills"], stats["occupations"], stats["relations"]) == (13896, 3007, 123855)
    assert (stats["relations_essential"], stats["relations_optional"]) == (64946, 58909)
    assert stats["hierarchy_rows"] == 647 and stats["skill_alt_labels"] == 97483


def test_esco_stats_relative_to_data_root(capsys, data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKEMBED_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)  # as in a job's unpacked working directory
    code, out, _ = run(capsys, "esco", "stats", "--set", "location=esco/v1.1.0")
    assert code == 0
    assert json.loads(out)["occupations"] == 3008


def test_esco_stats_config_file_and_errors(capsys, tmp_path):
    config = tmp_path / "esco.yaml"
    config.write_text("location: builtin\n")
    code, out, _ = run(capsys, "esco", "stats", "-c", str(config))
    assert code == 0 and json.loads(out)["skills"] == 877
    config.write_text("location: builtin\nlanguages: [en]\n")
    code, out, err = run(capsys, "esco", "stats", "-c", str(config))
    assert code == 2 and out == ""
    assert "languages: Extra inputs are not permitted" in err and str(config) in err
    code, _, err = run(capsys, "esco", "stats", "--esco", str(tmp_path / "none"))
    assert code == 2 and "ESCO location not found" in err


@pytest.mark.integration
def test_embed_pooled_and_tokens(capsys):
    code, out, _ = run(capsys, "embed", "--model", "minilm", "--tokens", "data engineer", "nurse")
    assert code == 0
    payload = json.loads(out)
    assert payload["dim"] == 384
    first, second = payload["results"]
    assert first["text"] == "data engineer" and len(first["embedding"]) == 384
    assert [t["token"] for t in first["tokens"]] == ["[CLS]", "data", "engineer", "[SEP]"]
    assert first["tokens"][1]["start"] == 0 and first["tokens"][1]["end"] == 4
    assert len(second["tokens"][1]["vector"]) == 384


def test_embed_errors(capsys, tmp_path, monkeypatch):
    code, _, err = run(capsys, "embed", "--model", str(tmp_path / "nope"), "x")
    assert code == 2 and "neither a known alias" in err
    code, _, err = run(capsys, "embed", "--set", "batch_size=0", "x")
    assert code == 2 and "batch_size (from --set)" in err
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(""))
    code, _, err = run(capsys, "embed")
    assert code == 2 and "TEXT arguments" in err


def test_a_user_error_is_one_line_and_exit_code_2(capsys, tmp_path):
    code, out, err = run(capsys, "esco", "stats", "--esco", str(tmp_path / "none"))
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"workembed: error: ESCO location not found: '{tmp_path / 'none'}'"]


@pytest.mark.parametrize(
    "bug", [ValueError("operands could not be broadcast"), RuntimeError("bad state"), KeyError("x")]
)
def test_a_bug_is_not_reported_as_a_user_error(capsys, monkeypatch, bug):
    """Built-in exceptions (a ValueError included) are bugs: they propagate with their traceback (exit 1), not
    as ``workembed: error:`` with exit code 2."""

    def broken(args):
        raise bug

    monkeypatch.setattr("workembed.cli.cmd_esco_stats", broken)
    with pytest.raises(type(bug)) as raised:
        main(["esco", "stats", "--esco", "builtin"])
    assert raised.value is bug
    assert "error:" not in capsys.readouterr().err


def test_a_bug_in_the_command_line_exits_1_with_a_traceback(tmp_path):
    """As a process: the traceback on stderr and exit code 1."""
    import subprocess
    import sys

    script = (
        "import sys, workembed.cli as cli\n"
        "cli.cmd_esco_stats = lambda args: {}['missing']\n"
        "sys.exit(cli.main(['esco', 'stats']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "KeyError: 'missing'" in done.stderr
    assert "workembed: error:" not in done.stderr


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


@pytest.mark.integration
def test_eval_build_tasks_then_eval_on_the_builtin_sample(capsys, tmp_path):
    out = tmp_path / "tasks"
    code, stdout, _ = run(capsys, "eval", "build-tasks", "--esco", "builtin", "--out", str(out))
    assert code == 0
    summary = json.loads(stdout)
    assert summary["held_out"] == {
        "skills": 91,
        "skills_total": 877,
        "occupations": 3,
        "occupations_total": 91,
    }
    assert (out / "split.json").is_file()
    job_skill = summary["tasks"]["job-skill"]
    assert (job_skill["queries"], job_skill["corpus"], job_skill["qrels"]) == (3, 877, 43)
    report = tmp_path / "report.json"
    dataset = str(out / "job-skill")
    code, stdout, _ = run(capsys, "eval", "--dataset", dataset, "--baselines", "--out", str(report))
    assert code == 0
    results = json.loads(report.read_text())["results"]["job-skill"]
    assert set(results) == {"minilm", "bm25", "tfidf"}
    assert all(system["n_queries"] == 3 for system in results.values())


def test_eval_convert_every_development_set(capsys, tmp_path, data_dir):
    esco = str(data_dir / "esco" / "v1.1.1")
    code, stdout, _ = run(capsys, "eval", "convert", "--esco", esco, "--out", str(tmp_path))
    assert code == 0
    summary = json.loads(stdout)
    assert sorted(summary) == [
        "jobbert-titles",
        "melo-nld_q_nl_c_nl",
        "skill-extraction-house",
        "skill-extraction-tech",
        "skillskape-dev",
    ]
    assert {name: (s["queries"], s["qrels"]) for name, s in summary.items()} == {
        "jobbert-titles": (15_151, 15_281),
        "melo-nld_q_nl_c_nl": (2_605, 55_838),
        "skill-extraction-house": (61, 131),
        "skill-extraction-tech": (75, 131),
        "skillskape-dev": (1_230, 2_615),
    }
