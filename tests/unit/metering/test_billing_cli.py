"""``deepserve billing`` sub-commands, run in-process through their handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from deepserve.operator.commands import billing

pytestmark = pytest.mark.unit


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="deepserve")
    billing.register(parser.add_subparsers(dest="group"))
    args = parser.parse_args(["billing", *argv])
    return args.func(args)


def test_ingest_prices_export_report(tmp_path: Path, make_event, capsys) -> None:
    ledger = str(tmp_path / "l.db")
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(make_event(i).to_dict()) + "\n" for i in range(5)))
    prices = tmp_path / "prices.yaml"
    prices.write_text("currency: USD\ndefault: {perRequest: '0.5'}\n")
    assert run("ingest", "--ledger", ledger, str(events)) == 0
    assert run("ingest", "--ledger", ledger, str(events)) == 0
    assert "accepted 0, duplicates 5" in capsys.readouterr().out
    assert run("prices", "--ledger", ledger, str(prices), "--since", "2026-01-01") == 0
    out = tmp_path / "focus.csv"
    window = ["--from", "2026-11-01", "--to", "2026-11-02"]
    assert run("export", "--ledger", ledger, *window, "--format", "focus", "-o", str(out)) == 0
    assert (tmp_path / "focus.csv.metadata.json").exists()
    first = out.read_bytes()
    assert run("export", "--ledger", ledger, *window, "--format", "focus", "-o", str(out)) == 0
    assert out.read_bytes() == first
    capsys.readouterr()
    assert run("report", "--ledger", ledger, *window) == 0
    report = capsys.readouterr().out
    assert "prod/chat/v1" in report and "2.5000 USD" in report
    assert run("reconcile", "--ledger", ledger, *window, "--json") == 0
    assert json.loads(capsys.readouterr().out)["lines"][0]["status"] == "no-counters"


def test_bad_input_gives_clear_errors_and_writes_nothing(tmp_path: Path, make_event,
                                                          capsys) -> None:
    ledger = str(tmp_path / "l.db")
    bad = tmp_path / "bad.jsonl"
    wire = make_event(1).to_dict()
    bad.write_text(json.dumps(make_event(0).to_dict()) + "\n"
                   + json.dumps({**wire, "prompt_tokens": -3}) + "\n")
    assert run("ingest", "--ledger", ledger, str(bad)) == 2
    assert "events[1].prompt_tokens: must not be negative" in capsys.readouterr().err
    out = tmp_path / "x.csv"
    assert run("export", "--ledger", ledger, "--from", "2026-11-02", "--to", "2026-11-01",
               "-o", str(out)) == 2
    assert "to: must be after from" in capsys.readouterr().err
    assert not out.exists()
    assert run("export", "--ledger", str(tmp_path / "missing.db"), "--from", "2026-11-01",
               "--to", "2026-11-02") == 2
    assert "no ledger at" in capsys.readouterr().err
