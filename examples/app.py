"""The README's app example: check the cutoff flag before a call, emit usage after it."""

import os

import redis

from spendstream.producers import SyncEmitter, UsageEvent

flags = redis.Redis.from_url(os.environ.get("SPENDSTREAM_REDIS_URL", "redis://localhost:6379/0"))
emitter = SyncEmitter(os.environ.get("SPENDSTREAM_KAFKA_URL", "kafka://localhost:9092"))


def answer(user_id: str, prompt: str) -> str:
    if flags.exists(f"spendstream:cutoff:user:{user_id}"):
        return "You have used today's AI budget; it resets at midnight UTC."
    reply, usage = call_model(prompt)  # your OpenAI / Anthropic call
    emitter.emit(UsageEvent(user_id=user_id, feature="chat", model="gpt-4o",
                            input_tokens=usage["prompt_tokens"],
                            output_tokens=usage["completion_tokens"]))
    return reply


def call_model(prompt: str) -> tuple[str, dict[str, int]]:
    """Stands in for the model call so the example runs without an API key."""
    return f"echo: {prompt}", {"prompt_tokens": len(prompt.split()) + 7, "completion_tokens": 3}


if __name__ == "__main__":
    for user in ("acct-1", "acct-2", "acct-7"):
        print(user, "->", answer(user, "how much does this cost?"))
    emitter.close()
