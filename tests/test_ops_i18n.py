"""`--lang ja`: the same facts in Japanese, the same JSON in every language."""
from __future__ import annotations

import json

import pytest
import yaml

import pvelab.ops.cli as ops_cli
from ops_fixtures import (CLI_TIMEOUT, ROOT_PASSWORD, NestedFake, ca, lab_raw, lab_sim, nested_urls,  # noqa: F401
                          ops_servers, serve)
from pvelab.cli import main
from pvelab.ops.drill import DrillReport, Event, render_text
from pvelab.ops.i18n import default_lang, translate
from pvelab.stackfile import load_stack


@pytest.mark.parametrize("env,lang", [
    ({"LANG": "ja_JP.UTF-8"}, "ja"), ({"LC_ALL": "C.UTF-8", "LANG": "ja_JP.UTF-8"}, "en"),
    ({"LC_MESSAGES": "ja_JP"}, "ja"), ({"LANG": "en_US.UTF-8"}, "en"), ({}, "en")])
def test_language_from_the_locale(env, lang):
    assert default_lang(env) == lang


def test_status_in_japanese_and_the_same_json(serve, ca, tmp_path, monkeypatch, capsys):
    cluster = serve(NestedFake(lab_sim()))
    cluster.sim.power(9102, False)
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab_raw()}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", ROOT_PASSWORD)
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    args = ["status", "-s", "t", "--nested-ca", ca, *CLI_TIMEOUT] + [f"--nested-url={u}" for u in nested_urls(cluster)]
    assert main(args) == 1  # Japanese from the locale
    out = capsys.readouterr().out
    assert "クラスタ pve-lab: クォーラムあり、メンバー 3 台中 2 台がオンライン  [pvecm status]" in out
    assert "問題:" in out and "ノード pve3 がオフラインです" in out
    assert main(args + ["--lang", "en"]) == 1
    assert "Cluster pve-lab: quorate yes, 2 of 3 members online" in capsys.readouterr().out

    def as_json(lang):
        assert main(args + ["--format", "json", "--lang", lang]) == 1
        data = json.loads(capsys.readouterr().out)
        data["ha"].pop("master")  # carries a clock time
        for lrm in data["ha"]["lrm"]:
            lrm.pop("status")
        return data

    assert as_json("ja") == as_json("en")


def test_drill_report_in_japanese_keeps_every_fact():
    report = DrillReport("quorum", ok=True, stopped=["pve1", "pve3"], rejoin_s=61.25, events=[
        Event(0.0, "pve1 powered off (outer VM 9100 stopped hard)"),
        Event(12.5, "quorum lost: 1 of 3 members online"),
        Event(13.0, "write on pve2 refused: PUT /nodes/pve2/config at pve2: 500 unable to open file "
                    "'/etc/pve/nodes/pve2/config.tmp.4242' - Permission denied"),
        Event(330.0, "all 3 members online and quorate again")],
        findings=["pve2: quorate no, 1 of 3 online (pvecm status: 'Quorate: No', activity blocked)",
                  "no HA recovery in 300 s: vm:100 stayed started on pve1 (HA needs quorum to fence and recover); "
                  "HA's own view: master pve1 'old timestamp - dead?'"])
    ja = translate(render_text(report), "ja")
    assert "ドリル quorum: 完了" in ja and "復帰（再参加）までの時間: 61.2 秒" in ja
    assert "pve1 の電源断（外側 VM 9100 を強制停止）" in ja
    assert "クォーラム喪失: 3 台中 1 台のみオンライン" in ja
    assert "pve2 への書き込みが拒否されました: PUT /nodes/pve2/config" in ja and "Permission denied" in ja
    assert "全 3 台がオンラインに戻り、クォーラムが回復" in ja
    assert "pve2: クォーラムなし、3 台中 1 台のみオンライン" in ja
    assert ("300 秒間 HA による復旧なし: vm:100 は started on pve1 のまま（HA はクォーラムがないとフェンスも復旧も"
            "できません）。HA 自身の表示: master pve1 'old timestamp - dead?'") in ja
    assert translate(render_text(report), "en") == render_text(report)


def test_ping_and_qdevice_narration_in_japanese():
    assert translate("  - a client saw 10.0.0.5 down for 160.5 s (300 of 620 pings answered, from pve2)", "ja") == \
        "  - クライアントから見た 10.0.0.5 の停止時間: 160.5 秒（pve2 から、ping 620 回中 300 回応答）"
    assert translate("  +  12.0 s  quorum kept: 1 of 2 members online, plus the QDevice's vote", "ja") == \
        "  +  12.0 s  クォーラム維持: 2 台中 1 台がオンライン + QDevice の 1 票"
    assert translate("  +   1.0 s  ping 10.0.0.5: no answer (from pve2)", "ja") == "  +   1.0 s  ping 10.0.0.5: 応答なし（pve2 から）"
