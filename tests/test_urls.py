"""convert.io.urls: one reading of database URLs, env: locations and redaction, used by io and
writeback (finding 7 of issue 14: a password with a raw ``@`` was partly printed)."""

from __future__ import annotations

import logging

import pytest
from tests.conftest import require_postgres

from convert.config import Config
from convert.exceptions import ConfigError, ContractError, WritebackError
from convert.io.urls import engine_url, is_database_url, redact_url, resolve_env, secrets_of
from convert.sources.readers import redact_url as io_redact_url
from convert.sources.readers import resolve_data


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://postgres:p@ss@db.example:5432/crm", "postgresql://postgres:***@db.example:5432/crm"),
        ("postgres://u:pa/ss@h/db", "postgres://u:***@h/db"),
        ("postgresql://u:p?w#x@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:pw@h/db?application_name=a@b", "postgresql://u:***@h/db?application_name=a@b"),
        ("postgresql://u:pw@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        ("postgresql://scorer:Pa55@[::1/crm", "postgresql://scorer:***@[::1/crm"),  # invalid URL
        ("postgresql://u@h/db", "postgresql://u@h/db"),  # no password
        ("sqlite:///data/a@b.db", "sqlite:///data/a@b.db"),
        ("scores.csv", "scores.csv"),
    ],
)
def test_redaction_parses_the_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert io_redact_url(url) == shown  # io uses the same function
    for secret in secrets_of(url):
        assert secret not in shown.split("://", 1)[1].split("@")[0]


def test_a_raw_at_sign_in_the_password_connects_to_the_host_written() -> None:
    url = engine_url("postgresql://postgres:p@ss@db.example:5433/crm")
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg", "postgres", "p@ss", "db.example", 5433, "crm"
    )
    assert engine_url("postgres://u:p%40ss@h/db").password == "p@ss"
    assert engine_url("sqlite:///x.db").drivername == "sqlite"
    with pytest.raises(ValueError, match=r"\*\*\*") as info:
        engine_url("postgresql://u:Pa55@[::1/crm")
    assert "Pa55" not in str(info.value)


def test_env_locations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVERT_TEST_URL", "postgresql://u:pw@h/db")
    assert resolve_env("env:CONVERT_TEST_URL", "--out") == "postgresql://u:pw@h/db"
    assert resolve_env("scores.csv", "--out") == "scores.csv"
    monkeypatch.delenv("CONVERT_TEST_URL")
    with pytest.raises(ValueError, match="--out env:CONVERT_TEST_URL"):
        resolve_env("env:CONVERT_TEST_URL", "--out")
    with pytest.raises(ConfigError, match="--data env:CONVERT_TEST_URL"):
        resolve_data("env:CONVERT_TEST_URL")
    assert is_database_url("sqlite:///x.db") and not is_database_url("data/export")


SECRET_URLS = [
    "postgresql://scorer:Pa55@w0rd@127.0.0.1:1/crm",  # raw @: connection refused
    "postgresql://scorer:Pa55/w0rd@127.0.0.1:1/crm",  # raw /
    "postgresql://scorer:Pa55@w0rd@[::1/crm",  # not a valid URL
]
PIECES = ("Pa55", "w0rd", "Pa55@w0rd", "Pa55%40w0rd", "Pa55/w0rd", "Pa55%2Fw0rd")


def _texts(exc: BaseException) -> list[str]:
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        texts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return texts


@pytest.mark.parametrize("url", SECRET_URLS)
def test_no_part_of_the_password_is_shown_by_writeback_or_io(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.test_writeback import make_scores

    from convert.io.writers import write_scores
    from convert.sources.export import load

    caplog.set_level(logging.DEBUG)
    with pytest.raises(WritebackError) as written:
        write_scores(make_scores(5), url)
    with pytest.raises((ContractError, ConfigError)) as read:
        load(url, Config())
    for text in [*_texts(written.value), *_texts(read.value), caplog.text]:
        assert not any(piece in text for piece in PIECES), text
    assert "scorer:***@" in str(written.value)


@pytest.mark.postgres
def test_a_password_with_a_raw_at_sign_works_against_the_server() -> None:
    """Trust authentication ignores the password: the URL must still reach the right host,
    and neither the summary nor a read error shows any part of it."""
    from sqlalchemy.engine import make_url
    from tests.test_writeback import _pg_execute, make_scores, unique_table

    from convert.io.writers import read_table, write_scores

    base = make_url(require_postgres())
    host = f"{base.host}:{base.port or 5432}"
    url = f"postgresql://{base.username}:Pa55@w0rd@{host}/{base.database}"
    table = unique_table("t_raw_at_password")  # its own table: tests may run in parallel
    try:
        summary = write_scores(make_scores(20), url, table)
        assert not any(piece in str(summary) for piece in PIECES)
        assert f"{base.username}:***@{host}" in summary.target
        assert len(read_table(url, table)) == 20
    finally:
        _pg_execute(f'DROP TABLE IF EXISTS "{table}", "{table}_history" CASCADE')
