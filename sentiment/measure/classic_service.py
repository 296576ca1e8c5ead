"""The baseline: sentiment served "the classic way", kept here only to be measured against.

FastAPI + a Hugging Face `pipeline` on PyTorch, one text at a time, inside an `async def` route
(so inference blocks the event loop), with a Redis cache keyed by the whole request body. This is
the design the product replaces; do not use it for anything but `sentiment bench`. Like most
servers it truncates: a text longer than the model's window (`--max-length`, 128 tokens, special
tokens included) is cut to its first window (without truncation a text over the model's 512
positions would crash the pipeline).

Run: python -m sentiment.measure.classic_service --checkpoint DIR --port 8100 [--redis-url redis://...]
     [--max-length 128]
"""

from __future__ import annotations

import argparse
import hashlib
import json

import redis
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from transformers import pipeline


def create_app(checkpoint: str, redis_url: str | None, threads: int, max_length: int = 128) -> FastAPI:
    torch.set_num_threads(threads)
    classifier = pipeline("text-classification", model=checkpoint, tokenizer=checkpoint, top_k=None, device=-1)
    cache = redis.Redis.from_url(redis_url) if redis_url else None
    app = FastAPI()

    @app.post("/project/bulk-predict")
    async def bulk_predict(request: Request):
        body = await request.body()
        key = "classic:" + hashlib.sha256(body).hexdigest()
        if cache is not None:
            cached = cache.get(key)
            if cached is not None:
                return JSONResponse(json.loads(cached))
        texts = json.loads(body)["text"]
        predictions = []
        for text in texts:  # one text at a time, as the classic service does
            scores = classifier(text, truncation=True, max_length=max_length)
            scores = scores[0] if scores and isinstance(scores[0], list) else scores
            predictions.append([{"label": s["label"], "score": float(s["score"])} for s in scores])
        result = {"predictions": predictions}
        if cache is not None:
            cache.set(key, json.dumps(result), ex=86400)
        return JSONResponse(result)

    @app.get("/project/health")
    async def health():
        return {"status": "healthy"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--max-length", type=int, default=128, help="tokens per text (special tokens included); longer ones are cut"
    )
    args = parser.parse_args()
    uvicorn.run(create_app(args.checkpoint, args.redis_url, args.threads, args.max_length), host="127.0.0.1",
                port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
