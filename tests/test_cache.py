"""The cache of validated tables: same tables, report and rejects as an uncached load; a new
entry for a changed file, configuration or mapping; bypassed with --no-cache; kept small."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from convert import load
from convert.config import Config
from convert.features.engine import ensure_indexed
from convert.simulator.crm import generate_crm
from convert.sources.mapping import Mapping
from convert.sources.readers import has_table

TABLES = ("leads", "accounts", "events", "stages")


@pytest.fixture
def export(tmp_path):
    folder = tmp_path / "crm"
    generate_crm(folder, n_leads=400, seed=3, fmt="csv", bad_rows=True)
    return folder


def _cfg(tmp_path, **data):
    return Config.from_dict({"data": {"max_quarantine_share": 0.5, "cache_dir": str(tmp_path / "cache"), **data}})


def _entries(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").glob("*.duckdb"))


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def _same(a, b):
    for t in TABLES:
        pd.testing.assert_frame_equal(_sorted(a.frame(t)), _sorted(b.frame(t)))
    pd.testing.assert_frame_equal(a.report.rejects, b.report.rejects)
    assert str(a.report) == str(b.report)
    assert a.report.quarantined == b.report.quarantined > 0
    for data in (a, b):  # the per-day activity is built by the first feature query (or the cache)
        ensure_indexed(data.con)
    for name in ("_leads_indexed", "_events_indexed", "_active_days"):
        x = a.con.execute(f"SELECT * FROM {name}").df()
        y = b.con.execute(f"SELECT * FROM {name}").df()
        pd.testing.assert_frame_equal(_sorted(x.astype(str)), _sorted(y.astype(str)))


def test_cached_and_uncached_loads_give_identical_tables_and_rejects(tmp_path, export):
    cfg = _cfg(tmp_path)
    plain = load(export, cfg, cache=False)
    assert _entries(tmp_path) == []  # --no-cache writes nothing
    first = load(export, cfg)
    second = load(export, cfg)
    assert (first.from_cache, second.from_cache) == (False, True)
    # a plain load leaves the per-day activity to the first feature query; a cache entry holds it
    assert not has_table(plain.con, "_active_days")
    assert has_table(second.con, "_active_days")
    assert len(_entries(tmp_path)) == 1
    _same(plain, first)
    _same(plain, second)
    # the rest of the pipeline works on the restored tables (the event-type ENUM included)
    assert second.con.execute("SELECT count(DISTINCT event_type) FROM _events_indexed").fetchone()[0] > 3


def test_a_changed_file_is_loaded_again(tmp_path, export):
    cfg = _cfg(tmp_path)
    before = load(export, cfg)
    events = export / "events.csv"
    text = events.read_text().splitlines(keepends=True)
    stat = events.stat()
    events.write_text("".join(text[:-1]))  # one event fewer
    os.utime(events, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the content decides
    after = load(export, cfg)
    assert not after.from_cache
    assert after.report.tables["events"].rows_read == before.report.tables["events"].rows_read - 1
    assert len(_entries(tmp_path)) == 2


def test_a_changed_config_or_mapping_is_loaded_again(tmp_path, export):
    load(export, _cfg(tmp_path))
    moved = load(export, _cfg(tmp_path, valid_from="2023-03-01"))
    assert not moved.from_cache
    assert moved.report.quarantined > load(export, _cfg(tmp_path)).report.quarantined
    mapping = Mapping.model_validate(
        {"name": "drop channel", "tables": {"events": {"exclude": {"channel": "not used"}}}}
    )
    mapped = load(export, _cfg(tmp_path), mapping=mapping)
    assert not mapped.from_cache
    assert mapped.frame("events")["channel"].isna().all()  # excluded: the contract column is empty
    assert load(export, _cfg(tmp_path)).frame("events")["channel"].notna().any()
    again = load(export, _cfg(tmp_path), mapping=mapping)
    assert again.from_cache and again.frame("events")["channel"].isna().all()


def test_thresholds_and_strict_apply_to_a_cached_load(tmp_path, export):
    from convert.exceptions import ContractError

    load(export, _cfg(tmp_path))
    with pytest.raises(ContractError, match="--strict"):
        load(export, _cfg(tmp_path), strict=True)


def test_at_most_cache_keep_exports_are_kept(tmp_path):
    cfg = _cfg(tmp_path, cache_keep=2)
    for seed in range(3):
        folder = tmp_path / f"crm{seed}"
        generate_crm(folder, n_leads=100, seed=seed, fmt="parquet", bad_rows=False)
        load(folder, cfg)
    assert len(_entries(tmp_path)) == 2
    assert not load(tmp_path / "crm0", cfg).from_cache  # the oldest was removed
    assert load(tmp_path / "crm2", cfg).from_cache


def test_default_cache_dir_is_beside_the_export(tmp_path, export):
    data = load(export, Config.from_dict({"data": {"max_quarantine_share": 0.5}}))
    assert not data.from_cache
    assert list((export / ".convert-cache").glob("*.duckdb"))
    assert load(export, Config.from_dict({"data": {"max_quarantine_share": 0.5}})).from_cache


def test_no_cache_flag_on_a_command_reads_the_files_and_writes_the_same_rejects(tmp_path, export, capsys):
    from convert.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  max_quarantine_share: 0.5\n  cache_dir: {tmp_path / 'cache'}\n")
    outs = []
    for k, flags in enumerate(([], [], ["--no-cache"])):
        rejects = tmp_path / f"rejects{k}.csv"
        main(["validate", "--data", str(export), "--config", str(params), "--rejects", str(rejects), *flags])
        outs.append(capsys.readouterr().out)
        assert rejects.read_text() == (tmp_path / "rejects0.csv").read_text()
    assert "from the cache" not in outs[0] and "from the cache" in outs[1] and "from the cache" not in outs[2]
    assert len(_entries(tmp_path)) == 1


def test_a_same_size_edit_with_the_mtime_set_back_changes_the_key_of_a_sampled_file(tmp_path, export, monkeypatch):
    """Large files are hashed by sample; an edit outside the sample is still seen (the ctime)."""
    from convert.sources import cache
    from convert.sources.readers import find_source

    monkeypatch.setattr(cache, "_WHOLE", 1024)  # every file of the small export is sampled
    cfg, mapping = _cfg(tmp_path), Mapping()
    before = cache.cache_key(find_source(export), cfg, mapping)
    assert cache.cache_key(find_source(export), cfg, mapping) == before  # stable
    events = export / "events.csv"
    data = bytearray(events.read_bytes())
    stat = events.stat()
    middle = len(data) // 2 + 7
    data[middle] = ord("7") if data[middle] != ord("7") else ord("8")
    events.write_bytes(bytes(data))
    os.utime(events, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert events.stat().st_size == stat.st_size and events.stat().st_mtime_ns == stat.st_mtime_ns
    assert cache.cache_key(find_source(export), cfg, mapping) != before
