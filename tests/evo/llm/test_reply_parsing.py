"""Recorded-style replies (the formats real models send, malformed ones included) served by
the fake OpenAI server, fetched by the real client, parsed into name / code / thought."""
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from db.models import Base

from evo.llm import ChatRequest, LLMClient, load_settings
from evo.traverse.parse import parse_reply, signature_arity
from tests.evo.fake_openai import FakeOpenAI, Reply

REPLIES = Path(__file__).parent / "replies"
SOFTMAX_ARITY = signature_arity("entry(x: Tensor[M, N]) -> Tensor[M, N]")


@pytest.fixture(scope="module")
def fetch(tmp_path_factory):
    """fetch(name): the recorded reply `name`, as the client received it from the server."""
    engine = create_engine(f"sqlite:///{tmp_path_factory.mktemp('parse') / 'llm.db'}")
    Base.metadata.create_all(engine)
    replay = lambda body, n: Reply((REPLIES / body["messages"][0]["content"]).read_text())  # noqa: E731
    with FakeOpenAI(replay) as server:
        client = LLMClient(load_settings(server.env()), sessionmaker(engine))

        def fetch(name: str) -> str:
            [reply] = client.generate([ChatRequest(({"role": "user", "content": name},), key=name)])
            assert reply.error is None and reply.text == (REPLIES / name).read_text()
            return reply.text

        yield fetch
    engine.dispose()


@pytest.mark.parametrize("name, language, must_contain, reply_name, thought_start", [
    ("fenced_python.txt", "triton", "_row_softmax[(x.shape[0],)]", "single-pass row softmax with 4 warps",
     "The rows of the benchmark fit"),
    ("triton_tag_bold_labels.txt", "triton", "tl.exp2", "exp2 softmax", "Replace exp with exp2"),
    ("untagged_fence.txt", "triton", "return x.clone()", "plain fence", "Same kernel"),
    ("think_then_answer.txt", "triton", "return x * 1.0", "thought-out kernel", "Fuse max and sum"),
    ("cuda_cupy.txt", "cuda", "__shfl_xor_sync", "warp-per-row CUDA softmax", "One warp per row"),
])
def test_usable_replies(fetch, name, language, must_contain, reply_name, thought_start):
    parsed = parse_reply(fetch(name), language=language, arity=SOFTMAX_ARITY)
    assert parsed.error is None and parsed.code is not None
    assert must_contain in parsed.code and "```" not in parsed.code
    assert parsed.name == reply_name and parsed.thought.startswith(thought_start)
    assert parsed.language == language
    compile(parsed.code, name, "exec")


def test_a_kernel_and_its_wrapper_in_two_blocks_are_joined_and_usage_is_left_out(fetch):
    parsed = parse_reply(fetch("kernel_and_wrapper_split.txt"), arity=SOFTMAX_ARITY)
    assert parsed.error is None
    assert "@triton.jit" in parsed.code and "def entry(x):" in parsed.code
    assert parsed.code.index("def _copy") < parsed.code.index("def entry")
    assert "print(entry(x))" not in parsed.code  # the usage example would run at import


def test_language_both_is_read_from_the_code(fetch):
    assert parse_reply(fetch("cuda_cupy.txt"), language="both", arity=1).language == "cuda"
    assert parse_reply(fetch("fenced_python.txt"), language="both", arity=1).language == "triton"


@pytest.mark.parametrize("name, error", [
    ("truncated.txt", "cut off at max_tokens"),
    ("wrong_signature.txt", "takes 3 positional parameter(s) (x, dim, dtype) but the task calls it with 1"),
    ("prose_only.txt", "no code block (prose only)"),
])
def test_unusable_replies_are_recorded_with_a_reason(fetch, name, error):
    parsed = parse_reply(fetch(name), arity=SOFTMAX_ARITY)
    assert parsed.code is None and error in parsed.error


def test_prose_only_keeps_the_idea_as_thought(fetch):
    parsed = parse_reply(fetch("prose_only.txt"), arity=SOFTMAX_ARITY)
    assert parsed.thought.startswith("To make this softmax faster")


@pytest.mark.parametrize("text, error", [
    ("", "empty"),
    ("<think>\nlet me consider the tiling for a long while", "inside its <think>"),
    ("```json\n{\"a\": 1}\n```", "only non-Python code blocks"),
    ("```python\ndef main(x):\n    return x\n```", "no top-level function `entry"),
    ("```python\nclass K:\n    def entry(self, x):\n        return x\n```", "no top-level function `entry"),
    ("```python\nimport cupy\ndef entry(x):\n    return x\n```", "__global__"),
])
def test_more_malformed_replies(text, error):
    language = "cuda" if "cupy" in text else "triton"
    parsed = parse_reply(text, language=language, arity=1)
    assert parsed.code is None and error in parsed.error


def test_the_last_complete_version_wins_and_defaults_are_accepted():
    text = ("First try:\n```python\ndef entry(x):\n    return x\n```\nBetter:\n"
            "```python\ndef entry(x, out=None):\n    return x + 0\n```\n")
    parsed = parse_reply(text, arity=1)
    assert parsed.error is None and "x + 0" in parsed.code and "return x\n" not in parsed.code


def test_windows_line_endings():
    parsed = parse_reply("NAME: crlf\r\n```python\r\ndef entry(x):\r\n    return x\r\n```\r\n", arity=1)
    assert parsed.error is None and parsed.name == "crlf" and "\r" not in parsed.code


def test_signature_arity():
    assert signature_arity("entry(x: Tensor[M, N]) -> Tensor[M, N]") == 1
    assert signature_arity("entry(q: Tensor[B, H, T, D], k: Tensor, v: Tensor, scale: float) -> (Tensor, Tensor)") == 4
    assert signature_arity("not a signature(") is None
