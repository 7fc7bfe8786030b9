from raykd.cli import main


def test_bad_variant_is_one_line_and_exit_2_before_anything_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(__import__("pathlib").Path(__file__).parents[2] / "jobs" / "configs" / "compress.yaml")
    rc = main(["compress", "--config", config, "variants=[{method: low_rank, rank: 129}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == ["raykd: error: variants[0].rank: 129 exceeds the rank of the teacher's q_proj (128x128: at most 128)"]
    assert not any(tmp_path.iterdir())  # no MLflow store, no outputs
