"""Corpora through Hugging Face `datasets`: a Parquet file (a local export of a shipped corpus) imports to the same
traces as its JSON source, bad rows are named by position and field, re-reads come from the project's Arrow
cache, and the hub export writes a pinned Parquet file or says clearly why it cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepprune.config import CorpusConfig, load_params
from deepprune.data.hub import HubUnavailable, export, main
from deepprune.data.importers import import_corpus
from deepprune.data.schema import TraceFormatError, datasets_cache

ROOT = Path(__file__).resolve().parents[2]
DATE = ROOT / "data/raw/traces/verifycot_date_gpt35_246x10.json"


@pytest.fixture
def date_slice(tmp_path, monkeypatch):
    """The first 6 questions of the shipped date corpus as JSON, and the date corpus's params pointed at it."""
    monkeypatch.chdir(tmp_path)  # the Arrow cache is the project's (.cache/datasets of the working directory)
    records = json.loads(DATE.read_text(encoding="utf-8"))[:6]
    source = tmp_path / "date.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    cfg = load_params(ROOT / "params.yaml").corpora["date"].model_copy(update={"path": str(source), "limit": None})
    return records, cfg


def _parquet(records: list[dict], path: Path) -> Path:
    from datasets import Dataset

    Dataset.from_list(records).to_parquet(str(path))
    return path


def test_a_parquet_export_imports_the_same_traces_as_its_json_source(date_slice, tmp_path):
    records, cfg = date_slice
    as_parquet = CorpusConfig(**{**cfg.model_dump(), "format": "parquet",
                                 "path": str(_parquet(records, tmp_path / "date.parquet"))})
    from_json = list(import_corpus(cfg))
    assert len(from_json) == 60
    assert list(import_corpus(as_parquet)) == from_json
    cached = [p for p in datasets_cache().rglob("*.arrow")]
    assert cached and datasets_cache().is_relative_to(tmp_path)  # inside the project, not the home directory
    assert list(import_corpus(as_parquet)) == from_json  # the second read, from the Arrow cache
    assert sorted(datasets_cache().rglob("*.arrow")) == sorted(cached)


def test_a_bad_parquet_row_is_named_by_position_and_field_or_skipped(date_slice, tmp_path):
    records, cfg = date_slice
    records[2] = {**records[2], "model_outputs": None}
    bad = CorpusConfig(**{**cfg.model_dump(), "format": "parquet", "path": str(_parquet(records, tmp_path / "b.parquet"))})
    with pytest.raises(TraceFormatError, match=r"b\.parquet:3: field 'model_outputs': expected a list, got NoneType"):
        list(import_corpus(bad))
    skipped: list[str] = []
    assert len(list(import_corpus(bad, skipped))) == 50 and len(skipped) == 1


def test_a_file_that_is_not_parquet_is_named(date_slice, tmp_path):
    _, cfg = date_slice
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    with pytest.raises(TraceFormatError, match=r"fake\.parquet: not a readable Parquet file"):
        list(import_corpus(CorpusConfig(**{**cfg.model_dump(), "format": "parquet", "path": str(fake)})))
    with pytest.raises(FileNotFoundError, match="missing.parquet does not exist"):
        list(import_corpus(CorpusConfig(**{**cfg.model_dump(), "format": "parquet",
                                           "path": str(tmp_path / "missing.parquet")})))


def test_hub_export_writes_a_parquet_file_a_corpus_reads(date_slice, tmp_path, capsys):
    """A local dataset folder stands in for a hub id (load_dataset reads both the same way), so this runs offline."""
    records, cfg = date_slice
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "exported" / "date.parquet"
    assert main([str(folder), "--revision", "main", "--out", str(out)]) == 0
    assert "6 rows; columns: " in capsys.readouterr().out and "model_outputs" in out.read_bytes().decode("latin-1")
    exported = CorpusConfig(**{**cfg.model_dump(), "format": "parquet", "path": str(out)})
    assert list(import_corpus(exported)) == list(import_corpus(cfg))
    assert not list(out.parent.glob(".*.tmp"))


def test_hub_export_without_network_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "deepprune.parquet"
    with pytest.raises(HubUnavailable, match=r"cannot fetch THU-KEG/DeepPrune@main \(split train\) from the Hugging "
                                             r"Face hub: .*HF_HUB_OFFLINE is set"):
        export("THU-KEG/DeepPrune", "main", out)
    assert main(["THU-KEG/DeepPrune", "--revision", "main", "--out", str(out)]) == 2
    assert "error: cannot fetch THU-KEG/DeepPrune@main" in capsys.readouterr().err
    assert not out.exists()
