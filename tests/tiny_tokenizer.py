"""A small byte-level BPE tokenizer built in-process, so tests never download a model.

It is trained on a few KB of English, Chinese and emoji text; being byte-level, any text encodes and
decodes back exactly. The special tokens cover the built-in chat templates (vicuna, chatml, llama3).
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = [
    "<pad>",
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama 3's own template: note the `| trim` on every message.
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

_ENGLISH = """\
Below is an instruction that describes a task. Write a response that appropriately completes the request.
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the user's questions. What is the capital of France? The capital of
France is Paris. Give three tips for staying healthy: eat a balanced diet, exercise regularly and sleep
well. Translate the following sentence into French. Write a short poem about the sea and the sky.
Explain why the sky is blue: sunlight is scattered by the molecules of the air, and blue light is
scattered more than red light. How many legs does a spider have? A spider has eight legs.
def add(a, b):\n    return a + b\nprint(add(2, 3))\n
The quick brown fox jumps over the lazy dog. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 42.
"""

_CHINESE = """\
以下是描述任务的指令。请编写一个适当完成请求的回答。
用户和人工智能助手之间的对话。助手对用户的问题给出有帮助的、详细的、礼貌的回答。
法国的首都是哪里？法国的首都是巴黎。请给出三个保持健康的建议：均衡饮食、经常锻炼、保证睡眠。
请把下面的句子翻译成英文。写一首关于大海和天空的短诗。为什么天空是蓝色的？
因为阳光被空气中的分子散射，蓝光比红光散射得更多。蜘蛛有几条腿？蜘蛛有八条腿。
我们今天学习机器学习和自然语言处理。数据清洗、去重和格式转换都很重要。
"""

_EMOJI = "😀 😃 😄 😁 😆 🙂 🙃 😉 😊 🚀 🌍 🌊 ☀️ ❤️ 👍 🎉 🐍 🤖 🇨🇳 🇫🇷 👩‍💻\n"


def training_text() -> list[str]:
    """A few KB of mixed text, repeated so the merges settle on common words and characters."""
    return [_ENGLISH, _CHINESE, _EMOJI] * 4


def build_tiny_tokenizer(
    directory: Path, chat_template: str | None = None, special_tokens: list[str] | None = None
) -> Path:
    """Train and save a HF tokenizer directory that AutoTokenizer loads offline; returns the directory.

    `special_tokens` replaces SPECIAL_TOKENS, e.g. to build a tokenizer that lacks one a template needs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=SPECIAL_TOKENS if special_tokens is None else special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return directory
