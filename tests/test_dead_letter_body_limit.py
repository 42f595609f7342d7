"""A dead letter keeps at most ``DEAD_LETTER_BODY_LIMIT`` bytes of a body, with the full
body's size and sha256, so a funnel sending huge messages cannot fill the store; the CLI
says when a body was cut. (The stores' round trip of these fields is in the contract suite.)
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexgate.events.decode import STRUCTURED, RawMessage
from indexgate.events.intake import DEAD_LETTER_BODY_LIMIT, ingest
from indexgate.cli import main
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.store import initialize_store
from indexgate.schemas.records import DeadLetter

LIMIT = DEAD_LETTER_BODY_LIMIT


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("INDEXGATE_DATA_DIR", str(tmp_path))  # for the CLI
    settings = Settings(data_dir=tmp_path, store_url=None, broker_url=None, source_allowlist=[],
                        max_event_bytes=1_048_576)
    initialize_store(settings)
    return settings


@pytest.fixture
def service(settings: Settings):
    service = Service.from_settings(settings)
    yield service
    service.store.close()


def dead_letter_of(service: Service, settings: Settings, body: bytes | str) -> DeadLetter:
    assert ingest(service, settings, RawMessage.build({}, STRUCTURED, body)).status == "dead_lettered"
    return service.store.dead_letters(1)[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_body_over_the_event_limit_is_kept_cut_with_its_size_and_sha256(service, settings):
    body = b"x" * 5_000_000
    letter = dead_letter_of(service, settings, body)
    assert "INDEXGATE_MAX_EVENT_BYTES" in letter.reason
    assert letter.body == "x" * LIMIT and letter.body_encoding == "utf-8" and letter.body_truncated
    assert (letter.body_bytes, letter.body_sha256) == (5_000_000, sha256(body))


def test_a_body_up_to_the_limit_is_kept_whole_and_measured(service, settings):
    body = "{" + "x" * (LIMIT - 1)
    letter = dead_letter_of(service, settings, body.encode())
    assert letter.body == body and not letter.body_truncated
    assert (letter.body_bytes, letter.body_sha256) == (LIMIT, sha256(body.encode()))


def test_a_cut_text_body_drops_only_the_character_split_by_the_cut(service, settings):
    body = ("{" + "é" * LIMIT).encode()  # the cut falls inside an 'é' (two bytes)
    letter = dead_letter_of(service, settings, body)
    assert letter.body_truncated and letter.body == "{" + "é" * ((LIMIT - 1) // 2)
    assert body.startswith(letter.body.encode()) and (letter.body_bytes, letter.body_sha256) == (
        len(body), sha256(body))


def test_a_cut_binary_body_stays_base64(service, settings):
    body = b"\xff" + bytes(range(256)) * (2 * LIMIT // 256)
    letter = dead_letter_of(service, settings, body)
    assert letter.body_encoding == "base64" and letter.body_truncated
    assert base64.b64decode(letter.body) == body[:LIMIT]
    assert (letter.body_bytes, letter.body_sha256) == (len(body), sha256(body))


def test_deadletters_list_says_a_body_was_cut_and_json_has_the_fields(service, settings):
    dead_letter_of(service, settings, b"{oops")
    dead_letter_of(service, settings, b"x" * (2 * LIMIT))
    run = CliRunner()
    cut, whole = run.invoke(main, ["deadletters", "list"], catch_exceptions=False).output.splitlines()
    assert f"[body truncated: {2 * LIMIT} bytes, sha256 {sha256(b'x' * (2 * LIMIT))}]" in cut
    assert "truncated" not in whole and "not JSON" in whole
    cut_json, whole_json = json.loads(run.invoke(main, ["deadletters", "list", "--json"]).output)
    assert (cut_json["body_truncated"], cut_json["body_bytes"], len(cut_json["body"])) == (True, 2 * LIMIT, LIMIT)
    assert (whole_json["body_truncated"], whole_json["body_bytes"], whole_json["body"]) == (False, 5, "{oops")
    assert whole_json["body_sha256"] == sha256(b"{oops")
