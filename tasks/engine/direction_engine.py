"""The direction engine: one per process and model, micro-batching concurrent prompts.

Per-prompt Prefect tasks each ask the engine for their prompt's directions and block. A
background thread gathers the waiting requests (up to `max_batch`, waiting at most
`max_wait_ms` for more) into one batch, runs the prefix once and every gradient step on the
cached prefix for all prompts, layers, sides and phrases together, and hands each task its own
result. The model runs in that one thread only, so hooks never cross between batches.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from refusal_atlas.tasks.model.chat import RenderedPrompt, pad_id, render_prompt
from refusal_atlas.tasks.engine.directions import best_layer, option1
from refusal_atlas.tasks.model.hooks import default_layers, resolve_layers
from refusal_atlas.tasks.model.loading import LoadedModel, get_model
from refusal_atlas.tasks.engine.prefix import PrefixBatch
from refusal_atlas.tasks.settings import DEFAULT_LAYER_FRACTIONS, DirectionSettings, EngineSettings, ModelSettings
from refusal_atlas.tasks.engine.targets import RefusalTarget


@dataclass(frozen=True)
class PromptDirections:
    """One prompt's results over the engine's L layers (numpy, float32).

    h0, point, anchor, direction: [L, D]; f0, f_point, f_anchor, effect: [L]; steps: [L];
    log_odds: the refusal log-odds of the unmodified model; error: why the prompt failed.
    """

    h0: np.ndarray
    point: np.ndarray
    anchor: np.ndarray
    direction: np.ndarray
    f0: np.ndarray
    f_point: np.ndarray
    f_anchor: np.ndarray
    effect: np.ndarray
    steps: np.ndarray
    best_layer: int
    log_odds: float
    error: str | None = None


@dataclass(frozen=True)
class _Request:
    rendered: RenderedPrompt
    gradient: bool


class DirectionEngine:
    """Computes Option 1 directions for prompts, batching concurrent callers."""

    def __init__(self, loaded: LoadedModel, directions: DirectionSettings, engine: EngineSettings):
        self.loaded = loaded
        self.settings = directions
        self.engine_settings = engine
        requested = directions.layers or default_layers(loaded.num_layers, DEFAULT_LAYER_FRACTIONS)
        self.layers = resolve_layers(requested, loaded.num_layers)
        self.target = RefusalTarget.build(loaded.tokenizer, loaded.chat_template, directions.phrases)
        tok = loaded.tokenizer
        self.pad_id = pad_id(tok)
        self.max_length = getattr(loaded.model.config, "max_position_embeddings", None)
        self.forward_passes = 0
        self.batches = 0
        self._queue: queue.Queue[tuple[_Request, Future]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # -- the public API ----------------------------------------------------------------------

    def render(self, text: str) -> RenderedPrompt:
        # The phrase's tokens follow the prompt, so they must fit in the context too.
        limit = None if self.max_length is None else self.max_length - self.target.max_len
        return render_prompt(self.loaded.tokenizer, self.loaded.chat_template, text, self.settings.position, limit)

    def compute(self, text: str, gradient: bool = True) -> PromptDirections:
        """Directions for one prompt, batched with whatever other threads ask at the same time.

        With gradient False only h_0, f_0 and the log-odds are computed (used for harmless
        prompts, whose h_0 anchors Option 2). Rendering errors raise in the caller's thread.
        """
        request = _Request(self.render(text), gradient)
        future: Future = Future()
        self._ensure_worker()
        self._queue.put((request, future))
        return future.result()

    def compute_many(self, texts: Sequence[str], gradient: bool = True) -> list[PromptDirections]:
        """Directions for many prompts from one thread, in batches of max_batch."""
        requests = [_Request(self.render(t), gradient) for t in texts]
        size = self.engine_settings.max_batch
        out: list[PromptDirections] = []
        for start in range(0, len(requests), size):
            out.extend(self._run_batch(requests[start: start + size]))
        return out

    # -- batching ----------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="direction-engine", daemon=True)
                self._worker.start()

    def _serve(self) -> None:
        wait = self.engine_settings.max_wait_ms / 1000
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + wait
            while len(batch) < self.engine_settings.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self._answer(batch)

    def _answer(self, batch: list[tuple[_Request, Future]]) -> None:
        try:
            results = self._run_batch([request for request, _ in batch])
        except Exception as err:  # noqa: BLE001 - every caller must hear of its own failure.
            if len(batch) == 1:
                batch[0][1].set_exception(err)
                return
            # Run the prompts one by one so that only the prompt that fails fails.
            for item in batch:
                self._answer([item])
            return
        for (_, future), result in zip(batch, results):
            future.set_result(result)

    # -- one batch ---------------------------------------------------------------------------

    def _run_batch(self, requests: Sequence[_Request]) -> list[PromptDirections]:
        s = self.settings
        n_layers = len(self.layers)
        with self.loaded.lock:
            prefix = PrefixBatch(
                self.loaded.model,
                [r.rendered for r in requests],
                self.target,
                self.pad_id,
                skip_lower_layers=self.engine_settings.skip_lower_layers,
            )
            # Queries are prompt-major: query q is prompt q // L at layer self.layers[q % L].
            prompts = torch.arange(len(requests)).repeat_interleave(n_layers).to(prefix.device)
            layers = torch.tensor(self.layers, device=prefix.device).repeat(len(requests))
            walk = torch.tensor([r.gradient for r in requests]).repeat_interleave(n_layers)

            def evaluate(queries, values, grad):
                return prefix.evaluate(prompts[queries], layers[queries], values, grad)

            result = option1(evaluate, len(prompts), s.steps, s.eta, s.alpha, s.early_stop, walk)
            self.forward_passes += prefix.forward_passes
            self.batches += 1
        return [self._per_prompt(result, i, n_layers, requests[i].gradient) for i in range(len(requests))]

    def _per_prompt(self, result, i: int, n_layers: int, gradient: bool) -> PromptDirections:
        rows = slice(i * n_layers, (i + 1) * n_layers)

        def take(tensor: torch.Tensor) -> np.ndarray:
            return tensor[rows].detach().to("cpu", torch.float32).numpy()

        errors = [f"layer {layer}: {e}" for layer, e in zip(self.layers, result.errors[rows]) if e]
        effect = take(result.effect)
        return PromptDirections(
            h0=take(result.h0),
            point=take(result.point),
            anchor=take(result.anchor),
            direction=take(result.direction),
            f0=take(result.f0),
            f_point=take(result.f_point),
            f_anchor=take(result.f_anchor),
            effect=effect,
            steps=result.steps[rows].cpu().numpy().astype(np.int16),
            best_layer=best_layer(effect, self.layers) if gradient else -1,
            log_odds=float(result.log_odds[i * n_layers]),
            error="; ".join(errors) or None,
        )


_ENGINES: dict[tuple, DirectionEngine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(model: ModelSettings, directions: DirectionSettings, engine: EngineSettings) -> DirectionEngine:
    """The process's engine for these settings; the model is loaded once per process."""
    key = (model, directions.model_dump_json(), engine)
    with _ENGINES_LOCK:
        found = _ENGINES.get(key)
        if found is None:
            found = DirectionEngine(get_model(model), directions, engine)
            _ENGINES[key] = found
        return found
