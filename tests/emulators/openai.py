"""OpenAI emulator: the Images API as OpenAI's published document has it (`shared/openai-images-openapi.yaml`,
`tests/specs/`), and as api.openai.com answers it.

- `POST /v1/images/generations` (JSON), `POST /v1/images/edits` (multipart, `image` or `image[]`, `mask`),
  `POST /v1/images/variations` (multipart, one `image`).
- Models: the GPT image models (`gpt-image-1`, `gpt-image-1.5`, `gpt-image-1-mini`, `chatgpt-image-latest`)
  generate and edit, always answer `b64_json` with `size`, `quality`, `background`, `output_format`
  and token `usage`, refuse `response_format` (as OpenAI does: `unknown_parameter`), and stream
  (`stream`, `partial_images`: `image_generation.partial_image` / `image_edit.partial_image` events,
  then `*.completed`); `dall-e-2` generates, edits and makes variations (256, 512 or 1024 square,
  `url` by default); `dall-e-3` generates one image with a `revised_prompt`. Defaults as the
  document gives them: `dall-e-2` for generations and variations, `gpt-image-1.5` for edits.
- An unknown field is refused (`unknown_parameter`), unless the emulator was made with
  `extensions=True`: then `seed`, `num_inference_steps`, `guidance_scale` and `negative_prompt` are
  taken, as vLLM-Omni's and SGLang's OpenAI-compatible servers take them.
- Errors: `{"error": {"message", "type", "param", "code"}}` with OpenAI's codes: `invalid_value`,
  `unknown_parameter`, `invalid_api_key` (401), `model_not_found` (404), `rate_limit_exceeded` and
  `insufficient_quota` (429), `content_policy_violation` (dall-e) and `moderation_blocked` (GPT image,
  type `image_generation_user_error`) for a prompt with the word "forbidden", `server_error` (5xx).
  A fault may name any code; its type follows the code.
- A stream's prompt with the word "explode" ends in an `error` event after its first partial image.

Images are PNGs whatever `output_format` says (the answer states what was asked).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .base import DEFAULT_API_KEY, Emulator
from .errors import ProviderError
from .fields import Fields, b64, check_content_policy, require_image
from .wire import Request, Response, Send, json_response

GPT_IMAGE_MODELS = ("gpt-image-1", "gpt-image-1.5", "gpt-image-1-mini", "chatgpt-image-latest")
DALL_E_2, DALL_E_3 = "dall-e-2", "dall-e-3"
MODELS = (*GPT_IMAGE_MODELS, DALL_E_2, DALL_E_3)
GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536")
DALL_E_2_SIZES = ("256x256", "512x512", "1024x1024")
DALL_E_3_SIZES = ("1024x1024", "1792x1024", "1024x1792")
EXTENSIONS = ("seed", "num_inference_steps", "guidance_scale", "negative_prompt")
MAX_INPUT_IMAGES = 16
MAX_PROMPT = {DALL_E_2: 1000, DALL_E_3: 4000}
GPT_PROMPT_MAX = 32000

# OpenAI's `error.type` for each `error.code` it sends, and the code a bare status stands for.
TYPES: dict[str, str] = {
    "invalid_value": "invalid_request_error",
    "unknown_parameter": "invalid_request_error",
    "invalid_api_key": "invalid_request_error",
    "model_not_found": "invalid_request_error",
    "content_policy_violation": "invalid_request_error",
    "moderation_blocked": "image_generation_user_error",
    "rate_limit_exceeded": "requests",
    "insufficient_quota": "insufficient_quota",
}
CODES: dict[str, str | None] = {
    "invalid_request": "invalid_value",
    "invalid_prompt": "invalid_value",
    "invalid_size": "invalid_value",
    "content_policy": "content_policy_violation",
    "unauthorized": "invalid_api_key",
    "model_not_found": "model_not_found",
    "operation_not_supported": "invalid_value",
    "insufficient_quota": "insufficient_quota",
    "rate_limited": "rate_limit_exceeded",
    "upstream_error": None,
    "upstream_timeout": None,
    "overloaded": None,
    "internal": None,
}
_ENCODER = msgspec.json.Encoder()


@dataclass
class Settings:
    """What a request asked for, checked."""

    model: str
    n: int
    size: str  # what is produced
    quality: str | None
    background: str | None
    output_format: str
    response_format: str
    stream: bool
    partial_images: int
    extensions: dict[str, Any] = field(default_factory=dict)

    @property
    def gpt(self) -> bool:
        return self.model in GPT_IMAGE_MODELS

    @property
    def dims(self) -> tuple[int, int]:
        width, _, height = self.size.partition("x")
        return int(width), int(height)


class StreamResponse(Response):
    """An event stream: each chunk sent as it is made, with `pause` seconds between them."""

    def __init__(self, events: list[bytes], pause: float) -> None:
        super().__init__(200, b"", "text/event-stream", {"Cache-Control": "no-cache"})
        self.events = events
        self.pause = pause

    async def send(self, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for event in self.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await asyncio.sleep(self.pause)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def sse(event_type: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + event_type.encode() + b"\ndata: " + _ENCODER.encode(payload) + b"\n\n"


class OpenAIEmulator(Emulator):
    """api.openai.com's images endpoints under `/v1`."""

    name = "openai"

    def __init__(
        self, api_key: str = DEFAULT_API_KEY, *, extensions: bool = False, event_pause: float = 0.05, **kwargs: Any
    ) -> None:
        super().__init__(api_key, **kwargs)
        self.extensions = extensions
        self.event_pause = event_pause  # seconds between stream events, so that previews come before the end
        self.add_route(["POST"], "/v1/images/generations", self.generations)
        self.add_route(["POST"], "/v1/images/edits", self.edits)
        self.add_route(["POST"], "/v1/images/variations", self.variations)

    def provider_code(self, canonical: str) -> str:
        return CODES.get(canonical) or ""

    def envelope(self, error: ProviderError) -> dict[str, Any]:
        code = error.code or CODES.get(error.canonical)
        if error.status in (404, 405) and error.code is None and error.canonical == "invalid_request":
            code = None  # OpenAI's "Invalid URL (POST /v1/...)" names no code
        kind = TYPES.get(code or "") or ("server_error" if error.status >= 500 else "invalid_request_error")
        return {"error": {"message": error.message, "type": kind, "param": error.param, "code": code}}

    # ----- endpoints

    async def generations(self, request: Request) -> Response:
        body = request.json_object()
        known = (
            "prompt model n quality response_format output_format output_compression stream partial_images "
            "size moderation background style user"
        )
        self._refuse_unknown(body, known)
        fields = Fields(body)
        model = self._model(fields, DALL_E_2)
        prompt = self._prompt(fields, model)
        settings = self._settings(fields, model)
        fields.choice("moderation", ("low", "auto"), "auto")
        style = fields.string("style")
        if style is not None and (model != DALL_E_3 or style not in ("vivid", "natural")):
            raise _invalid("style", f"Invalid value: '{style}'. 'style' is for dall-e-3 only: vivid or natural")
        check_content_policy_of(prompt, model)
        return self._answer(request, settings, prompt, "image_generation")

    async def edits(self, request: Request) -> Response:
        form = request.form()
        texts = form.texts()
        self._refuse_unknown(
            {**texts, **{upload.field: None for upload in form.files("image", "image[]", "mask")}},
            "image image[] prompt mask background model n size response_format output_format output_compression "
            "user input_fidelity stream partial_images quality",
            from_form=True,
        )
        fields = Fields(texts, from_form=True)
        model = self._model(fields, "gpt-image-1.5")
        if model == DALL_E_3:
            raise _invalid("model", "Invalid value: 'dall-e-3'. Edits support dall-e-2 and the GPT image models")
        prompt = self._prompt(fields, model)
        images = form.files("image", "image[]")
        if not images:
            raise ProviderError("invalid_request", "'image' is required", param="image", code="invalid_value")
        if len(images) > (MAX_INPUT_IMAGES if model in GPT_IMAGE_MODELS else 1):
            raise _invalid("image", f"Too many images for {model}")
        sizes = [require_image(upload.data, "image") for upload in images]
        masks = form.files("mask")
        if masks and require_image(masks[0].data, "mask") != sizes[0]:
            raise _invalid("mask", "Invalid mask: it must have the same dimensions as the image")
        fields.choice("input_fidelity", ("high", "low"), "low")
        settings = self._settings(fields, model)
        check_content_policy_of(prompt, model)
        return self._answer(request, settings, prompt, "image_edit", input_images=len(images))

    async def variations(self, request: Request) -> Response:
        form = request.form()
        texts = form.texts()
        self._refuse_unknown(
            {**texts, **{upload.field: None for upload in form.files("image")}},
            "image model n response_format size user",
            from_form=True,
        )
        fields = Fields(texts, from_form=True)
        model = self._model(fields, DALL_E_2)
        if model != DALL_E_2:
            raise _invalid("model", f"Invalid value: '{model}'. Variations support dall-e-2 only")
        images = form.files("image")
        if len(images) != 1:
            raise ProviderError("invalid_request", "'image' is required: one PNG file", param="image")
        width, height = require_image(images[0].data, "image")
        if width != height:
            raise _invalid("image", "Invalid input image: it must be square")
        settings = self._settings(fields, model)
        return self._answer(request, settings, "", "")

    # ----- checks

    def _refuse_unknown(self, body: dict[str, Any], known: str, *, from_form: bool = False) -> None:
        allowed = set(known.split()) | (set(EXTENSIONS) if self.extensions else set())
        for name in body:
            if name not in allowed:
                raise ProviderError(
                    "invalid_request", f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
                )
        if self.extensions:
            fields = Fields(body, from_form=from_form)
            fields.integer("seed", 0, 0, 2**63 - 1)
            fields.integer("num_inference_steps", 1, 1, 200)
            fields.number("guidance_scale", None, 0, 100)
            fields.string("negative_prompt")

    @staticmethod
    def _model(fields: Fields, default: str) -> str:
        model = fields.text("model", default)
        if model not in MODELS:
            raise ProviderError(
                "model_not_found",
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return model

    @staticmethod
    def _prompt(fields: Fields, model: str) -> str:
        prompt = fields.raw("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ProviderError("invalid_prompt", "'prompt' is required", param="prompt", code="invalid_value")
        limit = MAX_PROMPT.get(model, GPT_PROMPT_MAX)
        if len(prompt) > limit:
            raise ProviderError(
                "invalid_prompt",
                f"Invalid 'prompt': string too long. Expected a string with maximum length {limit}.",
                param="prompt",
                code="string_above_max_length",
            )
        return prompt

    def _settings(self, fields: Fields, model: str) -> Settings:
        gpt = model in GPT_IMAGE_MODELS
        n = fields.integer("n", 1, 1, 10)
        if model == DALL_E_3 and n != 1:
            raise _invalid("n", "Invalid 'n': dall-e-3 makes one image a request (n=1)")
        response_format = fields.string("response_format")
        if gpt and response_format is not None:
            raise ProviderError(
                "invalid_request",
                "Unknown parameter: 'response_format'.",
                param="response_format",
                code="unknown_parameter",
            )
        if response_format not in (None, "url", "b64_json"):
            raise _invalid("response_format", f"Invalid value: '{response_format}'. Supported: 'url', 'b64_json'")
        size = fields.string("size")
        sizes = GPT_SIZES if gpt else DALL_E_3_SIZES if model == DALL_E_3 else DALL_E_2_SIZES
        if size is None or (size == "auto" and gpt):
            size = "1024x1024"
        if size not in sizes:
            raise ProviderError(
                "invalid_size",
                f"Invalid value: '{size}'. Supported values are: {', '.join(repr(s) for s in sizes)}.",
                param="size",
                code="invalid_value",
            )
        stream = _boolean(fields, "stream")
        partial_images = fields.integer("partial_images", 0, 0, 3)
        if stream and not gpt:
            raise _invalid("stream", f"Invalid value: 'stream'. Streaming is not supported for {model}")
        if stream and n != 1:
            raise _invalid("n", "Invalid 'n': a streamed request makes one image")
        qualities = ("standard", "hd", "auto") if model == DALL_E_3 else ("low", "medium", "high", "auto", "standard")
        quality = fields.choice("quality", qualities, "auto")
        background = fields.choice("background", ("transparent", "opaque", "auto"), "auto")
        output_format = fields.choice("output_format", ("png", "jpeg", "webp"), "png")
        compression = fields.integer("output_compression", 100, 0, 100)
        if compression != 100 and output_format == "png":
            raise _invalid("output_compression", "Invalid 'output_compression': only for jpeg and webp")
        fields.string("user")
        return Settings(
            model=model,
            n=n,
            size=size,
            quality={"auto": "medium", "standard": "medium"}.get(quality, quality) if gpt else None,
            background={"auto": "opaque"}.get(background, background) if gpt else None,
            output_format=output_format,
            response_format="b64_json" if gpt else response_format or "url",
            stream=stream,
            partial_images=partial_images,
        )

    # ----- answers

    def _answer(
        self, request: Request, settings: Settings, prompt: str, prefix: str, *, input_images: int = 0
    ) -> Response:
        width, height = settings.dims
        images = [self.png(width, height, prompt, settings.model, request.path, i, index=i) for i in range(settings.n)]
        usage = {
            "input_tokens": len(prompt.split()) + 65 * input_images,
            "input_tokens_details": {"text_tokens": len(prompt.split()), "image_tokens": 65 * input_images},
            "output_tokens": 272 * settings.n,
        }
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]  # type: ignore[operator]
        if settings.stream:
            return self._stream(request, settings, prompt, prefix, images[0], usage)
        data: list[dict[str, Any]] = []
        for png in images:
            b64_wanted = settings.response_format == "b64_json"
            item: dict[str, Any] = {"b64_json": b64(png)} if b64_wanted else {"url": self.publish(request, png)}
            if settings.model == DALL_E_3:
                item["revised_prompt"] = f"A detailed rendering of: {prompt}"
            data.append(item)
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if settings.gpt:  # what the GPT image models add; dall-e answers leave it out
            answer.update(
                background=settings.background,
                output_format=settings.output_format,
                size=settings.size,
                quality=settings.quality,
                usage=usage,
            )
        return json_response(answer)

    def _stream(
        self, request: Request, settings: Settings, prompt: str, prefix: str, final: bytes, usage: dict[str, Any]
    ) -> Response:
        width, height = settings.dims
        common = {
            "size": settings.size,
            "quality": settings.quality,
            "background": settings.background,
            "output_format": settings.output_format,
        }
        events = [b": the stream begins\n\n"]  # a comment, as a proxy's keep-alive would be
        for index in range(settings.partial_images):
            preview = self.png(width, height, prompt, "partial", index)
            payload = {
                "type": f"{prefix}.partial_image",
                "b64_json": b64(preview),
                "created_at": int(time.time()),
                "partial_image_index": index,
                **common,
            }
            events.append(sse(f"{prefix}.partial_image", payload))
            if "explode" in prompt:
                error = {"type": "server_error", "code": None, "message": "The stream broke", "param": None}
                events.append(sse("error", {"type": "error", "error": error}))
                return StreamResponse(events, self.event_pause)
        completed = {
            "type": f"{prefix}.completed",
            "b64_json": b64(final),
            "created_at": int(time.time()),
            **common,
            "usage": usage,
        }
        events.append(sse(f"{prefix}.completed", completed))
        return StreamResponse(events, self.event_pause)


def _boolean(fields: Fields, name: str) -> bool:
    value = fields.raw(name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    raise _invalid(name, f"Invalid type for '{name}': expected a boolean")


def _invalid(param: str, message: str) -> ProviderError:
    return ProviderError("invalid_request", message, param=param, code="invalid_value")


def check_content_policy_of(prompt: str, model: str) -> None:
    """The emulators' content policy (the word "forbidden"), refused as OpenAI refuses for each model family."""
    try:
        check_content_policy(prompt)
    except ProviderError:
        if model in GPT_IMAGE_MODELS:
            raise ProviderError(
                "content_policy",
                "Your request was rejected by the safety system.",
                code="moderation_blocked",
            ) from None
        raise ProviderError(
            "content_policy",
            "Your request was rejected as a result of our safety system.",
            code="content_policy_violation",
        ) from None
