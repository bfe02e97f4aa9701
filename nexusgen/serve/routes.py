"""The three model endpoints: chat completions, image generations, image edits.

Each handler validates its request fully (`nexusgen.serve.requests`), queues one `Job` on the worker and
waits for it or for the client to go away, whichever comes first; a client that disconnects has its
queued work dropped. Blocking work outside the model (decoding input images, encoding PNGs) runs in a
thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from nexusgen.processing.templates import IMAGE_PLACEHOLDER
from nexusgen.serve import requests as checks
from nexusgen.serve.errors import APIError, bad_request, validation_error
from nexusgen.serve.media import image_from_bytes, png_base64, png_data_url
from nexusgen.serve.schemas import (
    ChatCompletionRequest,
    ImageEditForm,
    ImageGenerationRequest,
    chat_chunks,
    chat_response,
    images_response,
)
from nexusgen.serve.worker import Job

router = APIRouter()

FORM_LIMITS = {"max_files": 4, "max_fields": 32, "max_part_size": 64 * 1024}
"""Multipart limits of /v1/images/edits: a few files, few small text fields (Starlette's defaults are 1000)."""
DEADLINE_SLACK_S = 30.0
"""How long past its deadline a started job may run before its request gives up (the worker is stuck)."""


def submit_job(request: Request, task: str, items: list, seeds: list[int], options: dict) -> Job:
    """Queue a job on the worker (429 / 503 at once when it cannot be queued)."""
    state = request.app.state
    loop = asyncio.get_running_loop()
    job = Job(task, items, seeds, options, deadline=time.monotonic() + state.settings.request_timeout_s,
              future=loop.create_future(), loop=loop)
    state.worker.submit(job)
    return job


async def await_job(request: Request, job: Job) -> list:
    """Wait for a queued job's outputs; drop it if the client disconnects first."""
    state = request.app.state
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({job.future, watcher}, timeout=state.settings.request_timeout_s + DEADLINE_SLACK_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if job.future in done:
            return job.future.result()
        job.cancel()
        if watcher in done:
            raise APIError(499, "client closed the request", code="client_disconnected")
        raise APIError(503, "the request took longer than its deadline", code="deadline_exceeded",
                       headers={"Retry-After": str(state.worker.retry_after())})
    except asyncio.CancelledError:  # the server cancelled the handler (streaming disconnect, shutdown)
        job.cancel()
        raise
    finally:
        watcher.cancel()


async def run_job(request: Request, task: str, items: list, seeds: list[int], options: dict) -> list:
    """Queue a job and wait for its outputs (one per item)."""
    return await await_job(request, submit_job(request, task, items, seeds, options))


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read, so the next message is the end)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _model(request: Request):
    return request.app.state.model


# -- /v1/images/generations --------------------------------------------------------------------------
@router.post("/v1/images/generations")
async def images_generations(body: ImageGenerationRequest, request: Request):
    state, model = request.app.state, _model(request)
    checks.check_model_name(body.model, state.model_name)
    checks.check_prompt(body.prompt, "prompt", state.settings, model.processor.tokenizer)
    n = checks.check_n(body.n, state.settings)
    options = checks.image_options(body, model, state.settings)
    seeds = checks.item_seeds(body.seed, n)
    images = await run_job(request, "generate", [body.prompt] * n, seeds, options)
    state.metrics.produced("generate", len(images))
    encoded = await run_in_threadpool(lambda: [png_base64(im) for im in images])
    return JSONResponse(images_response(encoded, seeds, images[0].size))


# -- /v1/images/edits --------------------------------------------------------------------------------
@router.post("/v1/images/edits")
async def images_edits(request: Request):
    state, model = request.app.state, _model(request)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise APIError(415, "send the edit as multipart/form-data with 'image' and 'prompt' fields",
                       code="unsupported_media_type")
    form = await request.form(**FORM_LIMITS)
    try:
        upload, fields = _edit_fields(form)
        body = ImageEditForm(**fields)
    except ValidationError as err:
        raise validation_error(err) from None
    checks.check_model_name(body.model, state.model_name)
    checks.check_prompt(body.prompt, "prompt", state.settings, model.processor.tokenizer)
    n = checks.check_n(body.n, state.settings)
    options = checks.image_options(body, model, state.settings, edit=True, decoder=body.decoder)
    data = await upload.read()
    image = await run_in_threadpool(image_from_bytes, data, "image", state.settings)
    seeds = checks.item_seeds(body.seed, n)
    images = await run_job(request, "edit", [(image, body.prompt)] * n, seeds, {**options, "decoder": body.decoder})
    state.metrics.produced("edit", len(images))
    encoded = await run_in_threadpool(lambda: [png_base64(im) for im in images])
    return JSONResponse(images_response(encoded, seeds, images[0].size))


def _edit_fields(form) -> tuple[UploadFile, dict]:
    """The one uploaded image and the text fields of an edit form (400 for anything else)."""
    uploads = form.getlist("image") + form.getlist("image[]")
    if not uploads:
        raise bad_request("missing required parameter: image (a multipart file)", "image",
                          "missing_required_parameter")
    if len(uploads) > 1:
        raise bad_request(f"{len(uploads)} images: this model edits one image at a time (no multi-reference "
                          "editing); send a single 'image'", "image", "too_many_images")
    if not isinstance(uploads[0], UploadFile):
        raise bad_request("image must be a file upload, not a text field", "image", "invalid_image")
    if "mask" in form:
        raise bad_request("mask is not supported: the model edits from the instruction alone", "mask",
                          "unsupported_parameter")
    fields = {}
    for key, value in form.multi_items():
        if key in ("image", "image[]"):
            continue
        if isinstance(value, UploadFile):
            raise bad_request(f"{key} must be a text field, not a file", key, "invalid_value")
        if key in fields:
            raise bad_request(f"{key} is given more than once", key, "invalid_value")
        fields[key] = value
    return uploads[0], fields


# -- /v1/chat/completions ----------------------------------------------------------------------------
@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state, model = request.app.state, _model(request)
    checks.check_model_name(body.model, state.model_name)
    options = checks.chat_options(body, model, state.settings)
    if options["image_output"]:
        options.update(checks.image_options(body, model, state.settings))
    conversation, prompt_tokens = await run_in_threadpool(checks.conversation, body.messages, model,
                                                          state.settings)
    seed = checks.item_seeds(body.seed, 1)[0]
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.stream:  # queued before the 200 goes out, so a full queue is still a real 429
        job = submit_job(request, "chat", [conversation], [seed], options)
        return StreamingResponse(_stream(request, job, options, prompt_tokens, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    reply = (await run_job(request, "chat", [conversation], [seed], options))[0]
    content = await run_in_threadpool(_content, reply)
    state.metrics.produced("chat", len(reply.images))
    usage, finish = _usage(model, reply, prompt_tokens, options["max_new_tokens"])
    return JSONResponse(chat_response(state.model_name, content, usage, finish, seed))


async def _stream(request: Request, job: Job, options: dict, prompt_tokens: int, include_usage: bool):
    """SSE: the answer's chunks once the worker has decoded it (answers are decoded whole, in batches)."""
    state = request.app.state
    try:
        reply = (await await_job(request, job))[0]
    except APIError as err:  # after the 200 has gone: an error event, as vLLM-Omni sends
        yield f"data: {json.dumps({'object': 'error', 'error': {'message': err.message, 'code': err.code}})}\n\n"
        yield "data: [DONE]\n\n"
        return
    usage, finish = _usage(_model(request), reply, prompt_tokens, options["max_new_tokens"])
    for chunk in chat_chunks(state.model_name, reply.text, usage, finish, include_usage):
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def _content(reply):
    """A reply as OpenAI message content: a string, or text and image_url parts when it holds images."""
    if not reply.images:
        return reply.text
    parts = []
    pieces = reply.text.split(IMAGE_PLACEHOLDER)
    for k, piece in enumerate(pieces):
        if piece:
            parts.append({"type": "text", "text": piece})
        if k < len(reply.images):
            parts.append({"type": "image_url", "image_url": {"url": png_data_url(reply.images[k])}})
    return parts


def _usage(model, reply, prompt_tokens: int, budget: int) -> tuple[dict, str]:
    """Token counts (an answer image counts its N + 2 positions) and why the answer ended."""
    tokenizer = model.processor.tokenizer
    text = reply.text.replace(IMAGE_PLACEHOLDER, "")
    completion = len(tokenizer.encode(text, add_special_tokens=False))
    completion += len(reply.images) * (model.config.num_output_tokens + 2)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
             "total_tokens": prompt_tokens + completion}
    return usage, "length" if completion >= budget else "stop"
