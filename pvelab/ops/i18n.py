"""Japanese narration for `status` and `drill` (`--lang ja`, default from the locale).

The tools build their text in English; in Japanese mode every output line passes through `translate`,
which rewrites the known sentences with the same facts (node names, numbers, states, PVE's own messages
are captured and kept as they are). JSON is never translated: it is for scripts, and stays the same in
both languages. A sentence without a pattern here stays English, so a new message is never lost.
HA states (started, fence, ...), commands and PVE's wording stay as PVE prints them: the reader sees them
in `ha-manager status` and the logs in that form.
"""
from __future__ import annotations

import locale
import os
import re
from typing import Callable, Optional

LANGS = ("en", "ja")
# (pattern, replacement): applied in order with re.sub on each line.
JA: list[tuple[str, str]] = [
    # ---- status
    (r"^Cluster (\S+): quorate (\S+), (\d+) of (\d+) members online  \[pvecm status\]",
     r"クラスタ \1: クォーラム \2、メンバー \4 台中 \3 台がオンライン  [pvecm status]"),
    (r"クォーラム yes、", "クォーラムあり、"), (r"クォーラム NO、", "クォーラムなし、"),
    (r"^Ceph: unreachable \((.*)\)  \[ceph -s\]", r"Ceph: 接続できません (\1)  [ceph -s]"),
    (r"^HA: unreadable \((.*)\)  \[ha-manager status\]", r"HA: 読み取れません (\1)  [ha-manager status]"),
    (r"^Cluster: unreadable \((.*)\)", r"クラスタ: 読み取れません (\1)"),
    (r"^  no HA services", "  HA サービスなし"),
    (r"^\(read through (.*)\)", r"(\1 の API で読み取り)"),
    (r"^Problems:", "問題:"), (r"^Healthy\.", "正常です。"),
    (r"^Logs \((.*), through the API\):", r"ログ (\1、API 経由):"),
    (r"^  (\S+): offline: its journal cannot be read through the API", r"  \1: オフラインのためジャーナルを読めません"),
    (r"\(no lines\)", "(行なし)"),
    (r"no quorum: (\d+) of (\d+) members online; /etc/pve is read-only and HA cannot recover services",
     r"クォーラムなし: メンバー \2 台中 \1 台のみオンライン。/etc/pve は読み取り専用で、HA はサービスを復旧できません"),
    (r"node (\S+) is offline", r"ノード \1 がオフラインです"),
    (r"HA service (\S+) is (\S+) on (\S+)$", r"HA サービス \1 は \3 で \2 状態です"),
    (r"this node is not in a cluster", "このノードはクラスタに属していません"),
    (r"HA service (\S+) is started on (\S+) but its guest is (\S+) \(not running yet, or frozen while quorum was "
     r"lost\)", r"HA サービス \1 は \2 で started ですが、ゲストは \3 です（まだ起動していないか、クォーラム喪失中に"
                r"凍結されたまま）"),
    (r"^Test VM (\S+): answers ping from (\S+)  \[ping\]", r"テスト VM \1: \2 からの ping に応答あり  [ping]"),
    (r"^Test VM (\S+): does NOT answer ping from (\S+)  \[ping\]",
     r"テスト VM \1: \2 からの ping に応答なし  [ping]"),
    (r"^Test VM (\S+): not pinged \((.*)\)  \[ping\]", r"テスト VM \1: ping できません (\2)  [ping]"),
    (r"the HA test VM runs but (\S+) does not answer ping \(from (\S+)\): check its console \(cloud-init, "
     r"network\)", r"HA テスト VM は稼働中ですが \1 が ping に応答しません（\2 から）: コンソールで確認してください"
                    r"（cloud-init、ネットワーク）"),
    (r"^pve-lab status (\S+), every (\S+) s \(Ctrl-C to stop\)", r"pve-lab status \1、\2 秒ごとに更新（Ctrl-C で終了）"),
    # ---- drill: report
    (r"^drill (\S+): completed", r"ドリル \1: 完了"), (r"^drill (\S+): FAILED", r"ドリル \1: 失敗"),
    (r"time to recovery: ([\d.]+) s \(power failure -> the VM runs on another node\)",
     r"復旧までの時間: \1 秒（電源断 → 別ノードで VM が稼働）"),
    (r"time to recovery: ([\d.]+) s \(cut -> the VM runs on another node\)",
     r"復旧までの時間: \1 秒（ネットワーク分断 → 別ノードで VM が稼働）"),
    (r"rejoin after power-on: ([\d.]+) s", r"復帰（再参加）までの時間: \1 秒"),
    (r"failback to the preferred node at \+([\d.]+) s", r"優先ノードへのフェイルバック: +\1 秒"),
    (r"migration: ([\d.]+) s \(request -> the VM runs on the target node\)",
     r"マイグレーション: \1 秒（要求 → 移行先で VM が稼働）"),
    (r"downtime: (\d+) ms \(QEMU's switch-over pause, from the qmigrate task log\)",
     r"停止時間: \1 ミリ秒（切り替え時の QEMU の一時停止。qmigrate タスクログより）"),
    (r"^  timeline:", "  タイムライン:"),
    (r"key log lines since the first stop \(\+0 = (\S+) here; (.*)\):",
     r"最初の操作以降の主なログ（+0 = こちらの時計で \1、\2）:"),
    (r"STILL STOPPED \(start them, see above\): (.*)", r"停止したままのノード（上のコマンドで起動してください）: \1"),
    (r"STILL CUT OFF \(restore their links, see above\): (.*)",
     r"切断されたままのノード（上のコマンドでリンクを戻してください）: \1"),
    (r"^  error: ", "  エラー: "),
    # ---- drill: events
    (r"(\S+) powered off \(outer VM (\d+) stopped hard\)", r"\1 の電源断（外側 VM \2 を強制停止）"),
    (r"(\S+) powered on \(outer VM (\d+) started\)", r"\1 の電源投入（外側 VM \2 を起動）"),
    (r"all (\d+) members online and quorate again", r"全 \1 台がオンラインに戻り、クォーラムが回復"),
    (r"VM (\d+) running on (\S+)", r"VM \1 が \2 で稼働中"),
    (r"quorum lost: (\d+) of (\d+) members online", r"クォーラム喪失: \2 台中 \1 台のみオンライン"),
    (r"write on (\S+) \(isolated\) refused: ", r"\1（孤立側）への書き込みが拒否されました: "),
    (r"write on (\S+) refused: ", r"\1 への書き込みが拒否されました: "),
    (r"(\S+) was reset during the drill \(uptime now (\d+) s\): its watchdog fired",
     r"\1 はドリル中にリセットされました（現在の稼働時間 \2 秒）: ウォッチドッグが発動"),
    (r"HA master (\S+): old timestamp - dead\?", r"HA マスター \1: old timestamp - dead?（更新が止まっている）"),
    (r"(\S+) cut off: link_down on (\S+) of outer VM (\d+) \(the node keeps running\)",
     r"\1 をネットワークから切断: 外側 VM \3 の \2 を link_down（ノードは動き続けます）"),
    (r"(\S+) reconnected: links of outer VM (\d+) restored", r"\1 を再接続: 外側 VM \2 のリンクを元に戻しました"),
    (r"(\S+) \(isolated, asked through the guest agent\): pvecm status says Quorate: No",
     r"\1（孤立側、ゲストエージェント経由）: pvecm status は Quorate: No"),
    (r"majority keeps quorum: (\d+) of (\d+) online, (\S+) offline",
     r"多数派はクォーラムを維持: \2 台中 \1 台がオンライン、\3 はオフライン"),
    (r"Ceph: (\d+) of (\d+) OSDs up", r"Ceph: OSD \2 個中 \1 個が up"),
    (r"migration of (\S+) to (\S+) requested", r"\1 の \2 へのマイグレーションを要求"),
    (r"QEMU paused the VM for (\d+) ms for the switch-over \(task (\S+)\)",
     r"切り替えのため QEMU が VM を \1 ミリ秒停止（タスク \2）"),
    # ---- drill: progress
    (r"^drill ha: (\S+) runs on (\S+); stopping that node hard \(outer VM (\d+) on (\S+)\) and watching HA "
     r"through the other nodes", r"ドリル ha: \1 は \2 で稼働中。そのノードを強制停止し（\4 上の外側 VM \3）、"
                                 r"他のノード経由で HA を観察します"),
    (r"^drill quorum: stopping (.*) hard; (.*) stay\(s\) up without a majority",
     r"ドリル quorum: \1 を強制停止します。\2 は多数派なしで動き続けます"),
    (r"^drill partition: cutting (\S+) off the network \(link_down on (\S+) of outer VM (\d+) on (\S+)\); it keeps "
     r"running, alone, and the others keep a majority",
     r"ドリル partition: \1 をネットワークから切り離します（\4 上の外側 VM \3 の \2 を link_down）。"
     r"\1 は孤立したまま動き続け、他のノードが多数派を保ちます"),
    (r"^drill migrate: live-migrating (\S+) from (\S+) to (\S+) \((.*)\)",
     r"ドリル migrate: \1 を \2 から \3 へライブマイグレーションします（\4）"),
    (r"^recovered: (\S+) runs on (\S+) ([\d.]+) s after the power failure",
     r"復旧: 電源断から \3 秒後に \1 が \2 で稼働"),
    (r"^recovered: (\S+) runs on (\S+) ([\d.]+) s after the cut", r"復旧: 分断から \3 秒後に \1 が \2 で稼働"),
    (r"^failback to (\S+) at \+([\d.]+) s \(.*\)",
     r"\1 へのフェイルバック: +\2 秒（ノードアフィニティルールが \1 を優先。ノード復帰後に HA が VM を戻しました）"),
    (r"^watching (\S+) for (\S+) s: without quorum HA must not recover it",
     r"\1 を \2 秒間観察します: クォーラムがなければ HA は復旧しないはずです"),
    (r"^starting the stopped node\(s\) again \.\.\.", "停止したノードを起動し直しています ..."),
    (r"^restoring the cut network link\(s\) \.\.\.", "切断したネットワークリンクを元に戻しています ..."),
    (r"^!! node (\S+) \(outer VM (\d+) on (\S+)\) may still be STOPPED or stop soon: ",
     r"!! ノード \1（\3 上の外側 VM \2）は停止したまま、またはこれから停止する可能性があります: "),
    (r"^!! node (\S+) \(outer VM (\d+) on (\S+)\) may still be CUT OFF: ",
     r"!! ノード \1（\3 上の外側 VM \2）はネットワークから切断されたままの可能性があります: "),
    (r"^!! start it with: ", "!! 起動コマンド: "), (r"^!! restore its links with: ", "!! リンクを戻すコマンド: "),
    (r"^drill (\S+) failed: ", r"ドリル \1 失敗: "),
    (r"^warning: ", "警告: "),
    # ---- drill: findings
    (r"what it means: without quorum .*",
     "意味: クォーラムがないと、生き残ったノードは動いているゲストをそのまま動かし続けますが、/etc/pve は読み取り専用"
     "になり（設定変更・VM の起動やマイグレーションは不可）、HA はフェンスも復旧もしません。こうして 2 つに分かれた"
     "クラスタが同じ VM を同時に動かすことを防ぎます。多数派が戻ればすべて再開します（孤立したノードで "
     "`pvecm expected 1` を実行すると強制的にクォーラムを得られますが、緊急時のみの手段です）"),
    (r"^  - (\S+): quorate no, (\d+) of (\d+) online \(pvecm status: 'Quorate: No', activity blocked\)",
     r"  - \1: クォーラムなし、\3 台中 \2 台のみオンライン（pvecm status: 'Quorate: No'、activity blocked）"),
    (r"/etc/pve is read-only on (\S+) \(isolated\): pmxcfs refuses writes",
     r"孤立した \1 の /etc/pve は読み取り専用: pmxcfs が書き込みを拒否"),
    (r"/etc/pve is read-only on (\S+): pmxcfs refuses writes", r"\1 の /etc/pve は読み取り専用: pmxcfs が書き込みを拒否"),
    (r"no HA recovery in (\S+) s: (\S+) stayed (.*) \(HA needs quorum to fence and recover\)",
     r"\1 秒間 HA による復旧なし: \2 は \3 のまま（HA はクォーラムがないとフェンスも復旧もできません）"),
    (r"; HA's own view: ", "。HA 自身の表示: "),
    (r"(\S+) rebooted during the drill: its HA agent held the watchdog and lost its lock without quorum, so the "
     r"watchdog reset it \(self-fencing, as designed\)",
     r"\1 はドリル中に再起動しました: HA エージェントがウォッチドッグを保持したままクォーラムを失いロックを失ったため、"
     r"ウォッチドッグがノードをリセットしました（設計どおりの自己フェンス）"),
    (r"HA never showed 'fence' for (\S+): (\S+) was also the HA master: .*",
     r"HA は \1 の 'fence' を表示しませんでした: \2 は HA マスターでもあったため、マネージャーロックの期限切れ（120 秒）"
     r"後に新しいマスターが引き継ぎ、自分のフェンス遅延（60 秒）を待ってから 1 ラウンドでフェンスと復旧を行いました"),
    (r"(\S+) \(isolated\): no quorum \(pvecm status 'Quorate: No'\)", r"\1（孤立側）: クォーラムなし（pvecm status 'Quorate: No'）"),
    (r"the majority \((.*)\) keeps quorum: (\d+) of (\d+) online", r"多数派（\1）はクォーラムを維持: \3 台中 \2 台がオンライン"),
    (r"HA fenced (\S+) and restarted (\S+) on (\S+) ([\d.]+) s after the cut; .*",
     r"HA は \1 をフェンスし、分断から \4 秒後に \2 を \3 で再起動しました。孤立した \1 はクォーラムがないため HA "
     r"エージェントのロックを失い、ウォッチドッグがノードをリセットするので、VM が 2 か所で同時に動くことはありません"),
    (r"Ceph marked the isolated node's OSDs down: (\d+) of (\d+) up",
     r"Ceph は孤立したノードの OSD を down にしました: \2 個中 \1 個が up"),
    (r"live migration (\S+) -> (\S+) in ([\d.]+) s; the VM kept running except for (\d+) ms .*",
     r"ライブマイグレーション \1 → \2: \3 秒。VM は \4 ミリ秒を除いて動き続けました（ディスクが共有ストレージの Ceph "
     r"にあるため、移すのはメモリだけです）"),
    (r"^pinging (\S+) from (\S+) every (\S+) s \(ping -D -O, through the guest agent\)",
     r"\2 から \1 へ \3 秒ごとに ping を送ります（ping -D -O、ゲストエージェント経由）"),
    (r"ping (\S+): no answer \(from (\S+)\)", r"ping \1: 応答なし（\2 から）"),
    (r"ping (\S+): answers again after ([\d.]+) s", r"ping \1: \2 秒後に応答が戻りました"),
    (r"a client saw (\S+) down for ([\d.]+) s \((\d+) of (\d+) pings answered, from (\S+)\)",
     r"クライアントから見た \1 の停止時間: \2 秒（\5 から、ping \4 回中 \3 回応答）"),
    (r"(\S+) answered every ping \((\d+) of (\d+), from (\S+)\): no downtime a client could see",
     r"\1 はすべての ping に応答（\4 から \3 回中 \2 回）: クライアントから見た停止はありません"),
    (r"quorum kept: (\d+) of (\d+) members online, plus the QDevice's vote",
     r"クォーラム維持: \2 台中 \1 台がオンライン + QDevice の 1 票"),
    (r"(\S+): still quorate with (\d+) of (\d+) nodes: the QDevice casts the tie-breaking vote .*",
     r"\1: \3 台中 \2 台でもクォーラムを維持: QDevice が決定票を投じるため（pvecm status: 'Flags: Quorate "
     r"Qdevice'）、偶数台のクラスタでも半数を失って動き続けます"),
    (r"unexpected: ", "想定外: "),
    (r"the nested cluster is not healthy before the drill", "ドリル開始前の入れ子クラスタが正常ではありません"),
]
_COMPILED = [(re.compile(p), r) for p, r in JA]


def default_lang(environ: Optional[dict] = None) -> str:
    """'ja' when the locale says Japanese (LC_ALL, LC_MESSAGES, LANG, then the process locale), else 'en'."""
    env = os.environ if environ is None else environ
    for key in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(key)
        if value:
            return "ja" if value.lower().startswith("ja") else "en"
    if environ is None:
        try:
            loc = locale.getlocale(locale.LC_MESSAGES)[0] or ""
        except (AttributeError, ValueError):
            loc = ""
        return "ja" if loc.lower().startswith("ja") else "en"
    return "en"


def translate(text: str, lang: str) -> str:
    """The text (one or more lines) in `lang`; English is returned as it is."""
    if lang != "ja":
        return text
    out = []
    for line in text.split("\n"):
        for pattern, repl in _COMPILED:
            line = pattern.sub(repl, line)
        out.append(line)
    return "\n".join(out)


def translating(out: Callable[[str], None], lang: str) -> Callable[[str], None]:
    return out if lang != "ja" else (lambda line: out(translate(line, lang)))
