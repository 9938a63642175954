"""The seed's Ray Serve application (serve_app.py of the seed), pointed at a local model directory.

Same code as the seed: a FastAPI ingress deployment `TextGenService` that loads the Hugging Face
`text-generation` pipeline once per replica and answers POST /text/simple-gen {"input": str} with
the pipeline's output ([{"generated_text": ...}]), using the pipeline's default generation
settings. The only change: model=MODEL_DIR (the synthetic distilgpt2-shaped checkpoint, since no
pretrained weights can be downloaded here) instead of model="distilgpt2".

Started by bench/serving/harness.py with `serve run` on a local `ray start --head` cluster.
"""
import json
import logging
import os

from fastapi import FastAPI
from pydantic import BaseModel
from ray import serve
from transformers import pipeline

MODEL_DIR = os.environ.get("MODEL_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "models", "distil")

# The benchmark's -legacy rows only: {"max_length": 50} gives transformers <= 4.51's lengths
# (distilgpt2's task_specific_params) on a transformers >= 4.52 pipeline; the seed passes nothing.
PIPELINE_KWARGS = json.loads(os.environ.get("SEED_PIPELINE_KWARGS") or "{}")

app = FastAPI()
logger = logging.getLogger("ray.serve")


class SimpleInput(BaseModel):
    input: str


@serve.deployment
@serve.ingress(app)
class TextGenService:
    def __init__(self):
        # Loaded once per replica
        self._pipeline = pipeline("text-generation", model=MODEL_DIR, **PIPELINE_KWARGS)
        import torch
        logger.info("TextGenService: model %s, torch threads %d", MODEL_DIR, torch.get_num_threads())

    @app.post("/text/simple-gen")
    def simple_gen(self, input: SimpleInput):
        return self._pipeline(input.input)


# Deployment graph entrypoint
deployment_graph = TextGenService.bind()
