"""The official `openai` client, unchanged, against a live server on loopback (the bundled shapes-mini)."""

import io

import numpy as np
import openai
import pytest

from tests.serve.conftest import data_url, decode_b64_png, example_image, png_bytes, ui_examples


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="test-key-123", max_retries=0)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["shapes-mini"]


def test_chat_with_an_image_answers_the_ui_examples(client):
    for example in ui_examples()["understand"]:
        image = data_url(example_image(example["image"]))
        # the question first, as clients often send it: the server lays it out as the model was trained
        reply = client.chat.completions.create(model="shapes-mini", messages=[{"role": "user", "content": [
            {"type": "text", "text": example["question"]}, {"type": "image_url", "image_url": {"url": image}}]}])
        assert reply.choices[0].message.content.strip() == example["answer"], example["question"]
        assert reply.choices[0].finish_reason == "stop" and reply.usage.prompt_tokens > 10


def test_multi_turn_chat_with_an_image_answer(client):
    first = client.chat.completions.create(
        model="shapes-mini", messages=[{"role": "user", "content": "Draw a red circle in the center"}],
        extra_body={"modalities": ["text", "image"], "seed": 5})
    content = first.choices[0].message.content
    assert isinstance(content, list) and [p["type"] for p in content][-1] == "image_url"
    drawn = decode_b64_png(content[-1]["image_url"]["url"].split(",", 1)[1])
    assert drawn.size == (64, 64) and drawn.mode == "RGB"
    pixels = np.asarray(drawn, dtype=int)
    assert (pixels[..., 0] - pixels[..., 2]).max() > 100  # something red was drawn
    # the answer (with its image) goes back as the assistant turn of the next request
    follow = client.chat.completions.create(model="shapes-mini", messages=[
        {"role": "user", "content": "Draw a red circle in the center"},
        {"role": "assistant", "content": content},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(drawn)}},
                                     {"type": "text", "text": "What is the color of the circle?"}]}],
        max_tokens=8)
    # shapes-mini is not trained on multi-turn chat: check the conversation reached it, not its wit
    assert isinstance(follow.choices[0].message.content, str) and follow.usage.completion_tokens <= 8
    assert follow.usage.prompt_tokens > first.usage.prompt_tokens + 16  # the answer image and the new question


def test_streaming_chat(client):
    example = ui_examples()["understand"][1]
    stream = client.chat.completions.create(
        model="shapes-mini", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(example_image(example["image"]))}},
            {"type": "text", "text": example["question"]}]}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == example["answer"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_images_generate_has_the_requested_size_and_follows_the_seed(client):
    prompt = ui_examples()["generate"][0]
    out = client.images.generate(model="shapes-mini", prompt=prompt, n=2, size="64x64", response_format="b64_json",
                                 extra_body={"seed": 11, "num_inference_steps": 6})
    images = [decode_b64_png(d.b64_json) for d in out.data]
    assert [im.size for im in images] == [(64, 64), (64, 64)] and out.size == "64x64"
    assert [d.model_extra["seed"] for d in out.data] == [11, 12]
    again = client.images.generate(model="shapes-mini", prompt=prompt, size="64x64",
                                   extra_body={"seed": 12, "num_inference_steps": 6})
    assert np.array_equal(np.asarray(decode_b64_png(again.data[0].b64_json)), np.asarray(images[1]))
    wide = client.images.generate(model="shapes-mini", prompt=prompt, size="128x64")
    assert decode_b64_png(wide.data[0].b64_json).size == (128, 64)


def test_images_edit(client):
    example = ui_examples()["edit"][1]  # "Take away the green cross."
    source = example_image(example["image"])
    out = client.images.edit(model="shapes-mini", image=("source.png", png_bytes(source), "image/png"),
                             prompt=example["instruction"], size="64x64", extra_body={"seed": 0})
    edited = decode_b64_png(out.data[0].b64_json)
    assert edited.size == (64, 64)
    green = lambda im: ((lambda a: (a[..., 1] > 120) & (a[..., 0] < 100) & (a[..., 2] < 100))(  # noqa: E731
        np.asarray(im.convert("RGB"), dtype=int))).sum()
    assert green(source) > 50 and green(edited) < green(source) / 4  # the cross is gone
    by_generation = client.images.edit(model="shapes-mini", image=io.BytesIO(png_bytes(source)),
                                       prompt=example["instruction"], extra_body={"decoder": "generation", "seed": 0})
    assert decode_b64_png(by_generation.data[0].b64_json).size == (64, 64)


def test_errors_are_openai_errors(client, live_server):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="shapes-mini", prompt="a red circle", n=50)
    assert caught.value.status_code == 400 and caught.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    intruder = openai.OpenAI(base_url=live_server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        intruder.models.list()


def test_the_documented_example_works_as_written(start_server, tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    example = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    server = start_server()  # no key, as in the example
    monkeypatch.chdir(tmp_path)
    exec(compile(example.replace("http://127.0.0.1:8000", server.url), "docs/serving.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "square"
    assert (tmp_path / "square.png").exists()


def test_the_docs_list_every_option():
    from pathlib import Path

    from nexusgen.serve.settings import setting_fields

    doc = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    missing = [f.name for f in setting_fields() if "--" + f.name.replace("_", "-") not in doc]
    assert not missing, f"docs/serving.md does not describe {missing}"
