"""The API as pydantic models: what each endpoint accepts and what it answers.

Request models are built for the served model (`requests(vocab, context)`), so token ids, top_k and
max_tokens carry that model's bounds; they forbid unknown fields and coerce nothing (strict: "10" is
not 10, true is not 1, NaN is not a number). The same models are the `/openapi.json` a client or a
fuzzer reads, so the document states exactly what is accepted. What no schema can say (a prompt plus
max_tokens against the context, stream_options without stream) is checked in `api.py`.
"""
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from neojax.infer.programs import TOP_LOGPROBS

MAX_N = 16      # choices per request (prompts x n)
MAX_STOP = 16   # stop strings per request


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(Strict):
    include_usage: bool = Field(False, description="a last chunk with the request's token counts")


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


Stop = Optional[Union[str, Annotated[list[str], Field(max_length=MAX_STOP)]]]


def requests(vocab: int, context: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """The completion and chat request models for a model with `vocab` tokens and `context` positions."""
    token_ids = Annotated[list[Annotated[int, Field(ge=0, lt=vocab)]], Field(min_length=1, max_length=context)]
    prompts = Annotated[list[Union[str, Annotated[list[Annotated[int, Field(ge=0, lt=vocab)]],
                                                  Field(max_length=context)]]],
                        Field(min_length=1, max_length=MAX_N)]

    class Sampling(Strict):
        model: Optional[str] = Field(None, description="the served model's name (GET /v1/models)")
        max_tokens: Optional[int] = Field(None, ge=0, le=context, description=(
            f"tokens to generate; the prompt plus max_tokens must fit the {context}-token context"))
        temperature: Optional[float] = Field(None, ge=0, description="0 is greedy (default 1)")
        top_p: Optional[float] = Field(None, gt=0, le=1, description="nucleus sampling mass, in (0, 1]")
        top_k: Optional[int] = Field(None, ge=0, le=vocab, description=f"keep the k likeliest tokens (0: all; at most "
                                                                        f"{vocab})")
        stop: Stop = Field(None, description=f"a string or at most {MAX_STOP} strings that end the text")
        n: Optional[int] = Field(None, ge=1, le=MAX_N, description=f"choices per prompt (at most {MAX_N} in all)")
        seed: Optional[int] = Field(None, ge=0, lt=2 ** 32, description=(
            "the same seed, the same text (0 to 2**32 - 1, as generate's --seed)"))
        stream: Optional[bool] = Field(None, description="server-sent events, one chunk per piece of text")
        stream_options: Optional[StreamOptions] = Field(None, description="only with stream: true")
        presence_penalty: Optional[float] = Field(None, ge=0, le=0, description="not supported: only 0")
        frequency_penalty: Optional[float] = Field(None, ge=0, le=0, description="not supported: only 0")
        best_of: Optional[int] = Field(None, ge=1, le=MAX_N, description="only equal to n")

    class CompletionRequest(Sampling):
        prompt: Union[str, token_ids, prompts] = Field(description=(
            f"a string, a list of token ids in [0, {vocab}), or a list of at most {MAX_N} strings or token-id lists"))
        echo: Optional[bool] = Field(None, description="return the prompt before the completion")
        logprobs: Optional[int] = Field(None, ge=0, le=TOP_LOGPROBS, description=(
            f"log-probabilities of each token and of the {TOP_LOGPROBS} likeliest (not with stream)"))

    class ChatRequest(Sampling):
        messages: Annotated[list[Message], Field(min_length=1)] = Field(description=(
            "the conversation: a non-empty list of {role: system|user|assistant, content: string}"))
        max_completion_tokens: Optional[int] = Field(None, ge=0, le=context, description="the same as max_tokens")

    return CompletionRequest, ChatRequest


# --- answers ----------------------------------------------------------------------------------------
FinishReason = Literal["stop", "length", "error", "abort", "content_filter"]  # content_filter: the moderation gate


class ModerationRequest(Strict):
    input: Union[str, list[str]] = Field(min_length=1, max_length=64)
    model: Optional[str] = None


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]


class Moderation(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str]
    code: Optional[str]


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[Optional[float]]
    top_logprobs: list[Optional[dict[str, float]]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[Logprobs]
    finish_reason: Optional[FinishReason]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Optional[FinishReason]


class CompletionChunk(BaseModel):
    """One server-sent event of a streamed completion (the last, with include_usage, has usage)."""
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Optional[Usage] = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Optional[FinishReason]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Optional[FinishReason]


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion."""
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Optional[Usage] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    running: int
    waiting: int
    slots: int
    steps: int
    compilations: int
