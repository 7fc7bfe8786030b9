"""Chat records rendered with a chat template, and where the assistant's characters are in the result.

    text, spans = render_with_spans(tokenizer, messages, template, "train.jsonl:3")   # spans: [(start, end), ...]
    prompt = render_prompt(tokenizer, messages[:-1], template)    # + the generation prompt (evaluation)
    RAYKD_CHAT_TEMPLATE                                           # the offline tiny teacher's template

The assistant span of turn i is found by rendering twice: the conversation before it with the generation
prompt (the prefix) and the conversation through it; the characters between the two are the assistant's
content and the template's end-of-turn marker, what a model must learn to produce. This works for any
template that renders a conversation prefix-stably (each shorter conversation renders to a prefix of the
longer one), which chat templates are written to do so that multi-turn generation works; one that is not
is reported as a one-line error naming `data.chat_template`, not guessed at.
"""

from __future__ import annotations

from raykd.config import ConfigError

# raykd's own template for the tiny teacher: plain-text role tags (no new tokens) and the EOS token ending
# each assistant turn, so a model trained on it stops after answering. "<assistant>\n" is the generation
# prompt; a newline before the content keeps BPE from gluing the first word to the tag.
RAYKD_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<' + message['role'] + '>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>\n' }}{% endif %}"
)


def render_chat(messages: list[dict[str, str]], eos_token: str) -> str:
    """RAYKD_CHAT_TEMPLATE in Python (the tiny teacher's build renders its chat text with it, before any
    tokenizer exists); tests check it equals the Jinja rendering."""
    out = []
    for m in messages:
        out.append(f"<{m['role']}>\n{m['content']}" + (eos_token if m["role"] == "assistant" else "\n"))
    return "".join(out)


def _render(tokenizer, messages, template: str | None, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=generation_prompt,
                                         tokenize=False)


def render_prompt(tokenizer, messages: list[dict[str, str]], template: str | None = None) -> str:
    """The conversation so far plus the generation prompt: what a model answers from."""
    return _render(tokenizer, messages, template, True)


def render_with_spans(tokenizer, messages: list[dict[str, str]], template: str | None,
                      where: str) -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, character spans of every assistant turn)."""
    try:
        text = _render(tokenizer, messages, template, False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = _render(tokenizer, messages[:i], template, True) if i else _render(tokenizer, [], template, True)
            through = _render(tokenizer, messages[: i + 1], template, False)
            if not (text.startswith(through) and through.startswith(before)):
                raise ConfigError(
                    f"data.chat_template: the template does not render {where} prefix-stably (the conversation "
                    f"through message {i} is not the start of the whole), so its assistant tokens cannot be found; "
                    "give a template that does"
                )
            spans.append((len(before), len(through)))
    except ConfigError:
        raise
    except Exception as e:  # jinja2 errors: a broken template, or one that rejects this conversation
        raise ConfigError(f"data.chat_template: rendering {where} failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return text, spans
